-- A session commit's operation may now be deleted by the retention sweep
-- (MNEMO_OPERATION_RETENTION_HOURS), like the memory API's operations. An archive read its
-- status from its operation (jobs.status) alone; the sweep copies that status here before the
-- operation goes (src/sessions/sessions.ts), and reads take it from here once it is gone.
-- Null while the operation exists.
alter table session_archives add column status text
  constraint session_archives_status_chk check (status in ('succeeded', 'failed', 'cancelled'));
