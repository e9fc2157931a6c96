import { operationId } from '../core/ids.ts';
import { pageOf } from '../core/page.ts';
import { Conditions } from '../store/conditions.ts';
import type { Queryable } from '../store/types.ts';

/** A user's profile as API.md shows it. */
export interface Profile {
  attributes: Record<string, { value: string; updated_at: string; operation_id: string | null }>;
  summary: { turn_count: number; last_ingested_at: string | null; text: string };
}

const opId = (id: number | null): string | null => (id === null ? null : operationId(id));

/** The profile and summary of a user (empty for an unknown user). */
export async function readProfile(
  q: Queryable,
  tenantId: string,
  userId: string,
): Promise<Profile> {
  const attributes = await q.query<{
    key: string;
    value: string;
    updated_at: Date;
    operation_id: number | null;
  }>(
    `select key, value, updated_at, operation_id from profile_attributes
      where tenant_id = $1 and user_id = $2 order by key`,
    [tenantId, userId],
  );
  // The summary text is derived here from what is stored: the profile, then the latest facts.
  const [summary] = await q.query<{
    turn_count: number;
    last_ingested_at: Date | null;
    text: string;
  }>(
    `select s.turn_count, s.last_ingested_at, concat_ws(' ',
        (select 'Profile: ' || string_agg(key || ' = ' || value, '; ' order by key) || '.'
           from profile_attributes where tenant_id = $1 and user_id = $2),
        (select 'Recent: ' || string_agg(text, '; ' order by id desc) || '.'
           from (select id, text from memories where tenant_id = $1 and user_id = $2
                 order by id desc limit 5) m)) as text
       from user_summaries s where s.tenant_id = $1 and s.user_id = $2`,
    [tenantId, userId],
  );
  return {
    attributes: Object.fromEntries(
      attributes.map((a) => [
        a.key,
        {
          value: a.value,
          updated_at: a.updated_at.toISOString(),
          operation_id: opId(a.operation_id),
        },
      ]),
    ),
    summary: {
      turn_count: summary?.turn_count ?? 0,
      last_ingested_at: summary?.last_ingested_at?.toISOString() ?? null,
      text: summary?.text ?? '',
    },
  };
}

/** A page of a user's memories, newest first; `cursor` is the last id of the previous page. */
export async function listMemories(
  q: Queryable,
  tenantId: string,
  userId: string,
  limit: number,
  cursor?: number,
): Promise<{
  items: { id: string; text: string; source: string | null; created_at: string }[];
  next_cursor: string | null;
}> {
  const rows = await q.query<{ id: number; text: string; source: string | null; created_at: Date }>(
    `select id, text, source, created_at from memories
      where tenant_id = $1 and user_id = $2 and ($3::bigint is null or id < $3)
      order by id desc limit $4`,
    [tenantId, userId, cursor ?? null, limit + 1],
  );
  const page = pageOf(rows, limit, (last) => String(last.id));
  return {
    items: page.rows.map((r) => ({
      id: `mem_${r.id}`,
      text: r.text,
      source: r.source,
      created_at: r.created_at.toISOString(),
    })),
    next_cursor: page.next_cursor,
  };
}

/** A time-ordered list's page: the range, its size, and where the previous page ended. */
export interface Page {
  from?: string;
  to?: string;
  limit: number;
  /** A previous page's `next_cursor`. */
  cursor?: string;
}

/**
 * The statement of {@link listEvents}. Each condition only when asked for (see Conditions):
 * the plan kept for it bounds its scan of events_user_date_idx with the cursor, so a page does
 * not read the user's events from the first one. `to_char`, not `date::text`: a server's
 * DateStyle (settable in the URL) must not change the dates answered, nor the cursors.
 */
export function eventsPageQuery(
  tenantId: string,
  userId: string,
  page: Page,
): { text: string; params: unknown[] } {
  const where = new Conditions(
    [`e.tenant_id = $1`, `e.user_id = $2`],
    [tenantId, userId, page.limit + 1],
  );
  if (page.from !== undefined) {
    where.add((from) => `e.date >= ${from}::date`, page.from);
  }
  if (page.to !== undefined) {
    where.add((to) => `e.date <= ${to}::date`, page.to);
  }
  if (page.cursor !== undefined) {
    const [date, id] = page.cursor.split('_');
    where.add((d, i) => `(e.date, e.id) > (${d}::date, ${i}::bigint)`, date, id);
  }
  return {
    text: `select e.id, to_char(e.date, 'YYYY-MM-DD') as date, e.description from events e
            where ${where.sql}
            order by e.date, e.id limit $3`,
    params: where.params,
  };
}

