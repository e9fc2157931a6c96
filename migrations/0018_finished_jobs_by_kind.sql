-- Finished operations by kind and age, for the retention sweep (Engine.retain): the oldest
-- finished jobs of a kind without a parent, found by index however many jobs of other kinds
-- (kept for good) or still unfinished lie beside them. A batch's children go with their
-- parent (jobs_parent_id_fkey cascades), so they are not in it.
--
-- Building it locks jobs against writes for as long as it takes: on a large table, create it
-- beforehand with `create index concurrently` under the same name and definition.
create index if not exists jobs_finished_idx on jobs (kind, finished_at)
  where parent_id is null and status in ('succeeded', 'failed', 'cancelled');
