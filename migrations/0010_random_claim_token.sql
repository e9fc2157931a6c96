-- A job claimed at enqueue starts with a random lease token instead of 1 (decision 0007).
--
-- An enqueue may commit asynchronously (synchronous_commit off, JobSpec.syncCommit). If the
-- database crashes before that commit reaches disk, the job is lost, and so may be the
-- advance of the id sequence it used (nextval logs its advances in the same unflushed WAL): a
-- later job can get the same id. Leases fence on (id, token); with a token of 1 on both, a
-- worker still holding the lost job could complete the new one. A random token (2^32 to
-- about 4.5e15: above the counters of ordinary claims, below 2^53 for JavaScript) makes the
-- two differ. The rest of the function is unchanged from migration 0008.
create or replace function enqueue_jobs(p_tenant text, p_jobs jsonb, p_parent bigint, p_lane_limit integer,
  p_claim_worker text default null, p_lease_ms integer default null,
  p_claim_kinds text[] default null, p_defer_notify boolean default false)
returns setof jobs
language plpgsql
as $$
declare
  v record;
begin
  -- Lane locks in one global order (by key), so that two enqueuers cannot deadlock.
  perform count(pg_advisory_xact_lock(keys.k)) from (
    select distinct lane_lock_key(p_tenant, r.lane) as k
    from jsonb_to_recordset(p_jobs) as r(lane text)
    where r.lane is not null
    order by 1) as keys;

  for v in
    select r.lane, count(*)::integer as adding,
      (select count(*) from (select 1 from jobs j
         where j.tenant_id = p_tenant and j.lane = r.lane and j.status in ('pending', 'running')
         limit p_lane_limit + 1) as s)::integer as unfinished
    from jsonb_to_recordset(p_jobs) as r(lane text)
    where r.lane is not null
    group by r.lane
  loop
    if v.unfinished + v.adding > p_lane_limit then
      raise exception using
        errcode = 'MNQ01',
        message = format('lane %s holds %s unfinished jobs (limit %s)',
          to_json(v.lane), v.unfinished, p_lane_limit);
    end if;
  end loop;

  if p_defer_notify then
    perform set_config('mnemo.defer_notify', 'on', true);
  end if;
  return query
  insert into jobs as j (tenant_id, kind, payload, lane, ready, run_at, max_attempts, timeout_ms,
    idempotency_key, payload_hash, parent_id, waiter, status, attempts, lease_token,
    lease_expires_at, locked_by, started_at)
  select p_tenant, c.kind, c.payload, c.lane, c.ready, coalesce(c.run_at, now()), c.max_attempts,
    c.timeout_ms, c.idempotency_key, c.payload_hash, p_parent, c.waiter,
    case when c.claim then 'running' else 'pending' end,
    case when c.claim then 1 else 0 end,
    case when c.claim then (4294967296 + floor(random() * 4.5e15))::bigint else 0 end,
    case when c.claim then now() + make_interval(secs => p_lease_ms / 1000.0) end,
    case when c.claim then p_claim_worker end,
    case when c.claim then now() end
  from (
    select r.*, r.ready and p_claim_worker is not null and p_parent is null
      and jsonb_array_length(p_jobs) = 1 and r.kind = any(p_claim_kinds)
      and (r.run_at is null or r.run_at <= now()) as claim
    from (
      -- A scalar subquery, probed per job through jobs_lane_active_idx: as NOT EXISTS the
      -- planner (which takes jsonb_to_recordset for 100 rows) hashed every active job of
      -- the tenant on each call.
      select r.*, r.lane is null or (r.first and (
          select a.id from jobs a
          where a.tenant_id = p_tenant and a.lane = r.lane and a.status in ('pending', 'running')
          limit 1) is null)
        as ready
      from jsonb_to_recordset(p_jobs) as r(ord integer, kind text, payload jsonb, lane text,
        first boolean, run_at timestamptz, max_attempts integer, timeout_ms integer,
        idempotency_key text, payload_hash text, waiter text)
    ) as r
  ) as c
  order by c.ord
  on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing
  returning j.*;
  if p_defer_notify then
    perform set_config('mnemo.defer_notify', '', true);
  end if;
end
$$;

