/**
 * Sessions: a live transcript per session, archived by commits and turned into memory.
 *
 * Commit phase 1 is one short transaction: lock the session row, mark every live message as
 * part of archive k + 1 (one statement whose snapshot follows the lock), insert the archive,
 * enqueue its job. A concurrent second commit waits for the lock, then finds nothing live.
 * Phase 2 is that job, in the user's lane: summarize the archive and extract memory from its
 * user messages through the ingest pipeline (writeTurn), applied once by the fenced apply.
 */
import { createHash } from 'node:crypto';

import { ErrorCode, MnemoError } from '../core/errors.ts';
import { operationId } from '../core/ids.ts';
import { canonicalJson } from '../core/json.ts';
import type { Engine, Job, JobContext } from '../engine/index.ts';
import { type IngestResult, refuseWhileDeleting, userLane, writeTurn } from '../memory/pipeline.ts';
import type { Extraction, Extractor, Message } from '../memory/types.ts';
import type { Queryable, Store } from '../store/types.ts';

/** The job kinds of sessions. */
export const SessionJob = {
  Commit: 'session.commit',
} as const;

/** What a session may hold live; past it, appends are refused until a commit. */
export const LiveLimits = { messages: 2000, characters: 1_000_000 } as const;

/**
 * The archive's text kept for conversation search, per side, in UTF-8 bytes: the turn's
 * `tsvector` over both sides must stay under 1 MB whatever the script.
 */
const MAX_TURN_BYTES = 150_000;

/** `text` cut to at most `max` UTF-8 bytes, on a character boundary. */
function truncateUtf8(text: string, max: number): string {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= max) {
    return text;
  }
  let end = max;
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) {
    end -= 1; // a continuation byte: back up to the character's first byte
  }
  return bytes.subarray(0, end).toString('utf8');
}

/** A message to append. */
export interface MessageInput extends Message {
  created_at?: string | undefined;
}

/** What the archive's job carries. */
export interface CommitPayload {
  user_id: string;
  session_id: string;
  archive_index: number;
}

/** The result of commit phase 1. */
export type CommitOutcome =
  | { status: 'nothing_to_commit' }
  | { status: 'committed'; archive: { index: number; message_count: number }; job: Job };

/** An archive as a session read shows it; `Id` is how its operation is named. */
interface ArchiveView<Id> {
  index: number;
  message_count: number;
  summary: string | null;
  status: Job['status'];
  operation_id: Id;
}

/** A session as `GET /v1/sessions/{id}` shows it. */
export interface SessionView {
  user_id: string;
  live_count: number;
  archives: ArchiveView<string>[];
}

/** The result of an archive's job: the archive with its summary, and what memory took in. */
export type ArchiveResult =
  | ({ archive: { index: number; message_count: number; summary: string } } & IngestResult)
  | { archive: { index: number; message_count: number }; skipped: string };

interface Computed {
  messages: number;
  summary: string;
  extraction: Extraction;
  userText: string;
  assistantText: string;
}

const NOTHING: Extraction = { set: {}, unset: [], events: [], memories: [] };

/** Thrown inside the commit transaction to roll it back and answer a replay instead. */
class ReplayAfterLock extends Error {}

function notFound(sessionId: string): MnemoError {
  return new MnemoError(ErrorCode.NotFound, `session ${JSON.stringify(sessionId)} not found`);
}

/**
 * The archive job's idempotency key: the session row's generation (unique even when a session
 * id is reused after its user was deleted) and the archive index. Client keys are namespaced
 * `api:` by the application, so they cannot meet it.
 */
function archiveJobKey(generation: number, index: number): string {
  return `session:${generation}:${index}`;
}

/**
 * Locks the session row, creating the session on its first message; refuses a session of
 * another user.
 */
async function lockForAppend(
  tx: Queryable,
  tenantId: string,
  sessionId: string,
  userId: string,
): Promise<void> {
  const [row] = await tx.query<{ user_id: string }>(
    `insert into sessions as s (tenant_id, id, user_id) values ($1, $2, $3)
     on conflict (tenant_id, id) do update set updated_at = now()
     returning s.user_id`,
    [tenantId, sessionId, userId],
  );
  if (row?.user_id !== userId) {
    throw new MnemoError(
      ErrorCode.Conflict,
      `session ${JSON.stringify(sessionId)} belongs to another user`,
    );
  }
}

