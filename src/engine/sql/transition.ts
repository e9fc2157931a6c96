import type { Queryable } from '../../store/types.ts';
import type { JobError, JobStatus } from '../types.ts';
import type { ClaimedRow } from './claim.ts';

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
}

/** Channels the transition notifies: new claimable work, and finished job ids. */
export interface Channels {
  jobs: string;
  done: string;
}

/** Refill of a worker's slots riding along with the transition. */
export interface Refill {
  limit: number;
  leaseMs: number;
  workerId: string;
  kinds: readonly string[];
}

/**
 * Applies `transitions` and optionally claims `refill.limit` jobs, in one statement
 * (`finish_jobs`, migration 0002): lane locks, moves, lane hand-on, batch parent counts and
 * status, notifications, claim. Safe as a single autocommit statement.
 */
export async function applyTransitions(
  q: Queryable,
  channels: Channels,
  transitions: readonly Transition[],
  refill?: Refill,
): Promise<TransitionOutcome> {
  if (transitions.length === 0 && (refill === undefined || refill.limit <= 0)) {
    return { moved: new Map(), promoted: 0, parents: [], claimed: [] };
  }
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
  const [row] = await q.query<{
    out: {
      moved: [number, JobStatus][];
      promoted: number;
      parents: [number, JobStatus][];
      claimed: ClaimedRow[];
    };
  }>('select finish_jobs($1::jsonb, $2::bigint[], $3, $4, $5, $6, $7, $8::text[]) as out', [
    JSON.stringify(records),
    records.map((r) => r.id),
    channels.jobs,
    channels.done,
    refill?.limit ?? 0,
    refill?.leaseMs ?? 0,
    refill?.workerId ?? '',
    refill?.kinds ?? [],
  ]);
  const out = row?.out;
  return {
    moved: new Map(out?.moved ?? []),
    promoted: out?.promoted ?? 0,
    parents: (out?.parents ?? []).map(([id, status]) => ({ id, status })),
    claimed: (out?.claimed ?? []).sort((a, b) => a.id - b.id),
  };
}
