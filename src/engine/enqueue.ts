import { createHash } from 'node:crypto';

import { ErrorCode, MnemoError } from '../core/errors.ts';
import { canonicalJson } from '../core/json.ts';
import type { Queryable } from '../store/types.ts';
import { JOB_COLUMNS, type JobRow, toJob } from './sql/rows.ts';
import type { BatchParentSpec, Enqueued, EnqueuedBatch, Job, JobSpec } from './types.ts';

/** What enqueueing needs from the engine: per-kind defaults and admission control. */
export interface EnqueueContext {
  defaultsFor(kind: string): { maxAttempts: number; timeoutMs: number | null };
  /** Pending jobs per lane past which enqueue fails with `queue_full`. */
  maxPendingPerLane: number;
  /** Pending jobs overall past which enqueue fails with `queue_full`. */
  maxPendingTotal: number;
  /** Pending jobs overall, as last counted (a cached estimate). */
  pendingTotal(q: Queryable): Promise<number>;
  /** Suggested wait for a caller refused with `queue_full`. */
  retryAfterMs: number;
}

interface Prepared {
  ord: number;
  kind: string;
  payload: string;
  lane: string | null;
  first: boolean;
  run_at: string | null;
  max_attempts: number;
  timeout_ms: number | null;
  idempotency_key: string | null;
  payload_hash: string | null;
}

const MAX_KIND = 200;
const MAX_LANE = 512;
const MAX_KEY = 256;

function invalid(message: string): MnemoError {
  return new MnemoError(ErrorCode.InvalidRequest, message);
}

function hashOf(value: unknown): string {
  return createHash('sha256').update(canonicalJson(value)).digest('hex');
}

function checkText(name: string, value: string | null | undefined, max: number): void {
  if (value !== null && value !== undefined && (value.length === 0 || value.length > max)) {
    throw invalid(`${name} must be 1 to ${max} characters`);
  }
}

function serialise(payload: unknown): string {
  try {
    const text = JSON.stringify(payload ?? {});
    if (text === undefined) {
      throw new TypeError('not serialisable');
    }
    return text;
  } catch (err) {
    throw new MnemoError(ErrorCode.InvalidRequest, 'job payload must be JSON-serialisable', {
      cause: err,
    });
  }
}

function prepare(ctx: EnqueueContext, spec: JobSpec, ord: number, first: boolean): Prepared {
  checkText('job kind', spec.kind, MAX_KIND);
  checkText('lane', spec.lane, MAX_LANE);
  checkText('idempotency key', spec.idempotencyKey, MAX_KEY);
  const defaults = ctx.defaultsFor(spec.kind);
  const maxAttempts = spec.maxAttempts ?? defaults.maxAttempts;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 1000) {
    throw invalid('maxAttempts must be a whole number from 1 to 1000');
  }
  const timeoutMs = spec.timeoutMs ?? defaults.timeoutMs;
  if (timeoutMs !== null && (!Number.isInteger(timeoutMs) || timeoutMs < 1)) {
    throw invalid('timeoutMs must be a positive whole number');
  }
  if (spec.runAt !== undefined && Number.isNaN(spec.runAt.getTime())) {
    throw invalid('runAt must be a valid date');
  }
  const lane = spec.lane ?? null;
  return {
    ord,
    kind: spec.kind,
    payload: serialise(spec.payload),
    lane,
    first,
    run_at: spec.runAt?.toISOString() ?? null,
    max_attempts: maxAttempts,
    timeout_ms: timeoutMs,
    idempotency_key: spec.idempotencyKey ?? null,
    payload_hash:
      spec.idempotencyKey === undefined
        ? null
        : hashOf({ kind: spec.kind, lane, payload: spec.payload ?? {} }),
  };
}

function prepareAll(ctx: EnqueueContext, specs: readonly JobSpec[]): Prepared[] {
  const seen = new Set<string>();
  return specs.map((spec, i) => {
    const lane = spec.lane ?? null;
    const first = lane !== null && !seen.has(lane);
    if (lane !== null) {
      seen.add(lane);
    }
    return prepare(ctx, spec, i, first);
  });
}

/**
 * Locks the lanes of `jobs` and refuses work past the admission limits. Must run before
 * the insert: the insert's `ready` computation relies on the lane locks being held.
 */