async function liveCount(q: Queryable, tenantId: string, sessionId: string): Promise<number> {
  const [row] = await q.query<{ n: number }>(
    `select count(*)::int as n from session_messages
      where tenant_id = $1 and session_id = $2 and archive_index is null`,
    [tenantId, sessionId],
  );
  return row?.n ?? 0;
}

/**
 * Appends messages to a session's live transcript (creating the session), in order, all or
 * none. With an idempotency key, a replay adds nothing and answers the current live count.
 * @throws MnemoError `conflict` (another user's session, or too many live messages),
 *   `idempotency_conflict`
 */
export function appendMessages(
  store: Store,
  tenantId: string,
  sessionId: string,
  userId: string,
  messages: readonly MessageInput[],
  idempotencyKey?: string,
): Promise<{ live_count: number }> {
  return store.transaction(async (tx) => {
    await refuseWhileDeleting(tx, tenantId, userId);
    await lockForAppend(tx, tenantId, sessionId, userId);
    if (idempotencyKey !== undefined) {
      const hash = createHash('sha256')
        .update(canonicalJson({ sessionId, userId, messages }))
        .digest('hex');
      const [inserted] = await tx.query(
        `insert into session_append_keys (tenant_id, key, session_id, payload_hash)
         values ($1, $2, $3, $4) on conflict (tenant_id, key) do nothing returning 1 as ok`,
        [tenantId, idempotencyKey, sessionId, hash],
      );
      if (inserted === undefined) {
        const [existing] = await tx.query<{ session_id: string; payload_hash: string }>(
          `select session_id, payload_hash from session_append_keys
            where tenant_id = $1 and key = $2`,
          [tenantId, idempotencyKey],
        );
        if (existing?.session_id !== sessionId || existing.payload_hash !== hash) {
          throw new MnemoError(
            ErrorCode.IdempotencyConflict,
            `idempotency key ${JSON.stringify(idempotencyKey)} was already used for a different request`,
          );
        }
        return { live_count: await liveCount(tx, tenantId, sessionId) };
      }
    }
    // This statement starts after the session lock was granted: its count sees every
    // commit that finished meanwhile.
    const [row] = await tx.query<{ live_count: number; live_chars: number }>(
      `with ins as (
         insert into session_messages (tenant_id, session_id, role, content, created_at)
         select $1, $2, m.role, m.content, coalesce(m.created_at, now())
         from unnest($3::text[], $4::text[], $5::timestamptz[]) with ordinality
           as m(role, content, created_at, ord)
         order by m.ord
         returning length(content) as len),
       live as (
         select count(*) as n, coalesce(sum(length(content)), 0) as chars from session_messages
          where tenant_id = $1 and session_id = $2 and archive_index is null)
       select ((select n from live) + (select count(*) from ins))::int as live_count,
              ((select chars from live) + (select coalesce(sum(len), 0) from ins))::float8
                as live_chars`,
      [
        tenantId,
        sessionId,
        messages.map((m) => m.role),
        messages.map((m) => m.content),
        messages.map((m) => m.created_at ?? null),
      ],
    );
    const count = row?.live_count ?? 0;
    const chars = row?.live_chars ?? 0;
    if (count > LiveLimits.messages || chars > LiveLimits.characters) {
      // Thrown inside the transaction: the insert above is rolled back.
      throw new MnemoError(
        ErrorCode.Conflict,
        `session ${JSON.stringify(sessionId)} would hold ${count} live messages of ${chars} characters (limits ${LiveLimits.messages} and ${LiveLimits.characters}); commit it first`,
        { details: { limits: LiveLimits } },
      );
    }
    return { live_count: count };
  });
}

async function archiveByKey(
  q: Queryable,
  tenantId: string,
  key: string,
): Promise<
  | { session_id: string; archive_index: number; message_count: number; operation_id: number }
  | undefined
