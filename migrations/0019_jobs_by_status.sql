-- Operations by status: `GET /v1/operations?status=failed` without a user read the tenant's
-- operations from the newest until it had a page of that status, so a rare status (a few
-- failures among millions of successes) read them all. This index gives the page directly.
-- A job's status moves two or three times; each move is an update that writes the row's
-- other indexes already (status is in them), so this is one more entry each time.
--
-- Building it locks jobs against writes for as long as it takes: on a large table, create it
-- beforehand with `create index concurrently` under the same name and definition.
create index if not exists jobs_tenant_status_idx on jobs (tenant_id, status, id)
  where parent_id is null;