/**
 * A page of a user's temporal events between `from` and `to` (inclusive ISO dates), in date
 * order (then id): at most `limit`, after `cursor` (a previous page's `next_cursor`, which is
 * null on the last page).
 */
export async function listEvents(
  q: Queryable,
  tenantId: string,
  userId: string,
  page: Page,
): Promise<{
  items: { id: string; date: string; description: string }[];
  next_cursor: string | null;
}> {
  const query = eventsPageQuery(tenantId, userId, page);
  const rows = await q.query<{ id: number; date: string; description: string }>(
    query.text,
    query.params,
  );
  const found = pageOf(rows, page.limit, (last) => `${last.date}_${last.id}`);
  return {
    items: found.rows.map((r) => ({ id: `evt_${r.id}`, date: r.date, description: r.description })),
    next_cursor: found.next_cursor,
  };
}

/** The kinds of search results. */
export type SearchType = 'memory' | 'event' | 'conversation';

/**
 * The statement of {@link searchMemory}: $1 tenant, $2 user, $3 words, $4 types, $5 limit.
 * Each branch asks for the words and the owner's lexeme, which the `*_owner_search_idx`
 * indexes hold (migration 0016). A query of stop words only matches nothing, as `@@` with an
 * empty query would (`&&` would leave the owner's lexeme alone, which every row of the user
 * matches).
 */
export const SEARCH_MEMORY = `with query as (
       select websearch_to_tsquery('english', $3) as words,
              websearch_to_tsquery('english', $3) && search_owner_query($1, $2) as owned),
     hits as (
       select 'memory' as type, 'mem_' || m.id as id, m.text, ts_rank(m.search, query.words) as rank,
              coalesce(m.occurred_at, m.created_at) as at
         from memories m, query
        where 'memory' = any($4::text[]) and numnode(query.words) > 0
          and m.tenant_id = $1 and m.user_id = $2
          and (m.search || search_owner(m.tenant_id, m.user_id)) @@ query.owned
       union all
       select 'event', 'evt_' || e.id, e.description, ts_rank(e.search, query.words), e.date::timestamptz
         from events e, query
        where 'event' = any($4::text[]) and numnode(query.words) > 0
          and e.tenant_id = $1 and e.user_id = $2
          and (e.search || search_owner(e.tenant_id, e.user_id)) @@ query.owned
       union all
       select 'conversation', 'turn_' || t.id, t.user_query || coalesce(E'\\n' || t.agent_response, ''),
              ts_rank(t.search, query.words), t.occurred_at
         from turns t, query
        where 'conversation' = any($4::text[]) and numnode(query.words) > 0
          and t.tenant_id = $1 and t.user_id = $2
          and (t.search || search_owner(t.tenant_id, t.user_id)) @@ query.owned
       union all
       -- Synced speech: a conversation's best-matching segment (migration 0023).
       select * from (
         select distinct on (s.conversation_id) 'conversation', 'conv_' || s.conversation_id,
                s.transcript, ts_rank(to_tsvector('english', s.transcript), query.words) as rank,
                s.started_at
           from sync_segments s, query
          where 'conversation' = any($4::text[]) and numnode(query.words) > 0
            and s.tenant_id = $1 and s.user_id = $2 and s.conversation_id is not null
            and (to_tsvector('english', coalesce(s.transcript, ''))
                 || search_owner(s.tenant_id, s.user_id)) @@ query.owned
          order by s.conversation_id, rank desc, s.started_at) as synced
     )
     select type, id, text, at as occurred_at,
            (rank * (0.5 + 0.5 * power(0.5, greatest(0, extract(epoch from now() - at)) / 2592000)))::float8 as score
       from hits order by score desc, at desc limit $5`;

/**
 * Full-text search over a user's memories, events and conversations (ingested turns, and
 * synced conversations by their best-matching segment), ranked by text rank weighted by
 * recency (half-life 30 days).
 */
export async function searchMemory(
  q: Queryable,
  tenantId: string,
  userId: string,
  text: string,
  types: readonly SearchType[],
  limit: number,
): Promise<{
  items: { type: SearchType; id: string; text: string; score: number; occurred_at: string }[];
}> {
  const rows = await q.query<{
    type: SearchType;
    id: string;
    text: string;
    score: number;
    occurred_at: Date;
  }>(SEARCH_MEMORY, [tenantId, userId, text, types, limit]);
  return {
    items: rows.map((r) => ({
      type: r.type,
      id: r.id,
      text: r.text,
      score: Number(r.score.toFixed(6)),
      occurred_at: r.occurred_at.toISOString(),
    })),
  };
}