> {
  const [row] = await q.query<{
    session_id: string;
    archive_index: number;
    message_count: number;
    operation_id: number;
  }>(
    `select session_id, archive_index, message_count, operation_id from session_archives
      where tenant_id = $1 and request_key = $2`,
    [tenantId, key],
  );
  return row;
}

/**
 * Commit phase 1: archives every live message of the session and enqueues the archive's job,
 * in one transaction. With an idempotency key, a replay answers the archive it made.
 * @throws MnemoError `not_found`, `idempotency_conflict`, `queue_full`
 */
export async function commitSession(
  store: Store,
  engine: Engine,
  tenantId: string,
  sessionId: string,
  requestKey?: string,
): Promise<CommitOutcome> {
  const replay = async (): Promise<CommitOutcome | undefined> => {
    if (requestKey === undefined) {
      return undefined;
    }
    const archive = await archiveByKey(store, tenantId, requestKey);
    if (archive === undefined) {
      return undefined;
    }
    if (archive.session_id !== sessionId) {
      throw new MnemoError(
        ErrorCode.IdempotencyConflict,
        `idempotency key ${JSON.stringify(requestKey)} was already used for a different request`,
      );
    }
    const job = await engine.getJob(tenantId, archive.operation_id);
    if (job === undefined) {
      // The retention sweep deleted the operation between the two reads; it freed the key in
      // the same transaction, so the key now starts a new commit.
      return undefined;
    }
    return {
      status: 'committed',
      archive: { index: archive.archive_index, message_count: archive.message_count },
      job,
    };
  };
  const replayed = await replay();
  if (replayed !== undefined) {
    return replayed;
  }
  // A second pass when the key's archive, found under the lock, was gone again when read
  // (its commit undone, or swept): the key is free, so the commit is made anew.
  for (let pass = 1; ; pass++) {
    try {
      return await store.transaction(async (tx): Promise<CommitOutcome> => {
        // The user's deletion gate before the session's row lock (refuseWhileDeleting): the
        // session's user, read first without a lock, is checked again under it.
        const [owner] = await tx.query<{ user_id: string }>(
          `select user_id from sessions where tenant_id = $1 and id = $2`,
          [tenantId, sessionId],
        );
        if (owner === undefined) {
          throw notFound(sessionId);
        }
        await refuseWhileDeleting(tx, tenantId, owner.user_id);
        const [session] = await tx.query<{
          user_id: string;
          archive_count: number;
          generation: number;
        }>(
          `select user_id, archive_count, generation::float8 as generation from sessions
            where tenant_id = $1 and id = $2 for update`,
          [tenantId, sessionId],
        );
        if (session === undefined) {
          throw notFound(sessionId); // deleted meanwhile
        }
        if (session.user_id !== owner.user_id) {
          // Deleted and created again for another user meanwhile: a conflict to send again.
          throw new MnemoError(
            ErrorCode.Conflict,
            `session ${JSON.stringify(sessionId)} changed hands while committing; send the commit again`,
          );
        }
        if (requestKey !== undefined && (await archiveByKey(tx, tenantId, requestKey))) {
          // The same key committed while this one waited for the lock: answer its archive.
          throw new ReplayAfterLock();
        }
        const index = session.archive_count + 1;
        // A statement after the lock: it sees every append that committed before it.
        const [moved] = await tx.query<{ n: number }>(
          `with moved as (
             update session_messages set archive_index = $3
              where tenant_id = $1 and session_id = $2 and archive_index is null
             returning 1)
           select count(*)::int as n from moved`,
          [tenantId, sessionId, index],
        );
        const count = moved?.n ?? 0;
        if (count === 0) {
          return { status: 'nothing_to_commit' };
        }
        const payload: CommitPayload = {
          user_id: session.user_id,
          session_id: sessionId,
          archive_index: index,
        };
        const { job } = await engine.enqueue(tx, {
          kind: SessionJob.Commit,
          tenantId,
          lane: userLane(session.user_id),
          payload,
          idempotencyKey: archiveJobKey(session.generation, index),
        });
        await tx.query(
          `with archive as (
             insert into session_archives
               (tenant_id, session_id, archive_index, message_count, operation_id, request_key)
             values ($1, $2, $3, $4, $5, $6))
           update sessions set archive_count = $3, updated_at = now()
            where tenant_id = $1 and id = $2`,
          [tenantId, sessionId, index, count, job.id, requestKey ?? null],
        );
        return { status: 'committed', archive: { index, message_count: count }, job };
      });
    } catch (err) {
      // The same key committed concurrently: this transaction rolled back; answer its archive.
      const raced =
        err instanceof ReplayAfterLock ||
        (err instanceof MnemoError && err.code === ErrorCode.Conflict);
      if (raced && requestKey !== undefined) {
        const again = await replay();
        if (again !== undefined) {
          return again;
        }
        if (err instanceof ReplayAfterLock && pass < 3) {
          continue;
        }
      }
      throw err instanceof ReplayAfterLock
        ? new MnemoError(
            ErrorCode.Conflict,
            'a commit with this idempotency key kept changing while this one waited; send it again',
          )
        : err;
    }
  }
}

