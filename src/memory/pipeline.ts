import { ErrorCode, MnemoError } from '../core/errors.ts';
import { operationId } from '../core/ids.ts';
import type { Engine } from '../engine/index.ts';
import type { Queryable } from '../store/types.ts';
import type { Extraction, Extractor } from './types.ts';
import { normalizeText } from './types.ts';

/** The job kinds of the memory domain. */
export const MemoryJob = {
  Ingest: 'memory.ingest',
  BatchIngest: 'memory.batch_ingest',
  DeleteUser: 'memory.delete_user',
} as const;

/** What an ingest job carries (the validated request, minus transport fields). */
export interface IngestPayload {
  user_id: string;
  user_query: string;
  agent_response?: string | undefined;
  source?: string | undefined;
  session_id?: string | undefined;
  occurred_at?: string | undefined;
  metadata?: Record<string, unknown> | undefined;
}

/** The result of an ingest operation (API.md). */
export interface IngestResult {
  memories: { added: { id: string; text: string }[]; duplicates: number };
  profile: { set: Record<string, string>; unset: string[] };
  events: { added: { id: string; date: string; description: string }[]; duplicates: number };
  summary: { turn_count: number };
}

/** All of one user's memory lives in the user's lane: one job at a time, in order. */
export function userLane(userId: string): string {
  return `user:${userId}`;
}

/**
 * The gate between a user's deletion and the writes for that user outside the user's lane
 * (session appends and commits, sync uploads and their segments): a transaction-scoped
 * advisory lock, shared by those writes, exclusive for the deletion's apply. A deletion thus
 * waits for every such write in flight, and sees its rows; a write that comes after it sees
 * the deletion. Taken before any row lock of the transaction (the deletion takes it before
 * any of its own), so that no transaction holds a row the other wants while waiting for it.
 * The key is namespaced apart from the lanes' (lane_lock_key).
 */
export async function enterUserGate(
  q: Queryable,
  tenantId: string,
  userId: string,
  mode: 'shared' | 'exclusive',
): Promise<void> {
  await q.query(
    mode === 'shared'
      ? 'select pg_advisory_xact_lock_shared(hashtextextended($1, 0))'
      : 'select pg_advisory_xact_lock(hashtextextended($1, 0))',
    [`user-gate:${tenantId.length}:${tenantId}:${userId}`],
  );
}

/**
 * Refuses a write outside the user's lane (a session append or commit, a sync upload) while a
 * deletion of that user waits or runs: the deletion would delete it with the rest, though
 * it was accepted after the deletion was. (An ingest needs no such check: it is in the lane,
 * after the deletion.) Enters the user's gate first ({@link enterUserGate}, shared): a
 * deletion already applying is waited for, and one applying later waits for this write;
 * call it in the write's transaction, before any row lock. One probe of
 * `jobs_lane_active_idx`, which holds active jobs only.
 * @throws MnemoError `conflict`
 */
export async function refuseWhileDeleting(
  q: Queryable,
  tenantId: string,
  userId: string,
): Promise<void> {
  // A statement of its own: the check below reads with a snapshot taken after the gate.
  await enterUserGate(q, tenantId, userId, 'shared');
  const [deleting] = await q.query<{ id: number }>(
    `select id from jobs
      where tenant_id = $1 and lane = $2 and status in ('pending', 'running') and kind = $3
      limit 1`,
    [tenantId, userLane(userId), MemoryJob.DeleteUser],
  );
  if (deleting !== undefined) {
    throw new MnemoError(
      ErrorCode.Conflict,
      `user ${JSON.stringify(userId)} is being deleted (operation ${operationId(deleting.id)}); send this again once that has finished`,
      { details: { operation_id: operationId(deleting.id) } },
    );
  }
}

/** Whose memory a turn goes to, and which operation writes it. */
export interface TurnTarget {
  tenantId: string;
  userId: string;
  operationId: number;
}

