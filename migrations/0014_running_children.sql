-- A batch parent's running children by index. Every read of a parent (GET of an operation, a
-- page of operations, a waiter's poll) counted its pending and running children through
-- jobs_parent_idx, visiting every child: 10,000 rows a read for a large sync. Its pending
-- children follow from its counters (kept by the statements that finish children) once the
-- running ones are known, and these are few: this index holds running children only.
create index if not exists jobs_parent_running_idx on jobs (parent_id)
  where status = 'running' and parent_id is not null;
