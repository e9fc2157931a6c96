-- A user's operations by index: every per-user job carries `user_id` in its payload (ingests,
-- batches, deletions, sync and session jobs).
--
-- Two reads looked for them through `jobs_tenant_created_idx`, filtering every job of the
-- tenant: `GET /v1/operations?user_id=` (one page read the tenant's jobs until it had found a
-- page of the user's, all of them for a user with fewer) and a user's deletion, which redacts
-- the payloads of the user's finished operations inside its apply transaction, holding the
-- user's lane and sync lock meanwhile. Both now read the user's jobs only.
--
-- Partial: operations only (jobs without a parent), and only those with a user. A batch's
-- children (up to 10,000 for a sync) stay out: a page of a user's operations would walk them
-- all before their parent otherwise; the deletion reaches them through their parents
-- (jobs_parent_idx). `payload ->> 'user_id' = $x` implies the predicate's second part (the
-- operator is strict), so both reads can use it.
--
-- Building it locks the jobs table against writes for as long as it takes: on a large table,
-- create it beforehand with `create index concurrently` under the same name and definition.
create index if not exists jobs_user_idx on jobs (tenant_id, (payload ->> 'user_id'), id)
  where parent_id is null and (payload ->> 'user_id') is not null;