async function admit(
  tx: Queryable,
  ctx: EnqueueContext,
  tenantId: string,
  jobs: readonly Prepared[],
): Promise<void> {
  if (!tx.inTransaction) {
    // Outside a transaction the lane lock would end with its own statement, before the
    // insert: the lane protocol needs both in one READ COMMITTED transaction.
    throw new MnemoError(ErrorCode.Internal, 'enqueue must run inside store.transaction()');
  }
  const lanes = new Map<string, number>();
  for (const job of jobs) {
    if (job.lane !== null) {
      lanes.set(job.lane, (lanes.get(job.lane) ?? 0) + 1);
    }
  }
  const total = await ctx.pendingTotal(tx);
  if (total + jobs.length > ctx.maxPendingTotal) {
    throw queueFull(ctx, `the queue holds ${total} pending jobs (limit ${ctx.maxPendingTotal})`);
  }
  if (lanes.size === 0) {
    return;
  }
  const names = [...lanes.keys()];
  // One round trip: take the lane locks (in one global order, by key, so that two enqueuers
  // of several lanes cannot deadlock) and count each lane's unfinished jobs. The count's
  // snapshot may predate the locks by a moment, which only blurs a soft limit; the insert
  // that decides `ready` is a later statement and sees everything the locks guard.
  const counts = await tx.query<{ lane: string; n: number }>(
    `select l.lane, (select count(*) from (select 1 from jobs j
        where j.tenant_id = $1 and j.lane = l.lane and j.status in ('pending', 'running')
        limit $3) as s)::int as n
       from (select count(pg_advisory_xact_lock(k)) as locked from (
               select distinct lane_lock_key($1, x) as k from unnest($2::text[]) as x order by 1)
             as keys) as lock,
            unnest($2::text[]) as l(lane)`,
    [tenantId, names, ctx.maxPendingPerLane + 1],
  );
  for (const { lane, n } of counts) {
    const adding = lanes.get(lane) ?? 0;
    if (n + adding > ctx.maxPendingPerLane) {
      throw queueFull(
        ctx,
        `lane ${JSON.stringify(lane)} holds ${n} unfinished jobs (limit ${ctx.maxPendingPerLane})`,
      );
    }
  }
}

function queueFull(ctx: EnqueueContext, reason: string): MnemoError {
  return new MnemoError(ErrorCode.QueueFull, `queue full: ${reason}; retry later`, {
    retryAfterMs: ctx.retryAfterMs,
  });
}

const INSERT_SQL = `insert into jobs as j (tenant_id, kind, payload, lane, ready, run_at, max_attempts,
    timeout_ms, idempotency_key, payload_hash, parent_id)
  select $1, r.kind, r.payload, r.lane,
    r.lane is null or (r.first and not exists (
      select 1 from jobs a where a.tenant_id = $1 and a.lane = r.lane and a.status in ('pending', 'running'))),
    coalesce(r.run_at, now()), r.max_attempts, r.timeout_ms, r.idempotency_key, r.payload_hash, $3
  from jsonb_to_recordset($2::jsonb) as r(ord int, kind text, payload jsonb, lane text, first boolean,
    run_at timestamptz, max_attempts int, timeout_ms int, idempotency_key text, payload_hash text)
  order by r.ord
  on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing
  returning ${JOB_COLUMNS}`;

async function insertJobs(
  tx: Queryable,
  tenantId: string,
  jobs: readonly Prepared[],
  parentId: number | null,
): Promise<JobRow[]> {
  // The payload travels as text inside the JSON document and is cast back to jsonb.
  const records = jobs.map((job) => ({ ...job, payload: JSON.parse(job.payload) as unknown }));
  const rows = await tx.query<JobRow>(INSERT_SQL, [tenantId, JSON.stringify(records), parentId]);
  return rows.sort((a, b) => a.id - b.id);
}

type KeyedRow = JobRow & { payload_hash: string | null };

async function findByKey(
  tx: Queryable,
  tenantId: string,
  key: string,
): Promise<KeyedRow | undefined> {
  const [row] = await tx.query<KeyedRow>(
    `select ${JOB_COLUMNS}, j.payload_hash from jobs j where j.tenant_id = $1 and j.idempotency_key = $2`,
    [tenantId, key],
  );
  return row;
}

async function replay(
  tx: Queryable,
  tenantId: string,
  key: string,
  hash: string,
): Promise<JobRow | undefined> {
  const existing = await findByKey(tx, tenantId, key);
  if (existing === undefined) {
    return undefined;
  }
  if (existing.payload_hash !== hash) {
    throw new MnemoError(
      ErrorCode.IdempotencyConflict,
      `idempotency key ${JSON.stringify(key)} was already used for a different request`,
      { details: { existing_id: existing.id } },
    );
  }
  return existing;
}

/**
 * Writes one job inside the caller's transaction; it exists iff that transaction commits.
 * @throws MnemoError `invalid_request`, `idempotency_conflict`, `queue_full`
 */