/**
 * A session: its user, live message count and archives with their summaries and status.
 * @throws MnemoError `not_found`
 */
export async function readSession(
  store: Queryable,
  tenantId: string,
  sessionId: string,
): Promise<SessionView> {
  // One statement, one snapshot: a commit cannot land between the live count and the archives.
  const [session] = await store.query<{
    user_id: string;
    live_count: number;
    archives: ArchiveView<number>[];
  }>(
    `select s.user_id,
       (select count(*) from session_messages m
         where m.tenant_id = s.tenant_id and m.session_id = s.id and m.archive_index is null)::int
         as live_count,
       (select coalesce(json_agg(json_build_object('index', a.archive_index,
            'message_count', a.message_count, 'summary', a.summary, 'status', coalesce(j.status, a.status),
            'operation_id', a.operation_id) order by a.archive_index), '[]'::json)
          -- An operation deleted by the retention sweep left its final status in the archive.
          from session_archives a
          left join jobs j on j.id = a.operation_id and j.tenant_id = a.tenant_id
         where a.tenant_id = s.tenant_id and a.session_id = s.id) as archives
       from sessions s where s.tenant_id = $1 and s.id = $2`,
    [tenantId, sessionId],
  );
  if (session === undefined) {
    throw notFound(sessionId);
  }
  return {
    user_id: session.user_id,
    live_count: session.live_count,
    archives: session.archives.map((a) => ({ ...a, operation_id: operationId(a.operation_id) })),
  };
}

/**
 * Registers commit phase 2 with the engine. With `retainMs`, a commit's operation is deleted
 * that long after it finishes: its archive keeps the final status, and its idempotency key
 * is free again, as an ingest's is.
 */
