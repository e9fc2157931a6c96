-- finish_jobs as in 0025, but a negative claim_limit asks for a refill of -claim_limit jobs
-- only if this call made a lane head claimable. A worker passes it when its last look found
-- nothing to claim and nothing has woken it since (src/engine/worker.ts, `#drained`). Most
-- work that appears afterwards is announced (an enqueue's NOTIFY, a wake-up after another
-- completion) and wakes its claim loop; the lane heads this very call hands on are not, so it
-- takes them. Work nobody announces (a run_at coming due, a job another process's reaper put
-- back) waits for the worker's poll (docs/engine.md).
-- Under the ingest bench's overhead phases almost every completion found nothing to claim:
-- 0.06–0.3 ms of each, and a plan, for no job.
create or replace function finish_jobs(transitions jsonb, ids bigint[], jobs_channel text, done_channel text,
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
  v_id bigint;
  v_parent bigint;
  parent_ids bigint[];
  v_row jsonb;
  want_rows jsonb := '[]';
begin
  -- Lane locks of every terminal move, in one global order (no deadlock between lockers).
  perform pg_advisory_xact_lock(k) from (
    -- lane_lock_key(), written out: a function call per row costs more than the rest.
    select distinct hashtextextended('lane:' || length(t.tenant_id) || ':' || t.tenant_id || ':' || t.lane, 0) as k
    from jsonb_to_recordset(transitions) as t(tenant_id text, lane text, to_status text)
    where t.lane is not null and t.to_status in ('succeeded', 'failed', 'cancelled')
    order by 1) as keys;

  -- Batch parents in id order, so two completions of children of the same parents queue
  -- instead of deadlocking. A few jobs' parents are read one primary-key lookup at a time.
  if cardinality(ids) <= 16 then
    foreach v_id in array ids loop
      select j.parent_id into v_parent from jobs j where j.id = v_id;
      if v_parent is not null then
        parent_ids := parent_ids || v_parent;
      end if;
    end loop;
    for v_parent in select distinct u from unnest(parent_ids) as u order by u loop
      perform 1 from jobs p where p.id = v_parent for update;
    end loop;
  else
    perform 1 from jobs p
    where p.id in (select c.parent_id from jobs c where c.id = any(ids) and c.parent_id is not null)
    order by p.id for update;
  end if;

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

  if claim_limit > 0 or (claim_limit < 0 and promoted_ids is not null) then
    select coalesce(jsonb_agg(to_jsonb(c)), '[]') into claimed
    from claim_jobs(abs(claim_limit), lease_ms, worker, kinds) c;
  end if;
  wake := promoted_ids is not null
    and exists (select 1 from jobs w where w.id = any(promoted_ids) and w.status = 'pending');
  if not defer_notify then
    if wake then
      perform pg_notify(jobs_channel, '');
    end if;
    perform pg_notify(done_channel, a) from unnest(announce) as a;
  end if;
  if cardinality(want) <= 16 then
    foreach v_id in array want loop
      select to_jsonb(w) into v_row from jobs w
      where w.id = v_id and w.status in ('succeeded', 'failed', 'cancelled');
      if found then
        want_rows := want_rows || jsonb_build_array(v_row);
      end if;
    end loop;
  else
    select coalesce(jsonb_agg(to_jsonb(w)), '[]') into want_rows from jobs w
    where w.id = any(want) and w.status in ('succeeded', 'failed', 'cancelled');
  end if;
  return result || jsonb_build_object('claimed', claimed, 'wake', wake,
    'announce', to_jsonb(announce), 'rows', want_rows);
end
$$;