/** The conversation text a turn records (what `search` finds as `conversation`). */
export interface TurnRecord {
  user_query: string;
  agent_response?: string | undefined;
  source?: string | undefined;
  session_id?: string | undefined;
  occurred_at?: string | undefined;
}

/**
 * The argument of `write_turn` (migration 0009), which writes one turn's extraction — the
 * profile, facts and events with their dedup keys, the turn, the turn count — and returns
 * the {@link IngestResult}. Normalisation happens here, beside the extractors.
 */
export function turnArgument(target: TurnTarget, turn: TurnRecord, found: Extraction): unknown {
  return {
    tenant_id: target.tenantId,
    user_id: target.userId,
    operation_id: target.operationId,
    set: found.set,
    unset: found.unset,
    memories: found.memories,
    memory_norms: found.memories.map(normalizeText),
    events: found.events.map((e) => ({
      date: e.date,
      description: e.description,
      norm: normalizeText(e.description),
    })),
    source: turn.source ?? null,
    occurred_at: turn.occurred_at ?? null,
    user_query: turn.user_query,
    agent_response: turn.agent_response ?? null,
    session_id: turn.session_id ?? null,
  };
}

/**
 * Writes one turn's extraction in one statement (`write_turn`). Runs in the apply
 * transaction of a job of the user's lane (a session's commit), which makes it the only
 * writer of this user's memory at that moment.
 */
export async function writeTurn(
  tx: Queryable,
  target: TurnTarget,
  turn: TurnRecord,
  found: Extraction,
): Promise<IngestResult> {
  const [row] = await tx.query<{ result: IngestResult }>('select write_turn($1::jsonb) as result', [
    JSON.stringify(turnArgument(target, turn, found)),
  ]);
  if (row === undefined) {
    throw new Error('write_turn returned no row');
  }
  return row.result;
}

/**
 * The lock key ({@link JobHandler.lockKey}) of jobs whose applies lock a user's rows outside
 * the user's lane (sync segments and summaries): completions order them by user.
 */
export function userLockKey(ctx: { tenantId: string; payload: { user_id: string } }): string {
  return `${userDeletionLockKey(ctx)}\u0000`;
}

/**
 * The lock key of the user's deletion: before every other key of the user
 * ({@link userLockKey}), so that a completion holding both applies the deletion first. It
 * takes the user's gate exclusively, and must take it before the other applies' row locks,
 * or a write in flight that holds the gate shared and wants one of those rows would wait for
 * it while it waits for the gate.
 */
export function userDeletionLockKey(ctx: {
  tenantId: string;
  payload: { user_id: string };
}): string {
  return `${ctx.tenantId}\u0000${ctx.payload.user_id}`;
}

/**
 * A user's deletion redacts the user's operations from before it and their children ($1
 * tenant, $2 user, $3 the deletion's id, $4 the user's lane): the operations through
 * `jobs_user_idx` (migration 0012), their children through `jobs_parent_idx`, not the
 * tenant's jobs. Before it: in the user's lane (or a batch whose items are), a lower id (an
 * ingest or batch queued behind the deletion stays); outside the lane, every one the
 * deletion sees (a sync upload sent later waits for it or is refused, and one in flight is
 * waited for and so comes before it, whatever its id). Finished jobs, and batch parents still
 * running (a parent has no handler to read its payload): a job still to run keeps the
 * payload its handler reads (ids, never the user's words). A redacted job keeps neither the
 * user's words nor the user's id (it is no longer listed as the user's), nor its idempotency
 * key: the same key after the deletion is a new request, so a client that re-imports what
 * it had sent is written again, not answered with the old, emptied operation.
 */