export async function enqueueJob(
  tx: Queryable,
  ctx: EnqueueContext,
  spec: JobSpec,
): Promise<Enqueued> {
  const tenantId = spec.tenantId ?? 'default';
  const [job] = prepareAll(ctx, [spec]);
  if (job === undefined) {
    throw invalid('nothing to enqueue');
  }
  const key = job.idempotency_key;
  if (key !== null && job.payload_hash !== null) {
    const existing = await replay(tx, tenantId, key, job.payload_hash);
    if (existing !== undefined) {
      return { job: toJob(existing), created: false };
    }
  }
  await admit(tx, ctx, tenantId, [job]);
  const [row] = await insertJobs(tx, tenantId, [job], null);
  if (row !== undefined) {
    return { job: toJob(row), created: true };
  }
  // A concurrent transaction inserted the same key first and has committed.
  const existing =
    key !== null && job.payload_hash !== null
      ? await replay(tx, tenantId, key, job.payload_hash)
      : undefined;
  if (existing === undefined) {
    throw new MnemoError(ErrorCode.Internal, 'enqueue inserted nothing');
  }
  return { job: toJob(existing), created: false };
}

/**
 * Writes many independent jobs with one insert (no idempotency keys).
 * @throws MnemoError `invalid_request`, `queue_full`
 */
export async function enqueueJobs(
  tx: Queryable,
  ctx: EnqueueContext,
  tenantId: string,
  specs: readonly JobSpec[],
): Promise<Job[]> {
  if (specs.some((s) => s.idempotencyKey !== undefined || (s.tenantId ?? tenantId) !== tenantId)) {
    throw invalid('enqueueMany takes jobs of one tenant without idempotency keys');
  }
  if (specs.length === 0) {
    return [];
  }
  const jobs = prepareAll(ctx, specs);
  await admit(tx, ctx, tenantId, jobs);
  return (await insertJobs(tx, tenantId, jobs, null)).map((row) => toJob(row));
}

/**
 * Writes a batch — the parent and every child — inside the caller's transaction: all of it
 * exists or none of it does. Children of one lane run in the order given.
 * @throws MnemoError `invalid_request`, `idempotency_conflict`, `queue_full`
 */
export async function enqueueBatchJobs(
  tx: Queryable,
  ctx: EnqueueContext,
  parent: BatchParentSpec,
  children: readonly JobSpec[],
): Promise<EnqueuedBatch> {
  const tenantId = parent.tenantId ?? 'default';
  checkText('job kind', parent.kind, MAX_KIND);
  checkText('idempotency key', parent.idempotencyKey, MAX_KEY);
  if (children.length === 0) {
    throw invalid('a batch needs at least one child');
  }
  if (
    children.some((c) => c.idempotencyKey !== undefined || (c.tenantId ?? tenantId) !== tenantId)
  ) {
    throw invalid('batch children share the parent tenant and carry no idempotency keys');
  }
  const prepared = prepareAll(ctx, children);
  const key = parent.idempotencyKey ?? null;
  const hash =
    key === null
      ? null
      : hashOf({
          kind: parent.kind,
          payload: parent.payload ?? {},
          children: children.map((c) => ({
            kind: c.kind,
            lane: c.lane ?? null,
            payload: c.payload ?? {},
          })),
        });
  if (key !== null && hash !== null) {
    const existing = await replay(tx, tenantId, key, hash);
    if (existing !== undefined) {
      return {
        parent: toJob(existing),
        children: await childrenOf(tx, existing.id),
        created: false,
      };
    }
  }
  await admit(tx, ctx, tenantId, prepared);
  const [parentRow] = await tx.query<JobRow>(
    `insert into jobs as j (tenant_id, kind, payload, is_parent, idempotency_key, payload_hash, children_total)
     values ($1, $2, $3::jsonb, true, $4, $5, $6)
     on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing
     returning ${JOB_COLUMNS}`,
    [tenantId, parent.kind, serialise(parent.payload), key, hash, children.length],
  );
  if (parentRow === undefined) {
    const existing =
      key !== null && hash !== null ? await replay(tx, tenantId, key, hash) : undefined;
    if (existing === undefined) {
      throw new MnemoError(ErrorCode.Internal, 'batch enqueue inserted nothing');
    }
    return { parent: toJob(existing), children: await childrenOf(tx, existing.id), created: false };
  }
  const childRows = await insertJobs(tx, tenantId, prepared, parentRow.id);
  return {
    parent: toJob(parentRow, { pending: children.length, running: 0 }),
    children: childRows.map((row) => toJob(row)),
    created: true,
  };
}

/** A parent's children in enqueue order. */
export async function childrenOf(q: Queryable, parentId: number): Promise<Job[]> {
  const rows = await q.query<JobRow>(
    `select ${JOB_COLUMNS} from jobs j where j.parent_id = $1 order by j.id`,
    [parentId],
  );
  return rows.map((row) => toJob(row));
}
