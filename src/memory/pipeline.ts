import type { Engine, JobContext } from '../engine/index.ts';
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

async function writeProfile(tx: Queryable, ctx: JobContext<IngestPayload>, found: Extraction) {
  const { tenantId } = ctx;
  const userId = ctx.payload.user_id;
  const keys = Object.keys(found.set);
  if (keys.length > 0) {
    await tx.query(
      `insert into profile_attributes (tenant_id, user_id, key, value, operation_id)
       select $1, $2, k, v, $5 from unnest($3::text[], $4::text[]) as a(k, v)
       on conflict (tenant_id, user_id, key)
       do update set value = excluded.value, operation_id = excluded.operation_id, updated_at = now()`,
      [tenantId, userId, keys, keys.map((k) => found.set[k] ?? ''), ctx.id],
    );
  }
  if (found.unset.length > 0) {
    await tx.query(
      'delete from profile_attributes where tenant_id = $1 and user_id = $2 and key = any($3::text[])',
      [tenantId, userId, found.unset],
    );
  }
}

async function writeMemories(
  tx: Queryable,
  ctx: JobContext<IngestPayload>,
  texts: readonly string[],
) {
  if (texts.length === 0) {
    return { added: [], duplicates: 0 };
  }
  const rows = await tx.query<{ id: number; text: string }>(
    `insert into memories (tenant_id, user_id, text, norm, source, operation_id, occurred_at)
     select $1, $2, t, n, $5, $6, $7::timestamptz from unnest($3::text[], $4::text[]) with ordinality as m(t, n, i)
     order by i
     on conflict (tenant_id, user_id, norm) do nothing
     returning id, text`,
    [
      ctx.tenantId,
      ctx.payload.user_id,
      texts,
      texts.map(normalizeText),
      ctx.payload.source ?? null,
      ctx.id,
      ctx.payload.occurred_at ?? null,
    ],
  );
  return {
    added: rows.map((r) => ({ id: `mem_${r.id}`, text: r.text })),
    duplicates: texts.length - rows.length,
  };
}

async function writeEvents(
  tx: Queryable,
  ctx: JobContext<IngestPayload>,
  events: Extraction['events'],
) {
  if (events.length === 0) {
    return { added: [], duplicates: 0 };
  }
  const rows = await tx.query<{ id: number; date: string; description: string }>(
    `insert into events (tenant_id, user_id, date, description, norm, operation_id)
     select $1, $2, d::date, t, n, $6 from unnest($3::text[], $4::text[], $5::text[]) with ordinality as e(d, t, n, i)
     order by i
     on conflict (tenant_id, user_id, date, norm) do nothing
     returning id, date::text as date, description`,
    [
      ctx.tenantId,
      ctx.payload.user_id,
      events.map((e) => e.date),
      events.map((e) => e.description),
      events.map((e) => normalizeText(e.description)),
      ctx.id,
    ],
  );
  return {
    added: rows.map((r) => ({ id: `evt_${r.id}`, date: r.date, description: r.description })),
    duplicates: events.length - rows.length,
  };
}

/** The deterministic summary text: profile, then the latest facts. */
async function writeSummary(tx: Queryable, ctx: JobContext<IngestPayload>): Promise<number> {
  const { tenantId } = ctx;
  const userId = ctx.payload.user_id;
  const [row] = await tx.query<{ turn_count: number }>(
    `insert into user_summaries as s (tenant_id, user_id, turn_count, last_ingested_at, text)
     values ($1, $2, 1, now(), '')
     on conflict (tenant_id, user_id)
     do update set turn_count = s.turn_count + 1, last_ingested_at = now()
     returning turn_count`,
    [tenantId, userId],
  );
  await tx.query(
    `update user_summaries set text = concat_ws(' ',
        (select 'Profile: ' || string_agg(key || ' = ' || value, '; ' order by key) || '.'
           from profile_attributes where tenant_id = $1 and user_id = $2),
        (select 'Recent: ' || string_agg(text, '; ' order by id desc) || '.'
           from (select id, text from memories where tenant_id = $1 and user_id = $2
                 order by id desc limit 5) m))
      where tenant_id = $1 and user_id = $2`,
    [tenantId, userId],
  );
  return row?.turn_count ?? 0;
}

/** Registers the memory jobs with the engine. */
export function registerMemoryJobs(
  engine: Engine,
  extractor: Extractor,
  options: { timeoutMs?: number } = {},
): void {
  engine.register<IngestPayload, Extraction>(MemoryJob.Ingest, {
    timeoutMs: options.timeoutMs ?? 60_000,
    maxAttempts: 3,
    compute: (ctx) =>
      extractor.extract(
        {
          userQuery: ctx.payload.user_query,
          agentResponse: ctx.payload.agent_response,
          occurredAt: ctx.payload.occurred_at,
        },
        ctx.signal,
      ),
    async apply(tx, found, ctx): Promise<IngestResult> {
      // The lane makes this the only writer of this user's memory right now, and the
      // lease check before apply makes it the only attempt whose writes commit.
      await writeProfile(tx, ctx, found);
      const memories = await writeMemories(tx, ctx, found.memories);
      const events = await writeEvents(tx, ctx, found.events);
      await tx.query(
        `insert into turns (tenant_id, user_id, user_query, agent_response, source, session_id, operation_id, occurred_at)
         values ($1, $2, $3, $4, $5, $6, $7, coalesce($8::timestamptz, now()))`,
        [
          ctx.tenantId,
          ctx.payload.user_id,
          ctx.payload.user_query,
          ctx.payload.agent_response ?? null,
          ctx.payload.source ?? null,
          ctx.payload.session_id ?? null,
          ctx.id,
          ctx.payload.occurred_at ?? null,
        ],
      );
      const turnCount = await writeSummary(tx, ctx);
      return {
        memories,
        profile: { set: found.set, unset: found.unset },
        events,
        summary: { turn_count: turnCount },
      };
    },
  });

  engine.register<{ user_id: string }, void>(MemoryJob.DeleteUser, {
    maxAttempts: 5,
    async apply(tx, _none, ctx) {
      const args = [ctx.tenantId, ctx.payload.user_id];
      const counts: Record<string, number> = {};
      for (const table of ['memories', 'profile_attributes', 'events', 'turns', 'user_summaries']) {
        const rows = await tx.query<{ n: number }>(
          `with gone as (delete from ${table} where tenant_id = $1 and user_id = $2 returning 1)
           select count(*)::int as n from gone`,
          args,
        );
        counts[table] = rows[0]?.n ?? 0;
      }
      return { deleted: counts };
    },
  });
}
