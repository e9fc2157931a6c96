-- The durable job engine (src/engine). One row per job; a batch is a parent row (no
-- handler, status derived from its children) plus child rows.
--
-- Lanes: at most one job of a lane (tenant_id, lane) runs at a time, in id order. `ready`
-- marks the jobs a worker may claim: every laneless job, and the head of each lane (its
-- lowest-id pending or running job). Enqueue and every transition to a terminal state
-- hold the lane's advisory lock, so `ready` is computed and handed on without races.
create table jobs (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  kind text not null,
  payload jsonb not null default '{}',
  lane text,
  status text not null default 'pending',
  ready boolean not null default false,
  is_parent boolean not null default false,
  parent_id bigint references jobs (id) on delete cascade,
  attempts integer not null default 0,
  max_attempts integer not null default 3,
  run_at timestamptz not null default now(),
  timeout_ms integer,
  lease_token bigint not null default 0,
  lease_expires_at timestamptz,
  locked_by text,
  idempotency_key text,
  payload_hash text,
  result jsonb,
  error jsonb,
  children_total integer not null default 0,
  children_succeeded integer not null default 0,
  children_failed integer not null default 0,
  children_cancelled integer not null default 0,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),
  constraint jobs_status_chk check (status in ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
  constraint jobs_kind_length_chk check (length(kind) between 1 and 200),
  constraint jobs_lane_length_chk check (lane is null or length(lane) between 1 and 600),
  constraint jobs_max_attempts_chk check (max_attempts between 1 and 1000),
  constraint jobs_parent_has_no_lane_chk check (not is_parent or (lane is null and not ready))
);

-- What a worker claims: ready, pending, due; served oldest first.
create index jobs_claim_idx on jobs (run_at, id) where status = 'pending' and ready;
-- Admission control counts pending jobs.
create index jobs_pending_idx on jobs (id) where status = 'pending';
-- A lane's active jobs in order (head lookups, admission counts).
create index jobs_lane_active_idx on jobs (tenant_id, lane, id)
  where lane is not null and status in ('pending', 'running');
-- The database itself refuses a second running job in a lane.
create unique index jobs_lane_running_uniq on jobs (tenant_id, lane)
  where lane is not null and status = 'running';
create index jobs_lease_expiry_idx on jobs (lease_expires_at) where status = 'running';
create index jobs_parent_idx on jobs (parent_id, id) where parent_id is not null;
create unique index jobs_idempotency_key_uniq on jobs (tenant_id, idempotency_key)
  where idempotency_key is not null;
create index jobs_tenant_created_idx on jobs (tenant_id, id);

-- Wake idle workers when jobs are inserted; delivered when the inserting transaction commits.
create function jobs_notify_insert() returns trigger language plpgsql as $$
begin
  perform pg_notify(tg_table_schema || '_jobs', '');
  return null;
end
$$;

create trigger jobs_notify_insert_trg after insert on jobs
  for each statement execute function jobs_notify_insert();

-- Claims up to `lim` ready, due jobs of `kinds` for `worker`, oldest first, in one statement.
-- Only `ready` jobs are candidates (laneless jobs and lane heads), so a lane never yields two
-- jobs; jobs_lane_running_uniq backs that up. A batch parent turns `running` when its first
-- child starts. The planner settings force the ordered scan of jobs_claim_idx that LIMIT
-- wants: with stale statistics (a fresh backlog) PostgreSQL would otherwise read and sort
-- every ready row on each claim. They last until the end of the caller's transaction, so
-- the claim must be the last statement of it (it is, in the worker).
create function claim_jobs(lim integer, lease_ms integer, worker text, kinds text[])
returns table (id bigint, tenant_id text, kind text, payload jsonb, lane text, attempts integer,
  max_attempts integer, lease_token bigint, timeout_ms integer, parent_id bigint, waited_s float8)