export const REDACT_USER_JOBS = `with mine as (
    select j.id, j.is_parent, j.status from jobs j
     where j.tenant_id = $1 and j.parent_id is null and j.payload ->> 'user_id' = $2
       and (j.id < $3
            or (j.lane is distinct from $4
                and not exists (select 1 from jobs c
                                 where c.parent_id = j.id and c.lane = $4)))),
  r as (
    update jobs j set payload = '{"redacted": true}'::jsonb, result = null,
                      idempotency_key = null, payload_hash = null
      from (select m.id from mine m
             where m.is_parent or m.status in ('succeeded', 'failed', 'cancelled')
            union all
            select c.id from mine m join jobs c on c.parent_id = m.id
             where c.tenant_id = $1 and c.status in ('succeeded', 'failed', 'cancelled')) t
     where j.id = t.id and j.tenant_id = $1
    returning 1)
  select count(*)::int as n from r`;

/**
 * Registers the memory jobs with the engine. With `retainMs`, the finished operations of the
 * memory API (ingests, batches with their items, deletions) are deleted that long after they
 * finish; without it they are kept for good.
 */
export function registerMemoryJobs(
  engine: Engine,
  extractor: Extractor,
  options: { timeoutMs?: number; retainMs?: number | undefined } = {},
): void {
  if (options.retainMs !== undefined) {
    for (const kind of [MemoryJob.Ingest, MemoryJob.BatchIngest, MemoryJob.DeleteUser]) {
      engine.retain(kind, options.retainMs);
    }
  }
  engine.register<IngestPayload, Extraction>(MemoryJob.Ingest, {
    timeoutMs: options.timeoutMs ?? 60_000,
    maxAttempts: 3,
    // The extractor reads the turn alone: it may start while the ingest is being enqueued.
    pureCompute: (ctx) =>
      extractor.extract(
        {
          userQuery: ctx.payload.user_query,
          agentResponse: ctx.payload.agent_response,
          occurredAt: ctx.payload.occurred_at,
        },
        ctx.signal,
      ),
    // The lane makes this the only writer of this user's memory right now, and the fenced
    // completion makes it the only attempt whose writes commit. As a database function, the
    // writes ride in the statement that completes the job.
    applyFunction: {
      name: 'write_turn',
      argument: (found, ctx) =>
        turnArgument(
          { tenantId: ctx.tenantId, userId: ctx.payload.user_id, operationId: ctx.id },
          ctx.payload,
          found,
        ),
    },
  });

  engine.register<{ user_id: string }, void>(MemoryJob.DeleteUser, {
    maxAttempts: 5,
    lockKey: userDeletionLockKey,
    async apply(tx, _none, ctx) {
      const args = [ctx.tenantId, ctx.payload.user_id];
      // Writes for this user outside the lane that are in flight commit first; each
      // statement below then sees their rows.
      await enterUserGate(tx, ctx.tenantId, ctx.payload.user_id, 'exclusive');
      // The user's sync lock first, as every sync apply takes it before the user's segments
      // and conversations, which are deleted below.
      await tx.query(
        `select 1 from sync_users where tenant_id = $1 and user_id = $2 for update`,
        args,
      );
      const counts: Record<string, number> = {};
      // Sessions take their messages, archives and append keys with them (on delete
      // cascade). Sync: segments before conversations (they point at them), and the batches,
      // so a batch still transcribing stops (its cursor finds nothing).
      const tables = [
        'memories',
        'profile_attributes',
        'events',
        'turns',
        'user_summaries',
        'sessions',
        'sync_segments',
        'conversations',
        'sync_batches',
        'sync_audio',
        'sync_users',
      ];
      for (const table of tables) {
        const rows = await tx.query<{ n: number }>(
          `with gone as (delete from ${table} where tenant_id = $1 and user_id = $2 returning 1)
           select count(*)::int as n from gone`,
          args,
        );
        counts[table] = rows[0]?.n ?? 0;
      }
      // Earlier operations of this user keep no copy of their words either.
      const redacted = await tx.query<{ n: number }>(REDACT_USER_JOBS, [
        ctx.tenantId,
        ctx.payload.user_id,
        ctx.id,
        userLane(ctx.payload.user_id),
      ]);
      counts['operations_redacted'] = redacted[0]?.n ?? 0;
      return { deleted: counts };
    },
  });
}
