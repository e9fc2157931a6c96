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

// Set-based: up to $1 claimable jobs in one statement, oldest due first. Only `ready` jobs
// are candidates (laneless jobs and lane heads), so a lane never yields two jobs, and the
// unique index jobs_lane_running_uniq backs that up. A batch parent turns `running` when its
// first child starts.
const CLAIM_SQL = `with picked as (
    select id from jobs
    where status = 'pending' and ready and run_at <= now() and kind = any($4::text[])
    order by run_at, id
    limit $1
    for update skip locked
  ),
  claimed as (
    update jobs j set status = 'running', attempts = j.attempts + 1,
      lease_token = j.lease_token + 1,
      lease_expires_at = now() + make_interval(secs => $2 / 1000.0),
      locked_by = $3, started_at = now(), updated_at = now()
    from picked where j.id = picked.id
    returning j.id, j.tenant_id, j.kind, j.payload, j.lane, j.attempts, j.max_attempts,
      j.lease_token, j.timeout_ms, j.parent_id,
      greatest(0, extract(epoch from now() - j.run_at))::float8 as waited_s
  ),
  parents as (
    update jobs p set status = 'running', started_at = now(), updated_at = now()
    where p.id in (select parent_id from claimed where parent_id is not null) and p.status = 'pending'
    returning p.id
  )
  select * from claimed order by id`;

/** Claims up to `limit` jobs of `kinds` for `workerId` with a lease of `leaseMs`. */
export function claimJobs(
  q: Queryable,
  limit: number,
  leaseMs: number,
  workerId: string,
  kinds: readonly string[],
): Promise<ClaimedRow[]> {
  return q.query<ClaimedRow>(CLAIM_SQL, [limit, leaseMs, workerId, kinds]);
}

/** Extends the leases still held; returns the ids whose lease was lost. */
export async function extendLeases(
  q: Queryable,
  held: readonly { id: number; token: number }[],
  leaseMs: number,
): Promise<number[]> {
  if (held.length === 0) {
    return [];
  }
  const rows = await q.query<{ id: number }>(
    `update jobs j set lease_expires_at = now() + make_interval(secs => $3 / 1000.0)
       from unnest($1::bigint[], $2::bigint[]) as h(id, token)
      where j.id = h.id and j.lease_token = h.token and j.status = 'running'
      returning j.id`,
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
}

/** Up to `limit` running jobs whose lease has expired, oldest first. */
export function findExpired(q: Queryable, limit: number): Promise<ExpiredRow[]> {
  return q.query<ExpiredRow>(
    `select id, tenant_id, kind, lane, attempts, max_attempts, lease_token from jobs
      where status = 'running' and lease_expires_at < now()
      order by lease_expires_at limit $1`,
    [limit],
  );
}
