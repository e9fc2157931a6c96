import { createHash } from 'node:crypto';

import { ErrorCode, MnemoError } from '../core/errors.ts';
import { canonicalJson } from '../core/json.ts';
import { databaseStateOf } from '../store/errors.ts';
import type { Queryable } from '../store/types.ts';
import type { ClaimedRow } from './sql/claim.ts';
import { JOB_COLUMNS, type JobRow, toJob } from './sql/rows.ts';
import type { Channels } from './sql/transition.ts';
import type { BatchParentSpec, Enqueued, EnqueuedBatch, Job, JobSpec } from './types.ts';

/** What enqueueing needs from the engine: per-kind defaults and admission control. */
export interface EnqueueContext {
  defaultsFor(kind: string): { maxAttempts: number; timeoutMs: number | null };
  /** Where wake-ups go, and this engine's id (a `waiter: 'local'` job records it). */
  channels: Channels;
  /** Pending jobs per lane past which enqueue fails with `queue_full`. */
  maxPendingPerLane: number;
  /** Pending jobs overall past which enqueue fails with `queue_full`. */
  maxPendingTotal: number;
  /** Pending jobs overall, as last counted (a cached estimate). */
  /** Pending jobs, possibly a little stale; `fresh`: counted within the TTL. */
  pendingTotal(q: Queryable, fresh?: boolean): Promise<number>;
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
  waiter: string | null;
}

const MAX_KIND = 200;
const MAX_LANE = 512;
const MAX_KEY = 512;

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
    waiter: spec.waiter === undefined ? null : spec.waiter === 'local' ? ctx.channels.engineId : '',
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

function queueFull(ctx: EnqueueContext, reason: string): MnemoError {
  return new MnemoError(ErrorCode.QueueFull, `queue full: ${reason}; retry later`, {
    retryAfterMs: ctx.retryAfterMs,
  });
}

/** SQLSTATE raised by `enqueue_jobs` when a lane is over its limit. */
const LANE_FULL = 'MNQ01';

/**
 * Admission control and the insert, in one statement (`enqueue_jobs`, migration 0008): it
 * takes the lane locks, refuses a lane over its limit and inserts; outside a transaction it
 * is atomic on its own. Jobs whose idempotency key exists are skipped (not returned).
 * Outside a transaction the wake-up of idle workers is sent after the statement's commit
 * (a NOTIFY inside it would serialize it with every other notifying commit); inside one, the
 * insert trigger's NOTIFY goes out when the caller commits.
 * @throws MnemoError `queue_full`
 */
