-- Enqueue in one statement. Taking the lane locks, checking the per-lane admission limit and
-- inserting used to be separate statements of the caller's transaction, because the insert
-- decides `ready` from what it sees and must see every job committed before the lock was
-- granted. Each statement of this (volatile) PL/pgSQL function takes a fresh snapshot, so the
-- insert below sees them, and the whole enqueue is one round trip — also in autocommit, where
-- the locks last until the statement's own commit.
--
-- `p_jobs` is a JSON array of {ord, kind, payload, lane, first, run_at, max_attempts,
-- timeout_ms, idempotency_key, payload_hash}; `first` marks the first job of its lane in the
-- array (only it can be the lane's head). A lane holding `p_lane_limit` unfinished jobs or
-- more after the insert raises SQLSTATE MNQ01 (queue full) and inserts nothing. A job whose
-- idempotency key exists is skipped (the caller looks the existing one up).
create function enqueue_jobs(p_tenant text, p_jobs jsonb, p_parent bigint, p_lane_limit integer)
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

  return query
  insert into jobs as j (tenant_id, kind, payload, lane, ready, run_at, max_attempts, timeout_ms,
    idempotency_key, payload_hash, parent_id)
  select p_tenant, r.kind, r.payload, r.lane,
    r.lane is null or (r.first and not exists (
      select 1 from jobs a
      where a.tenant_id = p_tenant and a.lane = r.lane and a.status in ('pending', 'running'))),
    coalesce(r.run_at, now()), r.max_attempts, r.timeout_ms, r.idempotency_key, r.payload_hash,
    p_parent
  from jsonb_to_recordset(p_jobs) as r(ord integer, kind text, payload jsonb, lane text,
    first boolean, run_at timestamptz, max_attempts integer, timeout_ms integer,
    idempotency_key text, payload_hash text)
  order by r.ord
  on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing
  returning j.*;
end
$$;
