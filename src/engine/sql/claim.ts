import type { Queryable } from '../../store/types.ts';

/** A job as a worker claims it. */
export interface ClaimedRow {
  id: number;
  tenant_id: string;
  kind: string;
  payload: unknown;
  lane: string | null;
  attempts: number;
  max_attempts: number;
  lease_token: number;
  timeout_ms: number | null;
  parent_id: number | null;
  waited_s: number;
}

/** Claims up to `limit` jobs of `kinds` for `workerId` with a lease of `leaseMs`. */
export function claimJobs(
  q: Queryable,
  limit: number,
  leaseMs: number,
  workerId: string,
  kinds: readonly string[],
): Promise<ClaimedRow[]> {
  // claim_jobs (migration 0002) holds the statement and the planner settings it needs.
  return q.query<ClaimedRow>('select * from claim_jobs($1, $2, $3, $4) order by id', [
    limit,
    leaseMs,
    workerId,
    kinds,
  ]);
}

/**
 * Extends the leases still held; returns the ids whose lease was lost.
 *
 * A job row another transaction has locked is skipped, not waited for. The lock is usually
 * a completion of the job (this worker's own, batched with others); other moves of a job
 * and the short transactions that read it for update hold it too (none spans a network
 * call). Had the heartbeat waited, it would have held the rows it had already extended
 * while a completion of several jobs, wanting one of those, waited for it: a deadlock, which
 * PostgreSQL breaks only after `deadlock_timeout` (1 s), stalling every job of that
 * completion (seen in the ingest benchmark). A skipped job is not lost: it is still
 * `running` under this worker's token as last committed, and the next heartbeat extends it
 * (a lease outlasts three heartbeats by default).
 */
export async function extendLeases(
  q: Queryable,
  held: readonly { id: number; token: number }[],
  leaseMs: number,
): Promise<number[]> {
  if (held.length === 0) {
    return [];
  }
  const rows = await q.query<{ id: number }>(
    `with h as (select * from unnest($1::bigint[], $2::bigint[]) as h(id, token)),
     mine as (
       select j.id from jobs j join h on h.id = j.id
        where j.id = any($1::bigint[]) and j.lease_token = h.token and j.status = 'running'),
     free as (
       select j.id from jobs j join h on h.id = j.id
        where j.id = any($1::bigint[]) and j.lease_token = h.token and j.status = 'running'
        for no key update of j skip locked),
     extended as (
       update jobs j set lease_expires_at = now() + make_interval(secs => $3 / 1000.0)
         from free where j.id = any($1::bigint[]) and j.id = free.id)
     select id from mine`,
    [held.map((h) => h.id), held.map((h) => h.token), leaseMs],
  );
  const kept = new Set(rows.map((r) => r.id));
  return held.filter((h) => !kept.has(h.id)).map((h) => h.id);
}

/** A running job whose lease has expired. */
export interface ExpiredRow {
  id: number;
  tenant_id: string;
  kind: string;
  lane: string | null;
  attempts: number;
  max_attempts: number;
  lease_token: number;
  payload: unknown;
  parent_id: number | null;
}

/** Up to `limit` running jobs whose lease has expired, oldest first. */
export function findExpired(q: Queryable, limit: number): Promise<ExpiredRow[]> {
  return q.query<ExpiredRow>(
    `select id, tenant_id, kind, lane, attempts, max_attempts, lease_token, payload, parent_id
       from jobs
      where status = 'running' and lease_expires_at < now()
      order by lease_expires_at limit $1`,
    [limit],
  );
}
