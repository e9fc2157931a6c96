/**
 * Offline sync: a device uploads timestamped segments; each is transcribed in parallel (a
 * laneless job per segment) and assigned to the user's conversations in started_at order.
 *
 * Order without waiting: every batch has a durable cursor over its segments in time order.
 * When a segment's job finishes (text, silence, empty or failed), its apply takes the user's
 * lock (the `sync_users` row) and moves the cursor over every consecutive finished segment,
 * assigning each in turn; a segment not finished yet stops it, and the job that finishes that
 * segment moves it on. A segment within the merge window of conversations joins the closest
 * and merges the others into it, so the result does not depend on which batch got the lock
 * first. When the cursor has passed every segment, a summarize job (in the user's lane) is
 * added to the batch: every conversation the batch touched is summarized once.
 */
import { ErrorCode, isMnemoError, MnemoError } from '../core/errors.ts';
import type { Engine, Job } from '../engine/index.ts';
import { userLane } from '../memory/pipeline.ts';
import type { Extractor } from '../memory/types.ts';
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
      const [batch] = await tx.query<{ id: number }>(
        `insert into sync_batches (tenant_id, user_id, merge_window_s) values ($1, $2, $3)
         returning id::float8 as id`,
        [tenantId, userId, options.mergeWindowS],
      );
      const batchId = batch?.id ?? 0;
      const fresh = await tx.query<{ id: string; started_at: Date }>(
        `insert into sync_segments (tenant_id, user_id, id, batch_id, ord, started_at, ended_at,
           transcript)
         select $1, $2, s.id, $3, 0, s.started_at, s.ended_at, s.transcript
         from unnest($4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[])
           with ordinality as s(id, started_at, ended_at, transcript, i)
         order by s.i
         on conflict (tenant_id, user_id, id) do nothing
         returning id, started_at`,
        [
          tenantId,
          userId,
          batchId,
          byId.map((s) => s.id),
          byId.map((s) => s.started_at),
          byId.map((s) => s.ended_at),
          byId.map((s) => s.transcript ?? null),
        ],
      );
      // The cursor's order: started_at, then id.
      const ordered = fresh.sort(
        (a, b) =>
          a.started_at.getTime() - b.started_at.getTime() ||
          (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
      );
      const withAudio = ordered.filter((s) => audio.has(s.id));
      const audioIds = await tx.query<{ id: number }>(
        `insert into sync_audio (tenant_id, user_id, wav)
         select $1, $2, w from unnest($3::bytea[]) with ordinality as a(w, i) order by a.i
         returning id::float8 as id`,
        [tenantId, userId, withAudio.map((s) => audio.get(s.id))],
      );
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
          ordered.map((s) => {
            const k = withAudio.indexOf(s);
            return k < 0 ? null : (audioIds[k]?.id ?? null);
          }),
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
                lane: userLane(userId),
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
          where id = $1`,
        [batchId, out.parent.id, ordered.length, duplicate],
      );
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
      return err.job;
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

/** The user's conversations overlapping [from, to], in time order. */
export async function listConversations(
  q: Queryable,
  tenantId: string,
  userId: string,
  from?: string,
  to?: string,
): Promise<{ items: ConversationView[] }> {
  const rows = await q.query<{
    id: number;
    started_at: Date;
    finished_at: Date;
    summary: string | null;
    segment_ids: string[] | null;
  }>(
    `select c.id::float8 as id, c.started_at, c.finished_at, c.summary,
       (select array_agg(s.id order by s.started_at, s.id) from sync_segments s
         where s.conversation_id = c.id) as segment_ids
       from conversations c
      where c.tenant_id = $1 and c.user_id = $2
        and ($3::timestamptz is null or c.finished_at >= $3)
        and ($4::timestamptz is null or c.started_at <= $4)
      order by c.started_at, c.id`,
    [tenantId, userId, from ?? null, to ?? null],
  );
  return {
    items: rows.map((r) => ({
      id: conversationId(r.id),
      started_at: r.started_at.toISOString(),
      finished_at: r.finished_at.toISOString(),
      segment_ids: r.segment_ids ?? [],
      summary: r.summary,
    })),
  };
}

interface Cursor {
  parent_id: number;
  merge_window_s: number;
  finalized: boolean;
}

/**
 * Assigns one segment: joins the closest conversation within the merge window and merges
 * every other one within it into that one, or starts a conversation.
 */
async function assign(
  tx: Queryable,
  tenantId: string,
  userId: string,
  segment: { id: string; started_at: Date; ended_at: Date },
  windowS: number,
): Promise<{ conversation: number; created: boolean; absorbed: number[] }> {
  const near = await tx.query<{ id: number }>(
    `select c.id::float8 as id from conversations c
      where c.tenant_id = $1 and c.user_id = $2
        and c.started_at <= $4::timestamptz + make_interval(secs => $5)
        and c.finished_at >= $3::timestamptz - make_interval(secs => $5)
      order by greatest(extract(epoch from c.started_at - $4::timestamptz),
                        extract(epoch from $3::timestamptz - c.finished_at), 0), c.id
      for update`,
    [tenantId, userId, segment.started_at, segment.ended_at, windowS],
  );
  const [closest, ...others] = near.map((c) => c.id);
  if (closest === undefined) {
    const [created] = await tx.query<{ id: number }>(
      `insert into conversations (tenant_id, user_id, started_at, finished_at, segment_count)
       values ($1, $2, $3, $4, 1) returning id::float8 as id`,
      [tenantId, userId, segment.started_at, segment.ended_at],
    );
    const id = created?.id ?? 0;
    await tx.query(
      `update sync_segments set conversation_id = $4
        where tenant_id = $1 and user_id = $2 and id = $3`,
      [tenantId, userId, segment.id, id],
    );
    return { conversation: id, created: true, absorbed: [] };
  }
  if (others.length > 0) {
    // The others' segments first: deleting a conversation nulls what still points at it.
    await tx.query(
      `update sync_segments set conversation_id = $2 where conversation_id = any($1::bigint[])`,
      [others, closest],
    );
  }
  await tx.query(
    `with gone as (
       delete from conversations where id = any($2::bigint[]) and tenant_id = $1
       returning started_at, finished_at, segment_count)
     update conversations c set
       started_at = least(c.started_at, $4::timestamptz, (select min(started_at) from gone)),
       finished_at = greatest(c.finished_at, $5::timestamptz, (select max(finished_at) from gone)),
       segment_count = c.segment_count + 1 + coalesce((select sum(segment_count) from gone), 0),
       updated_at = now()
      where c.id = $3`,
    [tenantId, others, closest, segment.started_at, segment.ended_at],
  );
  await tx.query(
    `update sync_segments set conversation_id = $4
      where tenant_id = $1 and user_id = $2 and id = $3`,
    [tenantId, userId, segment.id, closest],
  );
  return { conversation: closest, created: false, absorbed: others };
}

/**
 * Moves the batch's cursor over every consecutive finished segment, under the user's lock,
 * and adds the batch's summarize job once the cursor has passed them all.
 */
async function advance(
  tx: Queryable,
  engine: Engine,
  tenantId: string,
  userId: string,
  batchId: number,
): Promise<void> {
  // The user's lock: one assignment of this user at a time, whatever the batch or process.
  await tx.query(
    `insert into sync_users (tenant_id, user_id) values ($1, $2)
     on conflict (tenant_id, user_id) do update set updated_at = now()`,
    [tenantId, userId],
  );
  const [batch] = await tx.query<Cursor>(
    `select parent_id::float8 as parent_id, merge_window_s, finalized from sync_batches
      where id = $1 and tenant_id = $2 for update`,
    [batchId, tenantId],
  );
  if (batch === undefined || batch.finalized) {
    return;
  }
  const waiting = await tx.query<{
    id: string;
    state: string;
    started_at: Date;
    ended_at: Date;
  }>(
    `select id, state, started_at, ended_at from sync_segments
      where batch_id = $1 and not processed order by ord`,
    [batchId],
  );
  let assigned = 0;
  let skipped = 0;
  let failed = 0;
  const passed: string[] = [];
  const created: number[] = [];
  const touched: number[] = [];
  const absorbed: number[] = [];
  for (const segment of waiting) {
    if (segment.state === 'pending') {
      break; // its job will move the cursor on
    }
    passed.push(segment.id);
    if (segment.state === 'ready') {
      const out = await assign(tx, tenantId, userId, segment, batch.merge_window_s);
      assigned += 1;
      touched.push(out.conversation);
      absorbed.push(...out.absorbed);
      if (out.created) {
        created.push(out.conversation);
      }
    } else if (segment.state === 'failed') {
      failed += 1;
    } else {
      skipped += 1;
    }
  }
  if (passed.length === 0) {
    return;
  }
  const done = passed.length === waiting.length;
  await tx.query(
    `with seg as (
       update sync_segments set processed = true,
         state = case when state = 'ready' then 'assigned' else state end
        where tenant_id = $2 and user_id = $3 and id = any($4::text[]) returning 1)
     update sync_batches set cursor = cursor + $5, assigned = assigned + $6,
       skipped = skipped + $7, failed = failed + $8,
       created = array(select distinct x from unnest(created || $9::bigint[]) x
                       where x <> all($11::bigint[])),
       touched = array(select distinct x from unnest(touched || $10::bigint[]) x
                       where x <> all($11::bigint[])),
       finalized = $12
      where id = $1`,
    [
      batchId,
      tenantId,
      userId,
      passed,
      passed.length,
      assigned,
      skipped,
      failed,
      created,
      touched,
      absorbed,
      done,
    ],
  );
  if (done) {
    await engine.addChild(tx, batch.parent_id, {
      kind: SyncJob.Summarize,
      tenantId,
      lane: userLane(userId),
      payload: { user_id: userId, batch_id: batchId },
    });
  }
}

/** Registers the sync jobs with the engine. */
export function registerSyncJobs(
  engine: Engine,
  store: Store,
  extractor: Extractor,
  transcriber: Transcriber | undefined,
  settings: SyncSettings,
): void {
  engine.register<SegmentPayload, Transcribed>(SyncJob.Segment, {
    timeoutMs: settings.timeoutMs,
    maxAttempts: 3,
    backoff: { baseMs: 500, maxMs: 10_000 },
    async compute(ctx): Promise<Transcribed> {
      const [row] = await store.query<{ transcript: string | null; wav: Uint8Array | null }>(
        `select s.transcript, a.wav from sync_segments s left join sync_audio a on a.id = s.audio_id
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
      try {
        const text = await transcriber.transcribe(wav, ctx.signal);
        return text.trim() === ''
          ? { state: 'skipped', reason: 'empty transcription' }
          : { state: 'ready', text };
      } catch (err) {
        const retry = isMnemoError(err) && err.retryable && ctx.attempt < ctx.maxAttempts;
        if (retry || ctx.signal.aborted) {
          throw err; // the engine retries (or the worker is stopping)
        }
        // The segment fails; the batch goes on without it.
        return {
          state: 'failed',
          reason: err instanceof Error ? err.message : 'transcription failed',
        };
      }
    },
    async apply(tx, result, ctx) {
      const { user_id: userId, batch_id: batchId, segment_id: segmentId } = ctx.payload;
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
      await advance(tx, engine, ctx.tenantId, userId, batchId);
      return result.state === 'ready'
        ? { segment_id: segmentId, state: 'ready' }
        : { segment_id: segmentId, ...result };
    },
  });

  engine.register<BatchPayload, Map<number, string>>(SyncJob.Summarize, {
    timeoutMs: settings.timeoutMs,
    maxAttempts: 3,
    async compute(ctx) {
      const rows = await store.query<{ id: number; transcripts: string[] }>(
        `select c.id::float8 as id,
           array(select s.transcript from sync_segments s
                  where s.conversation_id = c.id and s.transcript is not null
                  order by s.started_at, s.id) as transcripts
           from sync_batches b join conversations c on c.id = any(b.touched)
          where b.id = $1 and b.tenant_id = $2`,
        [ctx.payload.batch_id, ctx.tenantId],
      );
      const summaries = new Map<number, string>();
      for (const row of rows) {
        summaries.set(
          row.id,
          await extractor.summarize(
            row.transcripts.map((content) => ({ role: 'user' as const, content })),
            ctx.signal,
          ),
        );
      }
      return summaries;
    },
    async apply(tx, summaries, ctx): Promise<SyncResult> {
      const ids = [...summaries.keys()];
      await tx.query(
        `update conversations c set summary = s.summary, summary_count = c.summary_count + 1,
           updated_at = now()
           from unnest($2::bigint[], $3::text[]) as s(id, summary)
          where c.id = s.id and c.tenant_id = $1`,
        [ctx.tenantId, ids, ids.map((id) => summaries.get(id) ?? '')],
      );
      const [batch] = await tx.query<{
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
        [ctx.payload.batch_id, ctx.tenantId],
      );
      if (batch === undefined) {
        throw new MnemoError(ErrorCode.Internal, `sync batch ${ctx.payload.batch_id} is gone`);
      }
      const result: SyncResult = {
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
      await engine.setParentResult(tx, ctx.tenantId, batch.parent_id, result);
      return result;
    },
  });

  engine.register<{ audio_ids: number[] }, void>(SyncJob.DeleteAudio, {
    maxAttempts: 10,
    async apply(tx, _none, ctx) {
      const [row] = await tx.query<{ n: number }>(
        `with gone as (delete from sync_audio where tenant_id = $1 and id = any($2::bigint[])
           returning 1)
         select count(*)::int as n from gone`,
        [ctx.tenantId, ctx.payload.audio_ids],
      );
      return { deleted: row?.n ?? 0 };
    },
  });
}