export function registerSessionJobs(
  engine: Engine,
  store: Store,
  extractor: Extractor,
  options: { timeoutMs?: number; retainMs?: number | undefined } = {},
): void {
  if (options.retainMs !== undefined) {
    engine.retain(SessionJob.Commit, options.retainMs, {
      beforeDelete: async (tx, ids) => {
        // By the archive's key (the payload names it) and its operation: a session deleted
        // and created again may hold another archive of the same index.
        await tx.query(
          `update session_archives a set status = j.status, request_key = null
             from jobs j
            where j.id = any($1::bigint[]) and a.tenant_id = j.tenant_id
              and a.session_id = j.payload ->> 'session_id'
              and a.archive_index = (j.payload ->> 'archive_index')::integer
              and a.operation_id = j.id`,
          [ids],
        );
      },
    });
  }
  engine.register<CommitPayload, Computed | null>(SessionJob.Commit, {
    timeoutMs: options.timeoutMs ?? 60_000,
    maxAttempts: 3,
    // Archived messages never change: reading them outside a transaction is safe, and the
    // model calls hold none.
    // The archive is this job's only while it names this job: a session deleted and created
    // again starts its archives at 1 anew, and an old job that ran late would otherwise take
    // the new archive of the same index for its own.
    async compute(ctx) {
      const messages = await store.query<Message>(
        `select m.role, m.content from session_messages m
           join session_archives a on a.tenant_id = m.tenant_id and a.session_id = m.session_id
                                  and a.archive_index = m.archive_index
          where m.tenant_id = $1 and m.session_id = $2 and m.archive_index = $3
            and a.operation_id = $4
          order by m.id`,
        [ctx.tenantId, ctx.payload.session_id, ctx.payload.archive_index, ctx.id],
      );
      if (messages.length === 0) {
        return null; // the user was deleted before this job ran
      }
      const userText = messages
        .filter((m) => m.role === 'user')
        .map((m) => m.content)
        .join('\n');
      const assistantText = messages
        .filter((m) => m.role === 'assistant')
        .map((m) => m.content)
        .join('\n');
      const [summary, extraction] = await Promise.all([
        extractor.summarize(messages, ctx.signal),
        userText === ''
          ? Promise.resolve(NOTHING)
          : extractor.extract(
              { userQuery: userText, agentResponse: assistantText || undefined },
              ctx.signal,
            ),
      ]);
      return { messages: messages.length, summary, extraction, userText, assistantText };
    },
    async apply(tx, computed, ctx): Promise<ArchiveResult> {
      const { session_id: sessionId, archive_index: index, user_id: userId } = ctx.payload;
      const archive = { index, message_count: computed?.messages ?? 0 };
      const [updated] =
        computed === null
          ? []
          : await tx.query(
              `update session_archives set summary = $4, summarized_at = now()
                where tenant_id = $1 and session_id = $2 and archive_index = $3
                  and operation_id = $5
                returning 1 as ok`,
              [ctx.tenantId, sessionId, index, computed.summary, ctx.id],
            );
      if (computed === null || updated === undefined) {
        return { archive, skipped: 'the session was deleted' };
      }
      const written = await writeTurn(
        tx,
        { tenantId: ctx.tenantId, userId, operationId: ctx.id },
        {
          user_query: truncateUtf8(computed.userText, MAX_TURN_BYTES),
          agent_response: truncateUtf8(computed.assistantText, MAX_TURN_BYTES) || undefined,
          source: 'session',
          session_id: sessionId,
        },
        computed.extraction,
      );
      return { archive: { ...archive, summary: computed.summary }, ...written };
    },
    // Failed for good (the model kept refusing, say) or cancelled while pending: the commit
    // is undone where it safely can be (undoCommit), so its messages are not left in an
    // archive nothing will read. Its operation stays `failed` or `cancelled`.
    async onFailure(tx, _error, ctx) {
      await undoCommit(tx, ctx);
    },
    async onCancel(tx, ctx) {
      await undoCommit(tx, ctx);
    },
  });
}

/**
 * Gives an unfinished commit's messages back to the live session and deletes its archive
 * (with its idempotency key), so that the next commit takes them — only when that cannot
 * write older words after newer ones, nor repeat for good: the archive must be the
 * session's latest (a newer one holds later messages, and the next commit of these would
 * come after it), and its messages must not have been given back before (a commit that
 * fails on its content would otherwise come back with every later commit). Otherwise the
 * archive stays as its job ended.
 */
async function undoCommit(tx: Queryable, ctx: JobContext<CommitPayload>): Promise<void> {
  // The session's row lock, as a commit's phase 1 takes it: a phase 1 in flight (its archive
  // not yet visible) finishes first, and its archive counts as newer below.
  const [latest] = await tx.query(
    `select 1 from sessions where tenant_id = $1 and id = $2 and archive_count = $3 for update`,
    [ctx.tenantId, ctx.payload.session_id, ctx.payload.archive_index],
  );
  if (latest === undefined) {
    return; // a newer archive exists (or the session is gone)
  }
  await tx.query(
    `with archive as (
       delete from session_archives
        where tenant_id = $1 and session_id = $2 and archive_index = $3 and operation_id = $4
          and not exists (
            select 1 from session_messages m
             where m.tenant_id = $1 and m.session_id = $2 and m.archive_index = $3
               and m.given_back)
       returning 1)
     update session_messages set archive_index = null, given_back = true
      where tenant_id = $1 and session_id = $2 and archive_index = $3
        and exists (select 1 from archive)`,
    [ctx.tenantId, ctx.payload.session_id, ctx.payload.archive_index, ctx.id],
  );
}
