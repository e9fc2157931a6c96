-- Operations by kind: `GET /v1/operations?kind=session.commit` without a user read the tenant's
-- operations from the newest until it had a page of that kind, so a rare kind (a few user
-- deletions or session commits among millions of ingests) read them all. This index gives the
-- page directly.
--
-- Ingests stay out of it: they are most operations, so a page of them is found at once by
-- walking the tenant's newest jobs (jobs_tenant_created_idx), and the hottest insert writes no
-- entry here. Engine.listJobs plans each call for its values (planEachCall), so `kind = $x`
-- with any other kind proves the predicate.
--
-- Building it locks jobs against writes for as long as it takes: on a large table, create it
-- beforehand with `create index concurrently` under the same name and definition.
create index if not exists jobs_tenant_kind_idx on jobs (tenant_id, kind, id)
  where parent_id is null and kind <> 'memory.ingest';
