-- A session commit's operation may now be deleted by the retention sweep
-- (MNEMO_OPERATION_RETENTION_HOURS), like the memory API's operations. An archive read its
-- status from its operation (jobs.status) alone; the sweep copies that status here before the
-- operation goes (src/sessions/sessions.ts), and reads take it from here once it is gone.
-- Null while the operation exists. No check of its own: it is a copy of jobs.status, which
-- has one (and a check added here would read every archive while the table is locked).
--
-- Processes of an earlier version read archives joined to their operations and leave out
-- those whose operation is gone: with retention on, stop them before starting this one.
alter table session_archives add column status text;
