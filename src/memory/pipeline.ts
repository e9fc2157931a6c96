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

// Every write of one ingest in one statement (the profile, facts and events with their
// dedup keys, the turn, the turn count): one round trip inside the job's completion
// transaction. The summary text is derived when read (readProfile), not stored.
const WRITE_TURN_SQL = `with
  profile_set as (
    insert into profile_attributes (tenant_id, user_id, key, value, operation_id)
    select $1, $2, k, v, $3 from unnest($4::text[], $5::text[]) as a(k, v)
    on conflict (tenant_id, user_id, key)
    do update set value = excluded.value, operation_id = excluded.operation_id, updated_at = now()
    returning key),
  profile_unset as (
    delete from profile_attributes
    where tenant_id = $1 and user_id = $2 and key = any($6::text[]) returning key),
  facts as (
    insert into memories (tenant_id, user_id, text, norm, source, operation_id, occurred_at)
    select $1, $2, t, n, $9, $3, $10::timestamptz
    from unnest($7::text[], $8::text[]) with ordinality as m(t, n, i) order by i
    on conflict (tenant_id, user_id, norm_key) do nothing
    returning id, text),
  dated as (
    insert into events (tenant_id, user_id, date, description, norm, operation_id)
    select $1, $2, d::date, t, n, $3
    from unnest($11::text[], $12::text[], $13::text[]) with ordinality as e(d, t, n, i) order by i
    on conflict (tenant_id, user_id, date, norm_key) do nothing
    returning id, date::text as date, description),
  turn as (
    insert into turns (tenant_id, user_id, user_query, agent_response, source, session_id,
      operation_id, occurred_at)
    values ($1, $2, $14, $15, $9, $16, $3, coalesce($10::timestamptz, now()))
    returning id),
  summary as (
    insert into user_summaries as s (tenant_id, user_id, turn_count, last_ingested_at)
    values ($1, $2, 1, now())
    on conflict (tenant_id, user_id)
    do update set turn_count = s.turn_count + 1, last_ingested_at = now()
    returning turn_count)
  select
    (select coalesce(json_agg(json_build_object('id', 'mem_' || f.id, 'text', f.text) order by f.id), '[]'::json) from facts f) as facts,
    (select coalesce(json_agg(json_build_object('id', 'evt_' || d.id, 'date', d.date, 'description', d.description) order by d.id), '[]'::json) from dated d) as events,
    (select turn_count from summary) as turn_count`;

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
 * Writes one turn's extraction — profile, facts, events, the turn, the turn count — in one
 * statement. Runs in the apply transaction of a job of the user's lane (ingest, session
 * commit), which makes it the only writer of this user's memory at that moment.
 */
export async function writeTurn(
  tx: Queryable,
  target: TurnTarget,
  turn: TurnRecord,
  found: Extraction,
): Promise<IngestResult> {
  const keys = Object.keys(found.set);
  const [row] = await tx.query<{
    facts: { id: string; text: string }[];
    events: { id: string; date: string; description: string }[];
    turn_count: number;
  }>(WRITE_TURN_SQL, [
    target.tenantId,
    target.userId,
    target.operationId,
    keys,
    keys.map((k) => found.set[k] ?? ''),
    found.unset,
    found.memories,
    found.memories.map(normalizeText),
    turn.source ?? null,
    turn.occurred_at ?? null,
    found.events.map((e) => e.date),
    found.events.map((e) => e.description),
    found.events.map((e) => normalizeText(e.description)),
    turn.user_query,
    turn.agent_response ?? null,
    turn.session_id ?? null,
  ]);
  const facts = row?.facts ?? [];
  const events = row?.events ?? [];
  return {
    memories: { added: facts, duplicates: found.memories.length - facts.length },
    profile: { set: found.set, unset: found.unset },
    events: { added: events, duplicates: found.events.length - events.length },
    summary: { turn_count: row?.turn_count ?? 0 },
  };
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
    // The lane makes this the only writer of this user's memory right now, and the lease
    // check before apply makes it the only attempt whose writes commit.
    apply: (tx, found, ctx) =>
      writeTurn(
        tx,
        { tenantId: ctx.tenantId, userId: ctx.payload.user_id, operationId: ctx.id },
        ctx.payload,
        found,
      ),
  });

  engine.register<{ user_id: string }, void>(MemoryJob.DeleteUser, {
    maxAttempts: 5,
    async apply(tx, _none, ctx) {
      const args = [ctx.tenantId, ctx.payload.user_id];
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
      const redacted = await tx.query<{ n: number }>(
        `with r as (
           update jobs set payload = jsonb_build_object('user_id', $2::text, 'redacted', true),
                           result = null
            where tenant_id = $1 and payload->>'user_id' = $2 and id < $3
              and status in ('succeeded', 'failed', 'cancelled')
           returning 1)
         select count(*)::int as n from r`,
        [ctx.tenantId, ctx.payload.user_id, ctx.id],
      );
      counts['operations_redacted'] = redacted[0]?.n ?? 0;
      return { deleted: counts };
    },
  });
}
