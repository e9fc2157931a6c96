/**
 * Offline sync: a device uploads timestamped segments; each is transcribed in parallel (a
 * laneless job per segment) and assigned to the user's conversations in started_at order.
 *
 * Order without waiting: every batch has a durable cursor over its segments in time order.
 * When a segment's job finishes (text, silence, empty or failed), its apply takes the user's
 * lock (the `sync_users` row) and moves the cursor over every consecutive finished segment,
 * assigning each in turn; a segment not finished yet stops it, and the job that finishes that
 * segment moves it on. A segment within the merge window of conversations joins the closest
 * and merges the others within the window into it (beyond "join the closest": without it a
 * segment bridging two conversations of two batches would leave them apart), so with one
 * window the conversations do not depend on which batch got the lock first. When the cursor
 * has passed every segment, the batch's counts become its result and a summarize job (in the
 * user's summary lane) is added to it: every conversation it touched is summarized once.
 */
import { createHash } from 'node:crypto';

import { ErrorCode, isMnemoError, MnemoError } from '../core/errors.ts';
import { canonicalJson } from '../core/json.ts';
import { pageOf } from '../core/page.ts';
import type { Engine, Job } from '../engine/index.ts';
import { enterUserGate, refuseWhileDeleting, userLockKey } from '../memory/pipeline.ts';
import type { Page } from '../memory/read.ts';
import type { Extractor } from '../memory/types.ts';
import { Conditions } from '../store/conditions.ts';
import type { Queryable, Store } from '../store/types.ts';
import { isSilent, parseWav } from './audio.ts';
import type { Transcriber } from './transcriber.ts';

/** The job kinds of offline sync. */
export const SyncJob = {
  Batch: 'sync.batch',
  Segment: 'sync.segment',
  Summarize: 'sync.summarize',
  DeleteAudio: 'sync.delete_audio',
} as const;

/** One segment of an upload. */
export interface SegmentInput {
  id: string;
  started_at: string;
  ended_at: string;
  transcript?: string | undefined;
  audio_wav_base64?: string | undefined;
}

/** Options of one upload. */
export interface SyncRequestOptions {
  mergeWindowS: number;
  deviceId?: string | undefined;
  idempotencyKey?: string | undefined;
}

/** Settings of the sync domain. */
export interface SyncSettings {
  /** Uploaded audio is deleted this long after the upload. */
  audioRetentionMs: number;
  /** Transcription jobs' run limit. */
  timeoutMs: number;
  /**
   * Finished uploads (their operation with its segments' jobs) and audio deletions are
   * deleted this long after they finish; kept for good without it.
   */
  retainMs?: number | undefined;
}

/** The result of a sync operation (API.md). */
export interface SyncResult {
  conversations: { created: string[]; merged: string[] };
  segments: { assigned: number; skipped: number; duplicate: number; failed: number };
}

interface SegmentPayload {
  user_id: string;
  batch_id: number;
  segment_id: string;
}

interface BatchPayload {
  user_id: string;
  batch_id: number;
}

interface AudioPayload {
  audio_ids: number[];
}

/**
 * The lane of a user's conversation summaries: one summary job of the user at a time, in
 * batch order, apart from the user's memory lane (ingests do not hold them up).
 */
function summaryLane(userId: string): string {
  return `sync:${userId}`;
}

type Transcribed =
  | { state: 'ready'; text: string }
  | { state: 'skipped'; reason: string }
  | { state: 'failed'; reason: string };

/** The public id of a conversation. */
export function conversationId(id: number): string {
  return `conv_${id}`;
}

class Replay extends Error {
  readonly job: Job;
  constructor(job: Job) {
    super('replay');
    this.job = job;
  }
}

/**
 * Accepts an upload: records the new segments in the user's ledger (ids seen before count as
 * duplicates), stores their audio, and enqueues the batch — one transcription job per new
 * segment — in one transaction. Audio is decoded here, so a malformed WAV is a 400.
 * @throws MnemoError `invalid_request`, `idempotency_conflict`, `queue_full`
 */
