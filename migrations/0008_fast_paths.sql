-- Fewer round trips per job, and no NOTIFY inside the hot transactions (docs/engine.md).
--
-- A transaction that calls pg_notify takes a database-wide lock at commit and holds it until
-- its commit record is flushed, so every notifying transaction commits one after another.
-- Enqueue and completion therefore leave their wake-ups to the caller, which sends them
-- after the commit (`p_defer_notify`, `defer_notify`); the waiter of a job (`jobs.waiter`)
-- says whether other processes need to hear that it finished at all.
alter table jobs add column waiter text;
comment on column jobs.waiter is
  'who waits for the job: null = anyone (announce its finish), '''' = nobody, else the engine id of the process whose caller waits (announced only when another process finishes it)';
--
-- 1. enqueue_jobs can hand a single new job straight to the enqueuing process's worker: when
--    `p_claim_worker` is given and the job would be claimable at once (its lane's head, due,
--    of a kind in `p_claim_kinds`, not a batch child), it is inserted already `running`, with
--    the lease a claim would give it. Outside a transaction only: the caller runs it as soon
--    as the statement returns.
drop function enqueue_jobs(text, jsonb, bigint, integer);

create function enqueue_jobs(p_tenant text, p_jobs jsonb, p_parent bigint, p_lane_limit integer,
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
    case when c.claim then 1 else 0 end,
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

-- 2. Idle workers are woken only by inserts that made a job claimable (a job queued behind
--    its lane's head is announced when it is promoted; one claimed at enqueue needs nobody),
--    and not from inside enqueue_jobs called with p_defer_notify (its caller sends it).
create or replace function jobs_notify_insert() returns trigger language plpgsql as $$
begin
  if coalesce(current_setting('mnemo.defer_notify', true), '') <> 'on'
     and exists (select 1 from inserted where status = 'pending' and ready) then
    perform pg_notify(tg_table_schema || '_jobs', '');
  end if;
  return null;
end
$$;

drop trigger jobs_notify_insert_trg on jobs;
create trigger jobs_notify_insert_trg after insert on jobs
  referencing new table as inserted
  for each statement execute function jobs_notify_insert();

-- 3. A completion that ran its applies before checking its leases wraps finish_jobs in this:
--    it raises (SQLSTATE MNL01, the transaction aborts, nothing commits) when a job in
--    `must_move` did not move, i.e. its lease was no longer the worker's.
create function assert_moved(finished jsonb, must_move bigint[]) returns jsonb
language plpgsql
as $$
declare
  missing bigint[];
begin
  select array_agg(m) into missing from unnest(must_move) as m
  where not exists (
    select 1 from jsonb_array_elements(finished -> 'moved') as e where (e ->> 0)::bigint = m);
  if missing is not null then
    raise exception using errcode = 'MNL01',
      message = format('jobs %s are no longer held by this worker', missing);
  end if;
  return finished;
end
$$;

-- 4. finish_jobs as in 0002, with its wake-ups reconsidered:
--    - a finished job is announced on `done_channel` only if someone elsewhere may wait for
--      it: its waiter is unknown (null), or another process's (not '' and not `announcer`);
--    - idle workers are woken (`jobs_channel`) only for promoted lane heads that the refill
--      claim of this call did not take;
--    - with `defer_notify`, nothing is sent: the answer carries `announce` (payloads for
--      `done_channel`) and `wake`, for the caller to send after its commit;
--    - `rows`: the finished rows of the jobs in `want` (a worker's local waiters), so that
--      nobody reads them again.
--    Statements after the refill claim see its planner settings (claim_jobs): they are
--    primary-key lookups, which those settings leave alone.
drop function finish_jobs(jsonb, bigint[], text, text, integer, integer, text, text[]);

create function finish_jobs(transitions jsonb, ids bigint[], jobs_channel text, done_channel text,
  claim_limit integer, lease_ms integer, worker text, kinds text[], announcer text,
  defer_notify boolean, want bigint[])
returns jsonb
language plpgsql
as $$
declare
  result jsonb;
  claimed jsonb := '[]';
  promoted_ids bigint[];
  announce text[];
  wake boolean;
begin
  -- Lane locks of every terminal move, in one global order (no deadlock between lockers).
  perform pg_advisory_xact_lock(k) from (
    -- lane_lock_key(), written out: a function call per row costs more than the rest.
    select distinct hashtextextended('lane:' || length(t.tenant_id) || ':' || t.tenant_id || ':' || t.lane, 0) as k
    from jsonb_to_recordset(transitions) as t(tenant_id text, lane text, to_status text)
    where t.lane is not null and t.to_status in ('succeeded', 'failed', 'cancelled')
    order by 1) as keys;

  -- Batch parents in id order, so two completions of children of the same parents queue
  -- instead of deadlocking.
  perform 1 from jobs p
  where p.id in (select c.parent_id from jobs c where c.id = any(ids) and c.parent_id is not null)
  order by p.id for update;

  with o as (
    select * from jsonb_to_recordset(transitions) as o(id bigint, token bigint, from_status text,
      to_status text, result jsonb, error jsonb, delay_ms int, expired_only boolean, refund boolean)
  ),
  done as (
    update jobs j set
      status = o.to_status,
      result = case when o.to_status = 'succeeded' then o.result else j.result end,
      error = case when o.to_status = 'succeeded' then null else coalesce(o.error, j.error) end,
      run_at = case when o.to_status = 'pending'
        then now() + make_interval(secs => coalesce(o.delay_ms, 0) / 1000.0) else j.run_at end,
      attempts = j.attempts - case when coalesce(o.refund, false) then 1 else 0 end,
      finished_at = case when o.to_status in ('succeeded', 'failed', 'cancelled') then now() else null end,
      lease_expires_at = null,
      locked_by = null,
      updated_at = now()
    from o
    -- id = any(ids) gives the planner primary-key lookups; a join on the record set alone
    -- is planned as a sequential scan of jobs.
    where j.id = any(ids) and j.id = o.id and j.status = o.from_status and not j.is_parent
      and (o.token is null or j.lease_token = o.token)
      and (not coalesce(o.expired_only, false) or j.lease_expires_at < now())
    returning j.id, j.tenant_id, j.lane, j.parent_id, j.status, j.waiter
  ),
  terminal as (select * from done where status in ('succeeded', 'failed', 'cancelled')),
  lanes as (select distinct t.tenant_id, t.lane from terminal t where t.lane is not null),
  -- The lane's next job is its lowest-id unfinished job once the finished ones are gone;
  -- it becomes claimable unless it already is (or runs).
  heads as (
    select n.id from lanes l cross join lateral (
      select a.id, a.status, a.ready from jobs a
      where a.tenant_id = l.tenant_id and a.lane = l.lane and a.status in ('pending', 'running')
        and a.id not in (select t.id from terminal t)
      order by a.id limit 1) as n
    where n.status = 'pending' and not n.ready
  ),
  promoted as (
    update jobs p set ready = true, updated_at = now() from heads where p.id = heads.id
    returning p.id
  ),
  counts as (
    select t.parent_id,
      count(*) filter (where t.status = 'succeeded')::int as s,
      count(*) filter (where t.status = 'failed')::int as f,
      count(*) filter (where t.status = 'cancelled')::int as c
    from terminal t where t.parent_id is not null group by t.parent_id
  ),
  parents as (
    update jobs p set
      children_succeeded = p.children_succeeded + c.s,
      children_failed = p.children_failed + c.f,
      children_cancelled = p.children_cancelled + c.c,
      status = case
        when p.children_succeeded + p.children_failed + p.children_cancelled + c.s + c.f + c.c
          < p.children_total then p.status
        when p.children_failed + c.f > 0 then 'failed'
        when p.children_cancelled + c.c > 0 then 'cancelled'
        else 'succeeded' end,
      finished_at = case
        when p.children_succeeded + p.children_failed + p.children_cancelled + c.s + c.f + c.c
          >= p.children_total then now() else null end,
      updated_at = now()
    from counts c where p.id = c.parent_id
    returning p.id, p.status, p.waiter
  ),
  finished as (
    select t.id, t.waiter from terminal t
    union all
    select p.id, p.waiter from parents p where p.status in ('succeeded', 'failed', 'cancelled')
  ),
  -- NOTIFY payloads stop at 8000 bytes: 300 ids a notification.
  chunks as (
    select string_agg(x.id::text, ',') as id_list
    from (select fin.id, (row_number() over ()) / 300 as chunk from finished fin
          where fin.waiter is null or (fin.waiter <> '' and fin.waiter <> announcer)) x
    group by x.chunk
  )
  select jsonb_build_object(
    'moved', (select coalesce(jsonb_agg(jsonb_build_array(d.id, d.status)), '[]') from done d),
    'promoted', (select count(*) from promoted),
    'parents', (select coalesce(jsonb_agg(jsonb_build_array(p.id, p.status)), '[]') from parents p)),
    (select array_agg(pr.id) from promoted pr),
    (select coalesce(array_agg(ch.id_list), '{}') from chunks ch)
  into result, promoted_ids, announce;

  if claim_limit > 0 then
    select coalesce(jsonb_agg(to_jsonb(c)), '[]') into claimed
    from claim_jobs(claim_limit, lease_ms, worker, kinds) c;
  end if;
  wake := promoted_ids is not null
    and exists (select 1 from jobs w where w.id = any(promoted_ids) and w.status = 'pending');
  if not defer_notify then
    if wake then
      perform pg_notify(jobs_channel, '');
    end if;
    perform pg_notify(done_channel, a) from unnest(announce) as a;
  end if;
  return result || jsonb_build_object('claimed', claimed, 'wake', wake,
    'announce', to_jsonb(announce),
    'rows', (select coalesce(jsonb_agg(to_jsonb(w)), '[]') from jobs w
             where w.id = any(want) and w.status in ('succeeded', 'failed', 'cancelled')));
end
$$;