language plpgsql
as $$
begin
  -- For the rest of the calling transaction, which the worker ends right after the claim.
  -- (A SET clause on the function would be undone on exit but costs more per call.)
  perform set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true);
  -- PL/pgSQL keeps this statement's plan for the session: it is parsed and planned once.
  return query
  with picked as (
    select j.id from jobs j
    where j.status = 'pending' and j.ready and j.run_at <= now() and j.kind = any(kinds)
    order by j.run_at, j.id
    limit lim
    for update skip locked
  ),
  claimed as (
    update jobs j set status = 'running', attempts = j.attempts + 1,
      lease_token = j.lease_token + 1,
      lease_expires_at = now() + make_interval(secs => lease_ms / 1000.0),
      locked_by = worker, started_at = now(), updated_at = now()
    from picked where j.id = picked.id
    returning j.id, j.tenant_id, j.kind, j.payload, j.lane, j.attempts, j.max_attempts,
      j.lease_token, j.timeout_ms, j.parent_id,
      greatest(0, extract(epoch from now() - j.run_at))::float8 as waited_s
  ),
  parents as (
    update jobs p set status = 'running', started_at = now(), updated_at = now()
    where p.id in (select c.parent_id from claimed c where c.parent_id is not null)
      and p.status = 'pending'
    returning p.id
  )
  select c.id, c.tenant_id, c.kind, c.payload, c.lane, c.attempts, c.max_attempts, c.lease_token,
    c.timeout_ms, c.parent_id, c.waited_s
  from claimed c;
end
$$;

-- The advisory-lock key of a lane. The tenant's length prefix keeps ("a", "b:c") and
-- ("a:b", "c") apart.
create function lane_lock_key(tenant text, lane text) returns bigint
language sql immutable parallel safe
as $$ select hashtextextended('lane:' || length(tenant) || ':' || tenant || ':' || lane, 0) $$;

-- Moves jobs between states and, in the same round trip, refills the caller's free slots.
-- `transitions` is a JSON array of {id, token, tenant_id, lane, from_status, to_status, result,
-- error, delay_ms, expired_only, refund}; a job moves only if it is still in from_status
-- with the given lease token (and, with expired_only, its lease has expired).
-- Each statement of this (volatile) function takes a fresh snapshot, which the lane hand-on
-- relies on: after the lane locks are granted, the head lookup sees every enqueue that
-- committed while we waited (enqueue holds the same locks).
create function finish_jobs(transitions jsonb, ids bigint[], jobs_channel text, done_channel text,
  claim_limit integer, lease_ms integer, worker text, kinds text[])
returns jsonb
language plpgsql
as $$
declare
  result jsonb;
  claimed jsonb := '[]';
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
    returning j.id, j.tenant_id, j.lane, j.parent_id, j.status
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
    returning p.id, p.status
  ),
  finished as (
    select t.id from terminal t
    union all select p.id from parents p where p.status in ('succeeded', 'failed', 'cancelled')
  )
  select jsonb_build_object(
    'moved', (select coalesce(jsonb_agg(jsonb_build_array(d.id, d.status)), '[]') from done d),
    'promoted', (select count(*) from promoted),
    'parents', (select coalesce(jsonb_agg(jsonb_build_array(p.id, p.status)), '[]') from parents p),
    'woke', (select count(pg_notify(jobs_channel, '')) from promoted limit 1),
    -- NOTIFY payloads stop at 8000 bytes: 300 ids a notification.
    'announced', (select count(pg_notify(done_channel, f.ids)) from (
      select string_agg(x.id::text, ',') as ids
      from (select fin.id, (row_number() over ()) / 300 as chunk from finished fin) x
      group by x.chunk) f))
  into result;

  if claim_limit > 0 then
    select coalesce(jsonb_agg(to_jsonb(c)), '[]') into claimed
    from claim_jobs(claim_limit, lease_ms, worker, kinds) c;
  end if;
  return result || jsonb_build_object('claimed', claimed);
end
$$;