async function insertJobs(
  q: Queryable,
  ctx: EnqueueContext,
  tenantId: string,
  jobs: readonly Prepared[],
  parentId: number | null,
  claim?: ClaimFor,
  syncCommit = true,
): Promise<(JobRow & { timeout_ms: number | null; ready: boolean })[]> {
  let total = await ctx.pendingTotal(q);
  if (total + jobs.length > ctx.maxPendingTotal) {
    total = await ctx.pendingTotal(q, true); // refuse on a fresh count only
  }
  if (total + jobs.length > ctx.maxPendingTotal) {
    throw queueFull(ctx, `the queue holds ${total} pending jobs (limit ${ctx.maxPendingTotal})`);
  }
  // The payload travels as text inside the JSON document and is cast back to jsonb.
  const records = jobs.map((job) => ({ ...job, payload: JSON.parse(job.payload) as unknown }));
  const document = JSON.stringify(records); // before onInsert, whose compute may hold the payload
  const [single] = records;
  if (claim?.onInsert !== undefined && records.length === 1 && parentId === null && single) {
    claim.onInsert(single.payload);
  }
  try {
    const defer = !q.inTransaction;
    // Evaluated before the statement's own commit, which it makes asynchronous.
    const asyncCommit =
      defer && !syncCommit ? `, set_config('synchronous_commit', 'off', true)` : '';
    const rows = await q.query<JobRow & { timeout_ms: number | null; ready: boolean }>(
      `select ${JOB_COLUMNS}, j.timeout_ms, j.ready${asyncCommit}
         from enqueue_jobs($1, $2::jsonb, $3, $4, $5, $6, $7::text[], $8) as j`,
      [
        tenantId,
        document,
        parentId,
        ctx.maxPendingPerLane,
        claim?.workerId ?? null,
        claim?.leaseMs ?? null,
        claim?.kinds ?? null,
        defer,
      ],
    );
    if (defer && rows.some((r) => r.status === 'pending' && r.ready)) {
      // Committed: wake idle workers elsewhere, without waiting (they also poll).
      q.query('select pg_notify($1, $2)', [ctx.channels.jobs, '']).catch(() => undefined);
    }
    return rows.sort((a, b) => a.id - b.id);
  } catch (err) {
    if (databaseStateOf(err) === LANE_FULL) {
      const cause = (err as MnemoError).cause;
      throw queueFull(ctx, cause instanceof Error ? cause.message : 'a lane is full');
    }
    throw err;
  }
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

/** A worker of this process with a slot reserved for the job being enqueued. */
export interface ClaimFor {
  workerId: string;
  leaseMs: number;
  kinds: readonly string[];
  /**
   * Called when the statement that may claim the job is about to be sent (the job is valid,
   * admitted, and not an idempotent replay), with its payload as the stored JSON gives it.
   * Called again if the statement is retried.
   */
  onInsert?: (payload: unknown) => void;
}

/**
 * Writes one job (one statement, plus a lookup when it has an idempotency key), in the caller's
 * transaction or in autocommit. With `claim` (autocommit only), a job claimable at once is
 * written already claimed by that worker and returned as `claimed`.
 * @throws MnemoError `invalid_request`, `idempotency_conflict`, `queue_full`
 */
export async function enqueueJob(
  tx: Queryable,
  ctx: EnqueueContext,
  spec: JobSpec,
  claim?: ClaimFor,
): Promise<Enqueued & { claimed?: ClaimedRow; laneBusy?: boolean }> {
  if (claim !== undefined && tx.inTransaction) {
    throw new MnemoError(ErrorCode.Internal, 'a job can be claimed at enqueue in autocommit only');
  }
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
  const [row] = await insertJobs(tx, ctx, tenantId, [job], null, claim, spec.syncCommit !== false);
  if (row !== undefined) {
    if (row.status !== 'running') {
      // Not ready: the lane has an unfinished job before it.
      return { job: toJob(row), created: true, laneBusy: row.lane !== null && !row.ready };
    }
    const claimed: ClaimedRow = {
      id: row.id,
      tenant_id: row.tenant_id,
      kind: row.kind,
      payload: row.payload,
      lane: row.lane,
      attempts: row.attempts,
      max_attempts: row.max_attempts,
      lease_token: row.lease_token,
      timeout_ms: row.timeout_ms,
      parent_id: row.parent_id,
      waited_s: 0,
    };
    return { job: toJob(row), created: true, claimed };
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
  return (await insertJobs(tx, ctx, tenantId, prepareAll(ctx, specs), null)).map((row) =>
    toJob(row),
  );
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
        children: await childrenOf(tx, existing.id, tenantId),
        created: false,
      };
    }
  }
  if (!tx.inTransaction) {
    // The parent and its children are two statements; only a transaction makes them one.
    throw new MnemoError(ErrorCode.Internal, 'enqueueBatch must run inside store.transaction()');
  }
  const [parentRow] = await tx.query<JobRow>(
    `insert into jobs as j (tenant_id, kind, payload, is_parent, idempotency_key, payload_hash,
       children_total, waiter)
     values ($1, $2, $3::jsonb, true, $4, $5, $6, $7)
     on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing
     returning ${JOB_COLUMNS}`,
    [
      tenantId,
      parent.kind,
      serialise(parent.payload),
      key,
      hash,
      children.length,
      parent.waiter === undefined ? null : parent.waiter === 'local' ? ctx.channels.engineId : '',
    ],
  );
  if (parentRow === undefined) {
    const existing =
      key !== null && hash !== null ? await replay(tx, tenantId, key, hash) : undefined;
    if (existing === undefined) {
      throw new MnemoError(ErrorCode.Internal, 'batch enqueue inserted nothing');
    }
    return {
      parent: toJob(existing),
      children: await childrenOf(tx, existing.id, tenantId),
      created: false,
    };
  }
  const childRows = await insertJobs(tx, ctx, tenantId, prepared, parentRow.id);
  return {
    parent: toJob(parentRow),
    children: childRows.map((row) => toJob(row)),
    created: true,
  };
}

/**
 * Adds a child to a batch that is still pending or running, inside the caller's transaction
 * (which holds the parent's row lock from here on): the parent finishes only after it.
 * @throws MnemoError `conflict` (the parent finished or does not exist), `queue_full`
 */
export async function addChildJob(
  tx: Queryable,
  ctx: EnqueueContext,
  parentId: number,
  spec: JobSpec,
): Promise<Job> {
  if (!tx.inTransaction) {
    throw new MnemoError(ErrorCode.Internal, 'addChild must run inside store.transaction()');
  }
  const tenantId = spec.tenantId ?? 'default';
  const [grown] = await tx.query(
    `update jobs set children_total = children_total + 1, updated_at = now()
      where id = $1 and tenant_id = $2 and is_parent and status in ('pending', 'running')
      returning id`,
    [parentId, tenantId],
  );
  if (grown === undefined) {
    throw new MnemoError(ErrorCode.Conflict, `batch ${parentId} is finished or does not exist`);
  }
  const [row] = await insertJobs(tx, ctx, tenantId, prepareAll(ctx, [spec]), parentId);
  if (row === undefined) {
    throw new MnemoError(ErrorCode.Internal, 'adding a child inserted nothing');
  }
  return toJob(row);
}

/** A parent's children in enqueue order. */
export async function childrenOf(q: Queryable, parentId: number, tenantId: string): Promise<Job[]> {
  const rows = await q.query<JobRow>(
    `select ${JOB_COLUMNS} from jobs j where j.parent_id = $1 and j.tenant_id = $2 order by j.id`,
    [parentId, tenantId],
  );
  return rows.map((row) => toJob(row));
}
