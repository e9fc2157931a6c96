import type { Queryable } from '../../store/types.ts';
import type { JobError, JobStatus } from '../types.ts';
import { laneLockKey, LOCK_LANES_SQL } from './rows.ts';

/** One job's move from `from` to `to`, applied only if the job is still where the caller saw it. */
export interface Transition {
  id: number;
  /** The lane, when the move is terminal (its lane lock must be held). */
  tenantId: string;
  lane: string | null;
  from: 'pending' | 'running';
  to: JobStatus;
  /** The lease the caller holds; the move is skipped when the job's token differs. */
  token?: number | null;
  result?: unknown;
  error?: JobError | null;
  /** For `to: 'pending'`: run again after this delay. */
  delayMs?: number;
  /** Only if the job's lease has expired (the reaper). */
  expiredOnly?: boolean;
  /** Give the attempt back (a shutdown released the job before it finished). */
  refund?: boolean;
}

/** What a transition statement changed. */
export interface TransitionOutcome {
  /** The jobs that moved, with their new status; a job missing here was not where the caller saw it. */
  moved: Map<number, JobStatus>;
  /** Lane heads that became claimable. */
  promoted: number;
  /** Batch parents whose counts changed, with their status now. */
  parents: { id: number; status: JobStatus }[];
}

const TERMINAL = `('succeeded', 'failed', 'cancelled')`;

// One statement: move the jobs, hand each emptied lane's turn to its next job, update the
// counts and derived status of batch parents, and wake listeners. The lane locks of every
// job moved to a terminal state are held by the caller (see lockLanesOf), so the head
// lookup below sees every job enqueued to those lanes.
const TRANSITION_SQL = `with o as (
    select * from jsonb_to_recordset($1::jsonb) as o(id bigint, token bigint, from_status text,
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
      finished_at = case when o.to_status in ${TERMINAL} then now() else null end,
      lease_expires_at = null,
      locked_by = null,
      updated_at = now()
    from o
    where j.id = o.id and j.status = o.from_status and not j.is_parent
      and (o.token is null or j.lease_token = o.token)
      and (not coalesce(o.expired_only, false) or j.lease_expires_at < now())
    returning j.id, j.tenant_id, j.lane, j.parent_id, j.status
  ),
  terminal as (select * from done where status in ${TERMINAL}),
  lanes as (select distinct tenant_id, lane from terminal where lane is not null),
  heads as (
    select n.id from lanes l cross join lateral (
      select a.id, a.status, a.ready from jobs a
      where a.tenant_id = l.tenant_id and a.lane = l.lane and a.status in ('pending', 'running')
        and a.id not in (select t.id from terminal t)
      order by a.id limit 1) as n
    where n.status = 'pending' and not n.ready
  ),
  promoted as (
    update jobs p set ready = true, updated_at = now() from heads where p.id = heads.id returning p.id
  ),
  counts as (
    select parent_id,
      count(*) filter (where status = 'succeeded')::int as s,
      count(*) filter (where status = 'failed')::int as f,
      count(*) filter (where status = 'cancelled')::int as c
    from terminal where parent_id is not null group by parent_id
  ),
  parents as (
    update jobs p set
      children_succeeded = p.children_succeeded + c.s,
      children_failed = p.children_failed + c.f,
      children_cancelled = p.children_cancelled + c.c,
      status = case
        when p.children_succeeded + p.children_failed + p.children_cancelled + c.s + c.f + c.c < p.children_total
          then p.status
        when p.children_failed + c.f > 0 then 'failed'
        when p.children_cancelled + c.c > 0 then 'cancelled'
        else 'succeeded' end,
      finished_at = case
        when p.children_succeeded + p.children_failed + p.children_cancelled + c.s + c.f + c.c >= p.children_total
          then now() else null end,
      updated_at = now()
    from counts c where p.id = c.parent_id
    returning p.id, p.status
  ),
  finished as (
    select id from terminal union all select id from parents where status in ${TERMINAL}
  )
  select
    (select coalesce(json_agg(json_build_array(id, status)), '[]'::json) from done) as moved,
    (select count(*) from promoted)::int as promoted,
    (select coalesce(json_agg(json_build_array(id, status)), '[]'::json) from parents) as parents,
    (select count(pg_notify($2, '')) from promoted limit 1)::int as woke,
    (select count(pg_notify($3, ids)) from (select string_agg(id::text, ',') as ids from finished) f
      where ids is not null)::int as announced`;

/**
 * Applies `transitions` in one statement. The caller must hold the lane locks of every
 * terminal transition ({@link lockLanesOf}).
 */
export async function applyTransitions(
  tx: Queryable,
  channels: { jobs: string; done: string },
  transitions: readonly Transition[],
): Promise<TransitionOutcome> {
  if (transitions.length === 0) {
    return { moved: new Map(), promoted: 0, parents: [] };
  }
  const records = transitions.map((t) => ({
    id: t.id,
    token: t.token ?? null,
    from_status: t.from,
    to_status: t.to,
    result: t.result === undefined ? null : t.result,
    error: t.error ?? null,
    delay_ms: t.delayMs ?? 0,
    expired_only: t.expiredOnly ?? false,
    refund: t.refund ?? false,
  }));
  const [row] = await tx.query<{
    moved: [number, JobStatus][];
    promoted: number;
    parents: [number, JobStatus][];
  }>(TRANSITION_SQL, [JSON.stringify(records), channels.jobs, channels.done]);
  return {
    moved: new Map(row?.moved ?? []),
    promoted: row?.promoted ?? 0,
    parents: (row?.parents ?? []).map(([id, status]) => ({ id, status })),
  };
}

/** Takes the lane locks that the terminal transitions among `transitions` need. */
export async function lockLanesOf(
  tx: Queryable,
  transitions: readonly Transition[],
): Promise<void> {
  const keys = new Set<string>();
  for (const t of transitions) {
    if (t.lane !== null && t.to !== 'pending' && t.to !== 'running') {
      keys.add(laneLockKey(t.tenantId, t.lane));
    }
  }
  if (keys.size > 0) {
    await tx.query(LOCK_LANES_SQL, [[...keys]]);
  }
}