export async function startSync(
  store: Store,
  engine: Engine,
  settings: SyncSettings,
  tenantId: string,
  userId: string,
  segments: readonly SegmentInput[],
  options: SyncRequestOptions,
): Promise<Job> {
  const requestHash = createHash('sha256')
    .update(canonicalJson({ userId, segments, options: { ...options, idempotencyKey: null } }))
    .digest('hex');
  const replay = (job: Job): Job => {
    if ((job.payload as { request_hash?: unknown } | null)?.request_hash !== requestHash) {
      throw new MnemoError(
        ErrorCode.IdempotencyConflict,
        `idempotency key ${JSON.stringify(options.idempotencyKey)} was already used for a different request`,
      );
    }
    return job;
  };
  if (options.idempotencyKey !== undefined) {
    const existing = await engine.findByIdempotencyKey(tenantId, options.idempotencyKey);
    if (existing !== undefined) {
      return replay(existing);
    }
  }
  const audio = new Map<string, Buffer>();
  for (const s of segments) {
    if (s.audio_wav_base64 !== undefined) {
      const wav = Buffer.from(s.audio_wav_base64, 'base64');
      parseWav(wav); // refuse what cannot be decoded before anything is written
      audio.set(s.id, wav);
    }
  }
  // Ledger rows are inserted in id order: two uploads sharing segments cannot deadlock.
  const byId = [...segments].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  try {
    return await store.transaction(async (tx) => {
      await refuseWhileDeleting(tx, tenantId, userId);
      await tx.query(
        `insert into sync_users (tenant_id, user_id) values ($1, $2) on conflict do nothing`,
        [tenantId, userId],
      );
      const [batch] = await tx.query<{ id: number }>(
        `insert into sync_batches (tenant_id, user_id, merge_window_s) values ($1, $2, $3)
         returning id::float8 as id`,
        [tenantId, userId, options.mergeWindowS],
      );
      const batchId = batch?.id ?? 0;
      const segmentArgs = [
        byId.map((s) => s.id),
        byId.map((s) => s.started_at),
        byId.map((s) => s.ended_at),
        byId.map((s) => s.transcript ?? null),
      ];
      // A segment that failed (its transcription did), and that its batch's cursor has passed,
      // is taken again as new by this batch: a device re-sends what the server could not
      // read. Locked in id order, like the ledger's inserts below.
      const retried = await tx.query<{ id: string; started_at: Date }>(
        `with failed as (
           select g.id from sync_segments g
            where g.tenant_id = $1 and g.user_id = $2 and g.id = any($4::text[])
              and g.state = 'failed' and g.processed
            order by g.id for update)
         update sync_segments g set batch_id = $3, ord = 0, started_at = s.started_at,
           ended_at = s.ended_at, transcript = s.transcript, state = 'pending',
           processed = false, reason = null, audio_id = null, job_id = null
           from failed,
                unnest($4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[])
                  as s(id, started_at, ended_at, transcript)
          where g.tenant_id = $1 and g.user_id = $2 and g.id = failed.id and s.id = failed.id
          returning g.id, g.started_at`,
        [tenantId, userId, batchId, ...segmentArgs],
      );
      const inserted = await tx.query<{ id: string; started_at: Date }>(
        `insert into sync_segments (tenant_id, user_id, id, batch_id, ord, started_at, ended_at,
           transcript)
         select $1, $2, s.id, $3, 0, s.started_at, s.ended_at, s.transcript
         from unnest($4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[])
           with ordinality as s(id, started_at, ended_at, transcript, i)
         order by s.i
         on conflict (tenant_id, user_id, id) do nothing
         returning id, started_at`,
        [tenantId, userId, batchId, ...segmentArgs],
      );
      // The cursor's order: started_at, then id.
      const ordered = [...retried, ...inserted].sort(
        (a, b) =>
          a.started_at.getTime() - b.started_at.getTime() ||
          (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
      );
      const withAudio = ordered.filter((s) => audio.has(s.id));
      const audioIds = await tx.query<{ id: number; segment_id: string }>(
        `insert into sync_audio (tenant_id, user_id, segment_id, wav)
         select $1, $2, a.segment_id, a.wav from unnest($3::text[], $4::bytea[]) as a(segment_id, wav)
         returning id::float8 as id, segment_id`,
        [tenantId, userId, withAudio.map((s) => s.id), withAudio.map((s) => audio.get(s.id))],
      );
      const audioOf = new Map(audioIds.map((a) => [a.segment_id, a.id]));
      await tx.query(
        `update sync_segments g set ord = o.ord, audio_id = o.audio_id
           from unnest($4::text[], $5::int[], $6::bigint[]) as o(id, ord, audio_id)
          where g.tenant_id = $1 and g.user_id = $2 and g.batch_id = $3 and g.id = o.id`,
        [
          tenantId,
          userId,
          batchId,
          ordered.map((s) => s.id),
          ordered.map((_, i) => i),
          ordered.map((s) => audioOf.get(s.id) ?? null),
        ],
      );
      const duplicate = segments.length - ordered.length;
      const children =
        ordered.length > 0
          ? ordered.map((s) => ({
              kind: SyncJob.Segment,
              tenantId,
              payload: { user_id: userId, batch_id: batchId, segment_id: s.id },
            }))
          : // Nothing new: the batch is only its summary (of nothing), which writes the result.
            [
              {
                kind: SyncJob.Summarize,
                tenantId,
                lane: summaryLane(userId),
                payload: { user_id: userId, batch_id: batchId },
              },
            ];
      const out = await engine.enqueueBatch(
        tx,
        {
          kind: SyncJob.Batch,
          tenantId,
          payload: {
            user_id: userId,
            batch_id: batchId,
            device_id: options.deviceId ?? null,
            segments: segments.length,
            request_hash: requestHash,
          },
          idempotencyKey: options.idempotencyKey,
        },
        children,
      );
      if (!out.created) {
        throw new Replay(out.parent); // roll this upload back; answer the first one
      }
      await tx.query(
        `update sync_batches set parent_id = $2, total = $3, duplicate = $4,
           finalized = ($3 = 0)
          where id = $1 and tenant_id = $5`,
        [batchId, out.parent.id, ordered.length, duplicate, tenantId],
      );
      if (ordered.length > 0) {
        await tx.query(
          `update sync_segments g set job_id = j.job
             from unnest($4::text[], $5::bigint[]) as j(id, job)
            where g.tenant_id = $1 and g.user_id = $2 and g.batch_id = $3 and g.id = j.id`,
          [
            tenantId,
            userId,
            batchId,
            out.children.map((c) => (c.payload as SegmentPayload).segment_id),
            out.children.map((c) => c.id),
          ],
        );
      }
      if (audioIds.length > 0) {
        await engine.enqueue(tx, {
          kind: SyncJob.DeleteAudio,
          tenantId,
          payload: { audio_ids: audioIds.map((a) => a.id) },
          runAt: new Date(Date.now() + settings.audioRetentionMs),
        });
      }
      return out.parent;
    });
  } catch (err) {
    if (err instanceof Replay) {
      return replay(err.job); // the same key won a concurrent race
    }
    if (isMnemoError(err, ErrorCode.IdempotencyConflict) && options.idempotencyKey !== undefined) {
      // The engine compares whole batches, whose payloads name their own sync batch; the
      // request's hash is what decides.
      const existing = await engine.findByIdempotencyKey(tenantId, options.idempotencyKey);
      if (existing !== undefined) {
        return replay(existing);
      }
    }
    throw err;
  }
}

/** A conversation as `GET /v1/users/{id}/conversations` shows it. */
export interface ConversationView {
  id: string;
  started_at: string;
  finished_at: string;
  segment_ids: string[];
  summary: string | null;
}

/**
 * The statement of {@link listConversations}. Each condition only when asked for (see
 * Conditions): the plan kept for it bounds its scan of conversations_user_time_idx with the
 * cursor.
 */
export function conversationsPageQuery(
  tenantId: string,
  userId: string,
  page: Page,
): { text: string; params: unknown[] } {
  const where = new Conditions(
    [`c.tenant_id = $1`, `c.user_id = $2`],
    [tenantId, userId, page.limit + 1],
  );
  if (page.from !== undefined) {
    where.add((from) => `c.finished_at >= ${from}::timestamptz`, page.from);
  }
  if (page.to !== undefined) {
    where.add((to) => `c.started_at <= ${to}::timestamptz`, page.to);
  }
  if (page.cursor !== undefined) {
    const [us, id] = page.cursor.split('_');
    // Seconds and microseconds apart: a bigint times an interval goes through float8, exact
    // only up to 2^53 microseconds.
    where.add(
      (u, i) => `(c.started_at, c.id) > (timestamptz 'epoch'
        + (${u}::bigint / 1000000) * interval '1 second'
        + (${u}::bigint % 1000000) * interval '1 microsecond', ${i}::bigint)`,
      us,
      id,
    );
  }
  return {
    text: `select c.id::float8 as id, c.started_at, c.finished_at, c.summary,
             (extract(epoch from c.started_at) * 1000000)::bigint::text as started_us,
             (select array_agg(s.id order by s.started_at, s.id) from sync_segments s
               where s.conversation_id = c.id and s.tenant_id = c.tenant_id) as segment_ids
             from conversations c
            where ${where.sql}
            order by c.started_at, c.id limit $3`,
    params: where.params,
  };
}

/**
 * A page of the user's conversations overlapping [from, to], in time order (then id): at most
 * `limit`, after `cursor` (a previous page's `next_cursor`, null on the last page; it holds
 * the last one's start in microseconds, PostgreSQL's precision, and its id).
 */
export async function listConversations(
  q: Queryable,
  tenantId: string,
  userId: string,
  page: Page,
): Promise<{ items: ConversationView[]; next_cursor: string | null }> {
  const query = conversationsPageQuery(tenantId, userId, page);
  const rows = await q.query<{
    id: number;
    started_at: Date;
    started_us: string;
    finished_at: Date;
    summary: string | null;
    segment_ids: string[] | null;
  }>(query.text, query.params);
  const found = pageOf(rows, page.limit, (last) => `${last.started_us}_${last.id}`);
  return {
    items: found.rows.map((r) => ({
      id: conversationId(r.id),
      started_at: r.started_at.toISOString(),
      finished_at: r.finished_at.toISOString(),
      segment_ids: r.segment_ids ?? [],
      summary: r.summary,
    })),
    next_cursor: found.next_cursor,
  };
}

/** A segment the cursor reaches, as `advance` reads it. */
interface Waiting {
  id: string;
  state: string;
  started_at: string;
  ended_at: string;
}

/** A conversation while a run of segments is assigned: a stored one, or one to create. */
export interface Span {
  /** The stored id; undefined for a conversation this run creates (until it is inserted). */
  id: number | undefined;
  stored: boolean;
  /** Ties between equally close conversations go to the lower (older) one. */
  order: number;
  start: number;
  end: number;
  alive: boolean;
  into?: Span;
}

/** Follows merges to the conversation that absorbed `span` in the end. */
export function finalSpan(span: Span): Span {
  let s = span;
  while (s.into !== undefined) {
    s = s.into;
  }
  return s;
}

/**
 * Assigns `ready` (in time order) as if one by one: each segment joins the closest
 * conversation within the window and merges every other one within it into that one, or
 * starts a conversation. Pure: `stored` are the user's conversations the run can reach.
 */
export function cluster(
  stored: readonly { id: number; started_at: Date; finished_at: Date }[],
  ready: readonly { id: string; start: number; end: number }[],
  windowMs: number,
): { spans: Span[]; target: Map<string, Span> } {
  const spans: Span[] = stored.map((c) => ({
    id: c.id,
    stored: true,
    order: c.id,
    start: c.started_at.getTime(),
    end: c.finished_at.getTime(),
    alive: true,
  }));
  const target = new Map<string, Span>();
  for (const seg of ready) {
    const distance = (c: Span) => Math.max(c.start - seg.end, seg.start - c.end, 0);
    const near = spans
      .filter((c) => c.alive && distance(c) <= windowMs)
      .sort((a, b) => distance(a) - distance(b) || a.order - b.order);
    let into = near[0];
    if (into === undefined) {
      into = {
        id: undefined,
        stored: false,
        order: Number.MAX_SAFE_INTEGER - ready.length + spans.length,
        start: seg.start,
        end: seg.end,
        alive: true,
      };
      spans.push(into);
    }
    for (const other of near.slice(1)) {
      other.alive = false;
      other.into = into;
      into.start = Math.min(into.start, other.start);
      into.end = Math.max(into.end, other.end);
    }
    into.start = Math.min(into.start, seg.start);
    into.end = Math.max(into.end, seg.end);
    target.set(seg.id, into);
  }
  return { spans, target };
}

/**
 * Takes the user's lock (the `sync_users` row) until the transaction ends: one assignment of
 * this user at a time, whatever the batch or process. Every apply that writes a user's
 * segments or conversations takes it before any of their rows, so that none holds one of
 * those rows while waiting for the lock that another holds while wanting that row.
 */
async function lockUser(tx: Queryable, tenantId: string, userId: string): Promise<void> {
  await tx.query(
    `insert into sync_users (tenant_id, user_id) values ($1, $2)
     on conflict (tenant_id, user_id) do update set updated_at = now()`,
    [tenantId, userId],
  );
}

/**
 * Moves the batch's cursor over every consecutive finished segment, assigning the ready ones
 * with a few set-based statements, and adds the batch's summarize job once the cursor has
 * passed them all. The caller holds the user's lock ({@link lockUser}). `callTimeoutMs`: the
 * run limit a summary of one conversation gets. `cancelling`: the batch's last segments are
 * being cancelled, and a batch that ends so gets no summary (a cancel starts no new work).
 */
async function advance(
  tx: Queryable,
  engine: Engine,
  tenantId: string,
  userId: string,
  batchId: number,
  callTimeoutMs: number,
  cancelling = false,
): Promise<void> {
  // In one statement after the lock: the batch, the segments its cursor can pass (up to the
  // first one still being transcribed, included: it stops the cursor), and every conversation
  // those segments can reach, directly or through a merge — all overlap [first ready start −
  // window, last ready end + window]. (No row locks on them: every writer of a user's
  // conversation spans holds the user's lock.)
  const [batch] = await tx.query<{
    parent_id: number;
    merge_window_s: number;
    finalized: boolean;
    waiting: Waiting[];
    unprocessed: number;
    stored: { id: number; started_at: string; finished_at: string; segment_count: number }[];
  }>(
    `with w as (
       select s.id, s.ord, s.started_at, s.ended_at,
         -- A segment whose job ended without a result (cancelled, failed by the reaper)
         -- never gets one: the cursor passes it as failed.
         case when s.state = 'pending'
           and (select j.status from jobs j where j.id = s.job_id and j.tenant_id = s.tenant_id)
               in ('failed', 'cancelled')
           then 'failed' else s.state end as state
       from sync_segments s
       where s.batch_id = $1 and s.tenant_id = $2 and not s.processed
         and s.ord <= coalesce((select min(p.ord) from sync_segments p
                                 where p.batch_id = $1 and p.tenant_id = $2 and not p.processed
                                   and p.state = 'pending'
                                   and coalesce((select j.status from jobs j
                                                  where j.id = p.job_id), 'pending')
                                       not in ('failed', 'cancelled')), 2147483647)),
     r as (select min(started_at) as lo, max(ended_at) as hi from w where state = 'ready')
     select b.parent_id::float8 as parent_id, b.merge_window_s, b.finalized,
       (select coalesce(json_agg(json_build_object('id', w.id, 'state', w.state,
           'started_at', w.started_at, 'ended_at', w.ended_at) order by w.ord), '[]'::json)
          from w) as waiting,
       -- Every segment row of the batch counts once in total and once in the cursor when
       -- it is processed (below): no count of the rest at every advance.
       b.total - b.cursor as unprocessed,
       (select coalesce(json_agg(json_build_object('id', c.id, 'started_at', c.started_at,
           'finished_at', c.finished_at, 'segment_count', c.segment_count) order by c.id),
           '[]'::json)
          from conversations c, r
         where r.lo is not null and c.tenant_id = b.tenant_id and c.user_id = b.user_id
           and c.started_at <= r.hi + make_interval(secs => b.merge_window_s)
           and c.finished_at >= r.lo - make_interval(secs => b.merge_window_s)
           -- Implied by the line above (migration 0015); it bounds the index's range.
           and c.started_at >= r.lo - make_interval(secs => b.merge_window_s)
                 - (select u.longest_conversation from sync_users u
                     where u.tenant_id = b.tenant_id and u.user_id = b.user_id)) as stored
       from sync_batches b where b.id = $1 and b.tenant_id = $2 for update`,
    [batchId, tenantId],
  );
  if (batch === undefined || batch.finalized) {
    return;
  }
  const firstPending = batch.waiting.findIndex((w) => w.state === 'pending');
  const passed = firstPending < 0 ? batch.waiting : batch.waiting.slice(0, firstPending);
  if (passed.length === 0) {
    return; // the segment at the cursor is not finished: its job moves the cursor on
  }
  const ready = passed
    .filter((w) => w.state === 'ready')
    .map((w) => ({ id: w.id, start: Date.parse(w.started_at), end: Date.parse(w.ended_at) }));
  const windowMs = batch.merge_window_s * 1000;
  const assignedTo = new Map<string, number>();
  const created: number[] = [];
  const absorbed: number[] = [];
  let longest = 0; // ms: the longest conversation this advance writes
  if (ready.length > 0) {
    const stored = batch.stored.map((c) => ({
      id: c.id,
      started_at: new Date(c.started_at),
      finished_at: new Date(c.finished_at),
      segment_count: c.segment_count,
    }));
    const { spans, target } = cluster(stored, ready, windowMs);
    // Segments per conversation in the end: its own, those of what it absorbed, the new ones.
    const totals = new Map<Span, number>();
    const add = (span: Span, n: number) => {
      const f = finalSpan(span);
      totals.set(f, (totals.get(f) ?? 0) + n);
    };
    stored.forEach((c, i) => add(spans[i] as Span, c.segment_count));
    for (const span of target.values()) {
      add(span, 1);
    }
    const targets = new Set([...target.values()].map(finalSpan));
    const fresh = spans.filter((c) => !c.stored && c.alive);
    const freshIds =
      fresh.length === 0
        ? []
        : await tx.query<{ id: number }>(
            `insert into conversations (tenant_id, user_id, started_at, finished_at, segment_count)
             select $1, $2, c.s, c.f, c.n
             from unnest($3::timestamptz[], $4::timestamptz[], $5::int[]) with ordinality
               as c(s, f, n, i)
             order by c.i
             returning id::float8 as id`,
            [
              tenantId,
              userId,
              fresh.map((c) => new Date(c.start)),
              fresh.map((c) => new Date(c.end)),
              fresh.map((c) => totals.get(c) ?? 0),
            ],
          );
    fresh.forEach((c, i) => {
      c.id = freshIds[i]?.id;
      created.push(c.id ?? 0);
    });
    for (const [segment, span] of target) {
      assignedTo.set(segment, finalSpan(span).id ?? 0);
    }
    const gone = spans.filter((c) => c.stored && !c.alive);
    absorbed.push(...gone.map((c) => c.id ?? 0));
    if (gone.length > 0) {
      // The absorbed conversations' segments first: deleting one nulls what points at it.
      await tx.query(
        `update sync_segments g set conversation_id = m.target
           from unnest($1::bigint[], $2::bigint[]) as m(gone, target)
          where g.conversation_id = m.gone and g.tenant_id = $3`,
        [absorbed, gone.map((c) => finalSpan(c).id), tenantId],
      );
      await tx.query(`delete from conversations where tenant_id = $1 and id = any($2::bigint[])`, [
        tenantId,
        absorbed,
      ]);
    }
    const kept = spans.filter((c) => c.stored && c.alive && targets.has(c));
    longest = Math.max(0, ...[...fresh, ...kept].map((c) => c.end - c.start));
    if (kept.length > 0) {
      await tx.query(
        `update conversations c set started_at = u.s, finished_at = u.f, segment_count = u.n,
           updated_at = now()
           from unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::int[])
             as u(id, s, f, n)
          where c.tenant_id = $1 and c.id = u.id`,
        [
          tenantId,
          kept.map((c) => c.id),
          kept.map((c) => new Date(c.start)),
          kept.map((c) => new Date(c.end)),
          kept.map((c) => totals.get(c) ?? 0),
        ],
      );
    }
  }
  const touched = [...new Set(assignedTo.values())];
  const done = passed.length === batch.unprocessed;
  await tx.query(
    `with longest as (
       update sync_users set longest_conversation =
         greatest(longest_conversation, $13::bigint * interval '1 millisecond')
        where tenant_id = $2 and user_id = $3 and $13::bigint > 0
        returning 1),
     seg as (
       update sync_segments g set processed = true,
         -- Still pending here means its job ended without a result (cancelled, reaped).
         reason = case when g.state = 'pending'
           then 'its transcription job ended without a result' else g.reason end,
         state = case when g.state = 'ready' then 'assigned'
           when g.state = 'pending' then 'failed' else g.state end,
         conversation_id = coalesce(u.conversation, g.conversation_id)
         from unnest($4::text[], $5::bigint[]) as u(id, conversation)
        where g.tenant_id = $2 and g.user_id = $3 and g.id = u.id
        returning 1)
     update sync_batches set cursor = cursor + (select count(*) from seg)::int,
       assigned = assigned + $6, skipped = skipped + $7, failed = failed + $8,
       created = array(select distinct x from unnest(created || $10::bigint[]) x
                       where x <> all($11::bigint[])),
       touched = array(select distinct x from unnest(touched || $9::bigint[]) x
                       where x <> all($11::bigint[])),
       finalized = $12
      where id = $1 and tenant_id = $2`,
    [
      batchId,
      tenantId,
      userId,
      passed.map((w) => w.id),
      passed.map((w) => assignedTo.get(w.id) ?? null),
      ready.length,
      passed.filter((w) => w.state === 'skipped').length,
      passed.filter((w) => w.state === 'failed').length,
      touched,
      created,
      absorbed,
      done,
      longest,
    ],
  );
  if (done) {
    // The counts are the batch's result from now on; the summaries add nothing to them.
    const { parent_id: _parent, ...result } = await readResult(tx, tenantId, batchId);
    await engine.setParentResult(tx, tenantId, batch.parent_id, result);
    const conversationCount =
      result.conversations.created.length + result.conversations.merged.length;
    if (conversationCount === 0 || cancelling) {
      return; // nothing to summarize (every segment failed or was silent), or cancelled
    }
    await engine.addChild(tx, batch.parent_id, {
      kind: SyncJob.Summarize,
      tenantId,
      lane: summaryLane(userId),
      payload: { user_id: userId, batch_id: batchId },
      // One model call per conversation, one after another: the run limit is one call's
      // for each (a day at most), or a backlog of many conversations could never finish.
      timeoutMs: Math.min(callTimeoutMs * Math.max(1, conversationCount), 86_400_000),
    });
  }
}

/** A batch's result: its counts, and its conversations that still exist. */
async function readResult(
  q: Queryable,
  tenantId: string,
  batchId: number,
): Promise<SyncResult & { parent_id: number }> {
  const [batch] = await q.query<{
    parent_id: number;
    created: number[];
    merged: number[];
    assigned: number;
    skipped: number;
    duplicate: number;
    failed: number;
  }>(
    `select parent_id::float8 as parent_id,
       array(select x::float8 from unnest(created) x
              where exists (select 1 from conversations c where c.id = x) order by x) as created,
       array(select x::float8 from unnest(touched) x
              where x <> all(created)
                and exists (select 1 from conversations c where c.id = x) order by x) as merged,
       assigned, skipped, duplicate, failed
       from sync_batches where id = $1 and tenant_id = $2`,
    [batchId, tenantId],
  );
  if (batch === undefined) {
    throw new MnemoError(ErrorCode.Internal, `sync batch ${batchId} is gone`);
  }
  return {
    parent_id: batch.parent_id,
    conversations: {
      created: batch.created.map(conversationId),
      merged: batch.merged.map(conversationId),
    },
    segments: {
      assigned: batch.assigned,
      skipped: batch.skipped,
      duplicate: batch.duplicate,
      failed: batch.failed,
    },
  };
}

/** The least delay before kept audio is looked at again (see sync.delete_audio). */
const AUDIO_RECHECK_MIN_MS = 5000;

/** Registers the sync jobs with the engine. */
export function registerSyncJobs(
  engine: Engine,
  store: Store,
  extractor: Extractor,
  transcriber: Transcriber | undefined,
  settings: SyncSettings,
): void {
  if (settings.retainMs !== undefined) {
    // An upload's operation finishes when all its jobs have; none of them runs again, and
    // only they move its cursor, which is what reads their status. The batch's counts, its
    // conversations and the segment ledger are rows of their own. (A cancelled upload settles
    // the segments it never transcribed as failed; their audio is deleted all the same: see
    // sync.delete_audio.)
    engine.retain(SyncJob.Batch, settings.retainMs);
    engine.retain(SyncJob.DeleteAudio, settings.retainMs);
  }
  /**
   * Records a segment's outcome and moves its batch's cursor (the user's lock inside);
   * `cancelling` when the segment's job is being cancelled (see {@link advance}).
   */
  async function settle(
    tx: Queryable,
    ctx: { tenantId: string; payload: SegmentPayload },
    result: Transcribed,
    cancelling = false,
  ): Promise<void> {
    const { user_id: userId, batch_id: batchId, segment_id: segmentId } = ctx.payload;
    // The user's deletion gate before any row; a deletion applied since deleted the batch,
    // and then nothing of the user is written again (not even the lock row).
    await enterUserGate(tx, ctx.tenantId, userId, 'shared');
    const [batch] = await tx.query(
      `select 1 from sync_batches where tenant_id = $1 and user_id = $2 and id = $3`,
      [ctx.tenantId, userId, batchId],
    );
    if (batch === undefined) {
      return;
    }
    // The lock before the segment's row: advance, under the lock, writes other segments.
    await lockUser(tx, ctx.tenantId, userId);
    await tx.query(
      `update sync_segments set state = $5, transcript = coalesce($6, transcript), reason = $7
        where tenant_id = $1 and user_id = $2 and id = $3 and batch_id = $4
          and state = 'pending'`,
      [
        ctx.tenantId,
        userId,
        segmentId,
        batchId,
        result.state,
        result.state === 'ready' ? result.text : null,
        result.state === 'ready' ? null : result.reason,
      ],
    );
    await advance(tx, engine, ctx.tenantId, userId, batchId, settings.timeoutMs, cancelling);
  }

  engine.register<SegmentPayload, Transcribed>(SyncJob.Segment, {
    lockKey: userLockKey,
    timeoutMs: settings.timeoutMs,
    maxAttempts: 3,
    backoff: { baseMs: 500, maxMs: 10_000 },
    async compute(ctx): Promise<Transcribed> {
      try {
        return await transcribeSegment(ctx);
      } catch (err) {
        const retry = !(isMnemoError(err) && !err.retryable) && ctx.attempt < ctx.maxAttempts;
        if (retry || ctx.signal.aborted) {
          throw err; // the engine retries (or the worker is stopping, or the run timed out)
        }
        // The segment fails; the batch goes on without it.
        return {
          state: 'failed',
          reason: err instanceof Error ? err.message : 'transcription failed',
        };
      }
    },
    async apply(tx, result, ctx) {
      await settle(tx, ctx, result);
      return result.state === 'ready'
        ? { segment_id: ctx.payload.segment_id, state: 'ready' }
        : { segment_id: ctx.payload.segment_id, ...result };
    },
    // The job failed for good (a run timeout on its last attempt, an apply that kept
    // failing): the segment releases its turn as failed, so the batch goes on.
    async onFailure(tx, error, ctx) {
      await settle(tx, ctx, { state: 'failed', reason: error.message });
    },
    // Cancelled while pending (alone, or with its upload): the segment is settled as failed
    // now, so that the cursor can pass it and re-sending it takes it again. Nothing else would
    // move the cursor if every later segment had settled already.
    async onCancel(tx, ctx) {
      await settle(
        tx,
        ctx,
        { state: 'failed', reason: 'its transcription job was cancelled' },
        true,
      );
    },
  });

  async function transcribeSegment(ctx: {
    tenantId: string;
    payload: SegmentPayload;
    signal: AbortSignal;
  }): Promise<Transcribed> {
    const [row] = await store.query<{ transcript: string | null; wav: Uint8Array | null }>(
      `select s.transcript, a.wav from sync_segments s
         left join sync_audio a on a.id = s.audio_id and a.tenant_id = s.tenant_id
        where s.tenant_id = $1 and s.user_id = $2 and s.id = $3`,
      [ctx.tenantId, ctx.payload.user_id, ctx.payload.segment_id],
    );
    if (row === undefined) {
      return { state: 'skipped', reason: 'the segment was deleted' };
    }
    if (row.transcript !== null) {
      return row.transcript.trim() === ''
        ? { state: 'skipped', reason: 'empty transcript' }
        : { state: 'ready', text: row.transcript };
    }
    if (row.wav === null) {
      return { state: 'failed', reason: 'the audio was deleted before it was transcribed' };
    }
    // PGlite hands bytea over as a Uint8Array, pg as a Buffer.
    const wav = Buffer.from(row.wav);
    let silent: boolean;
    try {
      silent = isSilent(parseWav(wav));
    } catch (err) {
      return { state: 'failed', reason: (err as Error).message };
    }
    if (silent) {
      return { state: 'skipped', reason: 'silent audio' };
    }
    if (transcriber === undefined) {
      return {
        state: 'failed',
        reason: 'no transcriber is configured (set MNEMO_STT_BASE_URL and MNEMO_STT_MODEL)',
      };
    }
    const text = await transcriber.transcribe(wav, ctx.signal);
    return text.trim() === ''
      ? { state: 'skipped', reason: 'empty transcription' }
      : { state: 'ready', text };
  }

  engine.register<BatchPayload, Map<number, string>>(SyncJob.Summarize, {
    lockKey: userLockKey,
    timeoutMs: settings.timeoutMs,
    maxAttempts: 3,
    async compute(ctx) {
      const rows = await store.query<{ id: number; transcripts: string[] }>(
        `select c.id::float8 as id,
           array(select s.transcript from sync_segments s
                  where s.conversation_id = c.id and s.tenant_id = c.tenant_id
                    and s.transcript is not null
                  order by s.started_at, s.id) as transcripts
           from sync_batches b
           join conversations c on c.id = any(b.touched) and c.tenant_id = b.tenant_id
          where b.id = $1 and b.tenant_id = $2`,
        [ctx.payload.batch_id, ctx.tenantId],
      );
      const summaries = new Map<number, string>();
      try {
        for (const row of rows) {
          summaries.set(
            row.id,
            await extractor.summarize(
              row.transcripts.map((content) => ({ role: 'user' as const, content })),
              ctx.signal,
            ),
          );
        }
      } catch (err) {
        if (ctx.attempt < ctx.maxAttempts || ctx.signal.aborted) {
          throw err;
        }
        // The last attempt: the batch is done without summaries rather than failed.
        return new Map();
      }
      return summaries;
    },
    async apply(tx, summaries, ctx): Promise<SyncResult | { skipped: string }> {
      // The lock before the conversations: a later batch's cursor, under it, merges them.
      // (Locked, not upserted: the user may have been deleted since, lock row and all.)
      await tx.query(`select 1 from sync_users where tenant_id = $1 and user_id = $2 for update`, [
        ctx.tenantId,
        ctx.payload.user_id,
      ]);
      const [batch] = await tx.query(
        `select 1 from sync_batches where tenant_id = $1 and user_id = $2 and id = $3`,
        [ctx.tenantId, ctx.payload.user_id, ctx.payload.batch_id],
      );
      if (batch === undefined) {
        // Deleted with its user since the upload, conversations and all.
        return { skipped: 'the user was deleted' };
      }
      const ids = [...summaries.keys()];
      await tx.query(
        `update conversations c set summary = s.summary, summary_count = c.summary_count + 1,
           updated_at = now()
           from unnest($2::bigint[], $3::text[]) as s(id, summary)
          where c.id = s.id and c.tenant_id = $1`,
        [ctx.tenantId, ids, ids.map((id) => summaries.get(id) ?? '')],
      );
      const { parent_id: parentId, ...result } = await readResult(
        tx,
        ctx.tenantId,
        ctx.payload.batch_id,
      );
      await engine.setParentResult(tx, ctx.tenantId, parentId, result);
      return result;
    },
  });

  engine.register<AudioPayload, void>(SyncJob.DeleteAudio, {
    maxAttempts: 10,
    // Audio still waiting for its transcription is kept, and looked at again one retention
    // delay later (5 s at least: with a retention of 0 it would be looked at again at once,
    // job after job, for as long as the transcription runs): deletion never beats the
    // transcription. A segment whose job ended without settling it (failed by the reaper,
    // or gone with its finished upload) waits for nothing; a cancelled one is settled failed.
    async apply(tx, _none, ctx) {
      const gone = await tx.query<{ id: number }>(
        `delete from sync_audio a where a.tenant_id = $1 and a.id = any($2::bigint[])
           and not exists (select 1 from sync_segments s
                            where s.audio_id = a.id and s.state = 'pending'
                              and s.tenant_id = a.tenant_id and s.user_id = a.user_id
                              and exists (select 1 from jobs j
                                           where j.id = s.job_id and j.tenant_id = s.tenant_id
                                             and j.status in ('pending', 'running')))
         returning id::float8 as id`,
        [ctx.tenantId, ctx.payload.audio_ids],
      );
      const kept = await tx.query<{ id: number }>(
        `select id::float8 as id from sync_audio where tenant_id = $1 and id = any($2::bigint[])`,
        [ctx.tenantId, ctx.payload.audio_ids],
      );
      if (kept.length > 0) {
        await engine.enqueue(tx, {
          kind: SyncJob.DeleteAudio,
          tenantId: ctx.tenantId,
          payload: { audio_ids: kept.map((k) => k.id) },
          runAt: new Date(Date.now() + Math.max(settings.audioRetentionMs, AUDIO_RECHECK_MIN_MS)),
        });
      }
      return { deleted: gone.length, kept: kept.length };
    },
  });
}
