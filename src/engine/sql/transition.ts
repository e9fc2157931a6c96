import type { Queryable } from '../../store/types.ts';
import { type Job, type JobError, type JobStatus, TERMINAL_STATUSES } from '../types.ts';
import type { ClaimedRow } from './claim.ts';
import { type JobRow, toJob } from './rows.ts';

/** One job's move from `from` to `to`, applied only if the job is still where the caller saw it. */
export interface Transition {
  id: number;
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

/** What a transition changed. */
export interface TransitionOutcome {
  /** The jobs that moved, with their new status; a job missing here was not where the caller saw it. */
  moved: Map<number, JobStatus>;
  /** Lane heads that became claimable. */
  promoted: number;
  /** Batch parents whose counts changed, with their status now. */
  parents: { id: number; status: JobStatus }[];
  /** Jobs claimed for the caller in the same round trip. */
  claimed: ClaimedRow[];
  /** With deferred notifications: the `done` payloads and the `jobs` wake-up still to send. */
  notifications: { announce: string[]; wake: boolean };
  /** The finished jobs of `want`, as stored after the transition. */
  rows: Job[];
}

/**
 * Channels the transition notifies — new claimable work, finished job ids — and who is
 * notifying: a finished job whose waiter is this engine is not announced.
 */
export interface Channels {
  jobs: string;
  done: string;
  engineId: string;
}

/** Refill of a worker's slots riding along with the transition. */
export interface Refill {
  limit: number;
  leaseMs: number;
  workerId: string;
  kinds: readonly string[];
  /**
   * Claim only if the transition made a lane head claimable: the worker found nothing to
   * claim last time and has heard of no new work since (`finish_jobs`, migration 0026).
   */
  onlyIfPromoted?: boolean;
}

/** The jobs and batch parents a transition finished. */
export function finishedIn(outcome: TransitionOutcome): number[] {
  return [
    ...[...outcome.moved]
      .filter(([, status]) => TERMINAL_STATUSES.includes(status))
      .map(([id]) => id),
    ...outcome.parents.filter((p) => TERMINAL_STATUSES.includes(p.status)).map((p) => p.id),
  ];
}

/** A statement and its parameters. */
export interface Statement {
  sql: string;
  params: unknown[];
}

/** What finish_jobs answers (see {@link parseFinished}). */
export interface FinishedRow {
  out: {
    moved: [number, JobStatus][];
    promoted: number;
    parents: [number, JobStatus][];
    claimed: ClaimedRow[];
    wake: boolean | null;
    announce: string[] | null;
    rows: (Omit<JobRow, DateColumn> & Record<DateColumn, string | null>)[] | null;
  };
}

type DateColumn = 'run_at' | 'lease_expires_at' | 'created_at' | 'started_at' | 'finished_at';

/**
 * A succeeded job whose result a database function computes inside the completing statement
 * (a handler's `applyFunction`): `name(argument::jsonb)`, called before the moves.
 */
export interface AppliedInStatement {
  id: number;
  /** The function, as SQL: quoted and schema-qualified by the caller. */
  name: string;
  /** Its argument, as JSON text. */
  argument: string;
}

/**
 * The statement that applies `transitions` and optionally claims `refill.limit` jobs
 * (`finish_jobs`, migration 0002): lane locks, moves, lane hand-on, batch parent counts and
 * status, notifications, claim (`finish_jobs`, migration 0008). Safe as a single autocommit
 * statement. With `mustMove`, it fails with SQLSTATE MNL01 (and its transaction aborts) when
 * one of those jobs did not move. With `deferNotify`, it sends no notification: the caller
 * sends {@link TransitionOutcome.notifications} after its commit ({@link notifyStatement}).
 */
export function finishStatement(
  channels: Channels,
  transitions: readonly Transition[],
  refill?: Refill,
  options: {
    mustMove?: readonly number[];
    deferNotify?: boolean;
    want?: readonly number[];
    applied?: readonly AppliedInStatement[];
  } = {},
): Statement {
  const mustMove = options.mustMove ?? [];
  const applied = new Map((options.applied ?? []).map((a) => [a.id, a]));
  const records = transitions.map((t) => ({
    id: t.id,
    token: t.token ?? null,
    tenant_id: t.tenantId,
    lane: t.lane,
    from_status: t.from,
    to_status: t.to,
    result: t.result === undefined ? null : t.result,
    error: t.error ?? null,
    delay_ms: t.delayMs ?? 0,
    expired_only: t.expiredOnly ?? false,
    refund: t.refund ?? false,
  }));
  const params: unknown[] = [
    JSON.stringify(records.filter((r) => !applied.has(r.id))),
    records.map((r) => r.id),
    channels.jobs,
    channels.done,
    refill === undefined ? 0 : refill.onlyIfPromoted === true ? -refill.limit : refill.limit,
    refill?.leaseMs ?? 0,
    refill?.workerId ?? '',
    refill?.kinds ?? [],
    channels.engineId,
    options.deferNotify ?? false,
    options.want ?? [],
  ];
  // The records of applied jobs get their result from their function, one group per
  // function (in the order of `applied` within a group: the worker's lock-key order; a batch
  // holds one job per lane at most): arguments are evaluated before finish_jobs runs, so
  // every apply comes first, and an error in any of them aborts the whole statement.
  let recordsSql = '$1::jsonb';
  const groups = new Map<string, string[]>();
  const byId = new Map(records.map((r) => [r.id, r]));
  for (const fn of applied.values()) {
    const record = byId.get(fn.id);
    if (record !== undefined) {
      const group = groups.get(fn.name) ?? [];
      group.push(`{"r":${JSON.stringify({ ...record, result: null })},"a":${fn.argument}}`);
      groups.set(fn.name, group);
    }
  }
  for (const [name, group] of [...groups].sort(([a], [b]) => (a < b ? -1 : 1))) {
    params.push(`[${group.join(',')}]`);
    recordsSql = `(${recordsSql} || (select coalesce(jsonb_agg(
        jsonb_set(x.value->'r', '{result}', coalesce(${name}(x.value->'a'), 'null'::jsonb))
        order by x.i), '[]'::jsonb)
      from jsonb_array_elements($${params.length}::jsonb) with ordinality as x(value, i)))`;
  }
  const call = `finish_jobs(${recordsSql}, $2::bigint[], $3, $4, $5, $6, $7, $8::text[], $9, $10, $11::bigint[])`;
  if (mustMove.length === 0) {
    return { sql: `select ${call} as out`, params };
  }
  params.push(mustMove);
  return { sql: `select assert_moved(${call}, $${params.length}::bigint[]) as out`, params };
}

/** The wake-ups a deferred transition left to send, as one statement (undefined: none). */
export function notifyStatement(
  channels: Channels,
  notifications: { announce: readonly string[]; wake: boolean },
): Statement | undefined {
  if (notifications.announce.length === 0 && !notifications.wake) {
    return undefined;
  }
  return {
    sql: `select (select count(pg_notify($1, a)) from unnest($2::text[]) as a)
              + (select count(pg_notify($3, '')) where $4::boolean) as sent`,
    params: [channels.done, notifications.announce, channels.jobs, notifications.wake],
  };
}

/** The answer of {@link finishStatement}. */
export function parseFinished(row: FinishedRow | undefined): TransitionOutcome {
  const out = row?.out;
  return {
    moved: new Map(out?.moved ?? []),
    promoted: out?.promoted ?? 0,
    parents: (out?.parents ?? []).map(([id, status]) => ({ id, status })),
    claimed: (out?.claimed ?? []).sort((a, b) => a.id - b.id),
    notifications: { announce: out?.announce ?? [], wake: out?.wake === true },
    rows: (out?.rows ?? []).map((r) =>
      toJob({
        ...r,
        run_at: new Date(r.run_at ?? 0),
        created_at: new Date(r.created_at ?? 0),
        lease_expires_at: r.lease_expires_at === null ? null : new Date(r.lease_expires_at),
        started_at: r.started_at === null ? null : new Date(r.started_at),
        finished_at: r.finished_at === null ? null : new Date(r.finished_at),
      }),
    ),
  };
}

/**
 * Applies `transitions` (and the refill claim) in one statement, notifications included (they
 * go out when the caller's transaction commits); see {@link finishStatement}.
 */
export async function applyTransitions(
  q: Queryable,
  channels: Channels,
  transitions: readonly Transition[],
  refill?: Refill,
): Promise<TransitionOutcome> {
  if (transitions.length === 0 && (refill === undefined || refill.limit <= 0)) {
    return {
      moved: new Map(),
      promoted: 0,
      parents: [],
      claimed: [],
      notifications: { announce: [], wake: false },
      rows: [],
    };
  }
  const { sql, params } = finishStatement(channels, transitions, refill);
  const [row] = await q.query<FinishedRow>(sql, params);
  return parseFinished(row);
}
