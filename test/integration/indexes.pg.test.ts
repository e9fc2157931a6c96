import { afterAll, beforeAll, expect, it } from 'vitest';

import { createEngine, type Engine, type Job, type JobFilter } from '../../src/engine/index.ts';
import { DELETE_FINISHED } from '../../src/engine/sql/retention.ts';
import { listJobsQuery, selectJobs } from '../../src/engine/sql/rows.ts';
import { REDACT_USER_JOBS } from '../../src/memory/pipeline.ts';
import { eventsPageQuery, SEARCH_MEMORY } from '../../src/memory/read.ts';
import { migrate } from '../../src/store/migrate.ts';
import type { Store } from '../../src/store/types.ts';
import { conversationsPageQuery } from '../../src/sync/sync.ts';
import { createPgTestStore, describePg } from '../helpers/pg.ts';

// Reads that must find one user's or one session's rows by index, not by reading a tenant's or
// a table's. The plans are checked on tables where those rows are few among many, so that the
// planner's choice is the real one. (The tests share the tables; they run in order.)
describePg('reads by index (PostgreSQL)', () => {
  let store: Store;
  let dispose: () => Promise<void>;
  let engine: Engine;

  beforeAll(async () => {
    ({ store, dispose } = createPgTestStore('jobs-by-user'));
    await migrate(store);
    engine = createEngine({ store });
    await store.query(
      `insert into jobs (tenant_id, kind, payload, status, finished_at)
       select 'default', 'memory.ingest',
              jsonb_build_object('user_id', case when i % 751 = 0 then 'alice' else 'u' || (i % 500) end,
                                 'user_query', 'turn ' || i),
              case when i % 3 = 0 then 'failed' else 'succeeded' end, now()
         from generate_series(1, 30040) as i`,
    );
    // And one batch of alice's with 3,000 children, which are not operations of their own.
    await store.query(
      `with parent as (
         insert into jobs (tenant_id, kind, payload, status, is_parent, children_total,
                           children_succeeded, finished_at)
         values ('default', 'memory.batch_ingest', '{"user_id": "alice"}', 'succeeded', true,
                 3000, 3000, now())
         returning id)
       insert into jobs (tenant_id, kind, payload, status, parent_id, finished_at)
       select 'default', 'memory.ingest',
              jsonb_build_object('user_id', 'alice', 'user_query', 'item ' || i), 'succeeded',
              parent.id, now()
         from parent, generate_series(1, 3000) as i`,
    );
    // 300 sessions of 10 messages (half archived) and 10 append keys each.
    await store.query(
      `insert into sessions (tenant_id, id, user_id)
       select 'default', 's' || i, 'u' || (i % 50) from generate_series(1, 300) as i`,
    );
    await store.query(
      `insert into session_messages (tenant_id, session_id, role, content, archive_index)
       select 'default', 's' || (i % 300 + 1), 'user', 'message ' || i,
              case when i % 2 = 0 then 0 end
         from generate_series(1, 3000) as i`,
    );
    await store.query(
      `insert into session_append_keys (tenant_id, key, session_id, payload_hash)
       select 'default', 'k' || i, 's' || (i % 300 + 1), 'h' from generate_series(1, 3000) as i`,
    );
    await store.query('analyze jobs, sessions, session_messages, session_append_keys');
  });

  afterAll(async () => {
    await engine.stop();
    await dispose();
  });

  async function plan(text: string, params: unknown[]): Promise<string> {
    const rows = await store.query<{ 'QUERY PLAN': unknown }>(
      `explain (format json) ${text}`,
      params,
    );
    return JSON.stringify(rows[0]?.['QUERY PLAN']);
  }

  /** The plan PostgreSQL would keep for a statement run many times (as a cascade's is). */
  async function genericPlan(
    text: string,
    types: string[],
    params: (string | null)[],
  ): Promise<string> {
    return store.transaction(async (tx) => {
      await tx.query(`set local plan_cache_mode = force_generic_plan`);
      await tx.query(`prepare probe (${types.join(', ')}) as ${text}`);
      try {
        const args = params.map((p) => (p === null ? 'null' : `'${p}'`)).join(', ');
        const rows = await tx.query<{ 'QUERY PLAN': unknown }>(
          `explain (format json) execute probe (${args})`,
        );
        return JSON.stringify(rows[0]?.['QUERY PLAN']);
      } finally {
        await tx.query('deallocate probe');
      }
    });
  }

  it('lists one user’s operations through jobs_user_idx, newest first, page by page', async () => {
    const first = listJobsQuery('default', { userId: 'alice', limit: 11 });
    expect(await plan(first.text, first.params)).toContain('"Index Name":"jobs_user_idx"');
    const filtered = listJobsQuery('default', { userId: 'alice', status: 'failed', limit: 11 });
    expect(await plan(filtered.text, filtered.params)).toContain('"Index Name":"jobs_user_idx"');

    const seen: number[] = [];
    let beforeId: number | undefined;
    for (;;) {
      const page = await engine.listJobs('default', { userId: 'alice', beforeId, limit: 15 });
      expect(page.every((job) => (job.payload as { user_id: string }).user_id === 'alice')).toBe(
        true,
      );
      seen.push(...page.map((job) => job.id));
      if (page.length < 15) {
        break;
      }
      beforeId = page[page.length - 1]?.id;
    }
    const expected = await store.query<{ id: number }>(
      `select id from jobs where payload ->> 'user_id' = 'alice' and parent_id is null
        order by id desc`,
    );
    expect(seen).toEqual(expected.map((row) => row.id));
    expect(seen).toHaveLength(41);
  });

  /** Every page of Engine.listJobs, 7 at a time: the ids in order, each job checked. */
  async function pageThrough(
    filter: Pick<JobFilter, 'status' | 'kind'>,
    matches: (job: Job) => boolean,
  ): Promise<number[]> {
    const seen: number[] = [];
    let beforeId: number | undefined;
    for (;;) {
      const page = await engine.listJobs('default', { ...filter, beforeId, limit: 7 });
      expect(page.every(matches)).toBe(true);
      seen.push(...page.map((job) => job.id));
      if (page.length < 7) {
        return seen;
      }
      beforeId = page[page.length - 1]?.id;
    }
  }

  // A rare status among 30,000 operations: the page comes from the status's index, not from
  // walking the tenant's operations until enough of them match.
  it('lists operations of one status through jobs_tenant_status_idx, page by page', async () => {
    await store.query(
      `update jobs set status = 'cancelled'
        where parent_id is null and id % 1000 = 7 and status = 'succeeded'`,
    );
    await store.query('analyze jobs');
    // Engine.listJobs plans it for its values (planEachCall): a generic plan, assuming a third
    // of the jobs match, would walk the primary key instead.
    const query = listJobsQuery('default', { status: 'cancelled', limit: 11 });
    const text = await plan(query.text, query.params);
    expect(text).toContain('"Index Name":"jobs_tenant_status_idx"');
    expect(text).not.toContain('"Node Type":"Seq Scan"');
    const seen = await pageThrough({ status: 'cancelled' }, (job) => job.status === 'cancelled');
    const expected = await store.query<{ id: number }>(
      `select id from jobs where status = 'cancelled' and parent_id is null order by id desc`,
    );
    expect(seen).toEqual(expected.map((row) => row.id));
    expect(seen.length).toBeGreaterThan(20);
    await store.query(`update jobs set status = 'succeeded' where id = any($1::bigint[])`, [seen]);
  });

  // A rare kind among 30,000 ingests: the page comes from the kind's index; a page of ingests,
  // most operations, from the tenant's newest jobs.
  it('lists operations of one kind through jobs_tenant_kind_idx, page by page', async () => {
    await store.query(
      `insert into jobs (tenant_id, kind, payload, status, finished_at)
       select 'default', 'memory.delete_user', jsonb_build_object('user_id', 'gone' || i),
              'succeeded', now()
         from generate_series(1, 25) as i`,
    );
    // Newer than them: the ingests a walk from the newest would read first.
    await store.query(
      `insert into jobs (tenant_id, kind, payload, status, finished_at)
       select 'default', 'memory.ingest', '{"user_id": "bob"}', 'succeeded', now()
         from generate_series(1, 5000)`,
    );
    await store.query('analyze jobs');
    const rare = listJobsQuery('default', { kind: 'memory.delete_user', limit: 11 });
    const text = await plan(rare.text, rare.params);
    expect(text).toContain('"Index Name":"jobs_tenant_kind_idx"');
    expect(text).not.toContain('"Node Type":"Seq Scan"');
    const common = listJobsQuery('default', { kind: 'memory.ingest', limit: 11 });
    expect(await plan(common.text, common.params)).not.toContain('"Node Type":"Seq Scan"');
    const seen = await pageThrough(
      { kind: 'memory.delete_user' },
      (job) => job.kind === 'memory.delete_user',
    );
    const expected = await store.query<{ id: number }>(
      `select id from jobs where kind = 'memory.delete_user' and parent_id is null
        order by id desc`,
    );
    expect(seen).toEqual(expected.map((row) => row.id));
    expect(seen.length).toBeGreaterThanOrEqual(25);
  });

  it('redacts a deleted user’s operations and their children by index, and only hers', async () => {
    const [last] = await store.query<{ id: number }>('select max(id)::int as id from jobs');
    const text = await plan(REDACT_USER_JOBS, [
      'default',
      'alice',
      (last?.id ?? 0) + 1,
      'user:alice',
    ]);
    expect(text).toContain('"Index Name":"jobs_user_idx"');
    expect(text).toContain('"Index Name":"jobs_parent_idx"');
    // (The rows found may then be joined to the table by a scan of it, when it is as small as
    // here against 3,041 rows to update; with millions of rows, by its primary key.)
    const [redacted] = await store.query<{ n: number }>(REDACT_USER_JOBS, [
      'default',
      'alice',
      (last?.id ?? 0) + 1,
      'user:alice',
    ]);
    // Her 40 ingests, her batch and its 3,000 items; nobody else's.
    expect(redacted?.n).toBe(3041);
    const [left] = await store.query<{ n: number }>(
      `select count(*)::int as n from jobs where payload ? 'user_query'
          and payload ->> 'user_id' = 'alice'`,
    );
    expect(left?.n).toBe(0);
  });

  // A session's deletion cascades to its messages and append keys: PostgreSQL runs one such
  // statement per deleted session, so a user's deletion runs it once per session of the user.
  it('finds a session’s messages and append keys by index when the session is deleted', async () => {
    for (const table of ['session_messages', 'session_append_keys']) {
      const text = await genericPlan(
        `delete from only ${table} where $1 = tenant_id and $2 = session_id`,
        ['text', 'text'],
        ['default', 's7'],
      );
      expect(text, table).toContain(`"Index Name":"${table}_session_idx"`);
    }
    // The two partial indexes it replaced served the live messages and an archive's, in order.
    const live = await genericPlan(
      `select count(*) from session_messages
        where tenant_id = $1 and session_id = $2 and archive_index is null`,
      ['text', 'text'],
      ['default', 's7'],
    );
    expect(live).toContain('"Index Name":"session_messages_session_idx"');
    const archived = await genericPlan(
      `select role, content from session_messages
        where tenant_id = $1 and session_id = $2 and archive_index = $3 order by id`,
      ['text', 'text', 'integer'],
      ['default', 's7', '0'],
    );
    expect(archived).toContain('"Index Name":"session_messages_session_idx"');
    expect(archived).not.toContain('"Node Type":"Sort"');
  });

  // Every read of a batch parent counts its running children; its pending ones follow from its
  // counters. A parent of 5,000 children, 3 of them running and 1,000 finished.
  it('counts a large batch’s running children by index', async () => {
    const [parent] = await store.query<{ id: number }>(
      `insert into jobs (tenant_id, kind, is_parent, children_total, children_succeeded,
                         children_failed)
       values ('default', 'batch', true, 5000, 900, 100) returning id::int as id`,
    );
    const parentId = parent?.id ?? 0;
    await store.query(
      `insert into jobs (tenant_id, kind, parent_id, status, lease_expires_at)
       select 'default', 'child', $1,
              case when i <= 900 then 'succeeded' when i <= 1000 then 'failed'
                   when i <= 1003 then 'running' else 'pending' end,
              case when i between 1001 and 1003 then now() + interval '1 minute' end
         from generate_series(1, 5000) as i`,
      [parentId],
    );
    await store.query('analyze jobs');
    const text = await plan(selectJobs('j.id = $1 and j.tenant_id = $2'), [parentId, 'default']);
    expect(text).toContain('"Index Name":"jobs_parent_running_idx"');
    const job = await engine.getJob('default', parentId);
    expect(job?.children).toEqual({
      total: 5000,
      pending: 3997,
      running: 3,
      succeeded: 900,
      failed: 100,
      cancelled: 0,
    });
  });

  // The retention sweep of a kind finds its oldest finished jobs by index, not by reading the
  // jobs of other kinds or the unfinished ones: here 30,000 finished ingests, 4,000 pending
  // children (a test above) and 10,000 unfinished jobs of the swept kind lie beside its 20
  // finished ones.
  it('finds a kind’s oldest finished jobs by index for the retention sweep', async () => {
    await store.query(
      `insert into jobs (tenant_id, kind, status, finished_at)
       select 'default', 'memory.delete_user', 'succeeded', now() - i * interval '1 hour'
         from generate_series(1, 20) as i`,
    );
    await store.query(
      `insert into jobs (tenant_id, kind, status)
       select 'default', 'memory.delete_user', 'pending' from generate_series(1, 10000)`,
    );
    await store.query('analyze jobs');
    for (const kind of ['memory.delete_user', 'memory.ingest']) {
      const text = await plan(DELETE_FINISHED, [kind, 3_600_000, 500]);
      expect(text).toContain('"Index Name":"jobs_finished_idx"');
      expect(text).not.toContain('"Node Type":"Seq Scan"');
    }
  });

  // A page after the first starts where the cursor says, in the plan a named statement keeps
  // after five runs too: the cursor bounds the index scan, so paging through a long history
  // reads each row once, not every earlier page again.
  it('pages through a user’s events and conversations from the cursor, by index', async () => {
    await store.query(
      `insert into events (tenant_id, user_id, date, description, norm)
       select 'default', case when i % 4 = 0 then 'heavy' else 'u' || (i % 400) end,
              date '2000-01-01' + (i % 5000), 'event ' || i, 'event ' || i
         from generate_series(1, 40000) as i`,
    );
    await store.query(
      `insert into conversations (tenant_id, user_id, started_at, finished_at)
       select 'default', case when i % 4 = 0 then 'heavy' else 'u' || (i % 400) end,
              timestamptz '2020-01-01' + i * interval '1 hour',
              timestamptz '2020-01-01' + i * interval '1 hour' + interval '10 minutes'
         from generate_series(1, 40000) as i`,
    );
    await store.query('analyze events, conversations');
    const events = eventsPageQuery('default', 'heavy', { limit: 10, cursor: '2005-01-01_5' });
    const eventsPlan = await genericPlan(
      events.text,
      ['text', 'text', 'integer', 'date', 'bigint'],
      events.params.map(String),
    );
    expect(eventsPlan).toContain('"Index Name":"events_user_date_idx"');
    expect(eventsPlan).toMatch(/"Index Cond":"[^"]*date >= \$4/);
    const conversations = conversationsPageQuery('default', 'heavy', {
      limit: 10,
      cursor: '1600000000000000_5',
    });
    const conversationsPlan = await genericPlan(
      conversations.text,
      ['text', 'text', 'integer', 'bigint', 'bigint'],
      conversations.params.map(String),
    );
    expect(conversationsPlan).toContain('"Index Name":"conversations_user_time_idx"');
    expect(conversationsPlan).toMatch(/"Index Cond":"[^"]*started_at >= /);
  });

  // A turn names the profile keys it unsets (almost always none): the user's other attributes
  // must not be read, however many there are.
  it('writes a turn without reading the user’s other profile attributes', async () => {
    await store.query(
      `insert into profile_attributes (tenant_id, user_id, key, value)
       select 'default', 'collector', 'key_' || i, 'v' from generate_series(1, 5000) as i`,
    );
    await store.query('analyze profile_attributes');
    const turn = (n: number, unset: string[]) => ({
      tenant_id: 'default',
      user_id: 'collector',
      operation_id: n,
      set: { [`new_${n}`]: 'x' },
      unset,
      memories: [],
      memory_norms: [],
      events: [],
      source: null,
      occurred_at: null,
      user_query: `turn ${n}`,
      agent_response: null,
      session_id: null,
    });
    /** Rows of profile_attributes a turn's write read, in a transaction of its own. */
    const fetched = (n: number, unset: string[]) =>
      store.transaction(async (tx) => {
        await tx.query('select write_turn($1::jsonb)', [JSON.stringify(turn(n, unset))]);
        const [row] = await tx.query<{ n: number }>(
          `select (coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0))::int as n
             from pg_stat_xact_user_tables
            where relid = 'profile_attributes'::regclass`,
        );
        return row?.n ?? 0;
      });
    // Past the five calls after which a PL/pgSQL statement may keep a generic plan.
    for (let n = 1; n <= 8; n++) {
      expect(await fetched(n, [])).toBeLessThanOrEqual(1);
    }
    // As `key in (select …)`, once analysed: a hash semi join over a scan of the whole table.
    expect(await fetched(9, ['key_17', 'key_4000', 'absent'])).toBeLessThanOrEqual(5);
    const left = await store.query<{ key: string }>(
      `select key from profile_attributes
        where tenant_id = 'default' and user_id = 'collector' and key in ('key_17', 'key_18', 'key_4000')`,
    );
    expect(left.map((r) => r.key)).toEqual(['key_18']);
  });

  // A user with a long history searches a word that is common among other users and absent
  // from their own: neither all the word's rows nor all the user's should be read.
  it('searches one user’s matches through the owner indexes', async () => {
    await store.query(
      `insert into turns (tenant_id, user_id, operation_id, user_query)
       select 'default', case when i % 4 = 0 then 'heavy' else 'u' || (i % 400) end, i,
              case when i % 4 = 0 then 'we talked about the budget ' || i
                   else 'the trip to Lisbon was long ' || i end
         from generate_series(1, 40000) as i`,
    );
    await store.query(
      `insert into memories (tenant_id, user_id, text, norm)
       select 'default', case when i % 4 = 0 then 'heavy' else 'u' || (i % 400) end,
              case when i % 4 = 0 then 'budget fact ' || i else 'Lisbon fact ' || i end,
              'fact ' || i
         from generate_series(1, 20000) as i`,
    );
    // Synced speech, assigned to a conversation (any: the plan is what is checked here).
    await store.query(
      `insert into sync_segments (tenant_id, user_id, id, batch_id, ord, started_at, ended_at,
                                  state, processed, transcript, conversation_id)
       select 'default', case when i % 4 = 0 then 'heavy' else 'u' || (i % 400) end, 's' || i,
              1, i, now(), now(), 'assigned', true,
              case when i % 4 = 0 then 'the budget call ' || i else 'Lisbon again ' || i end,
              (select min(id) from conversations)
         from generate_series(1, 40000) as i`,
    );
    await store.query('analyze turns, memories, sync_segments');
    const text = await plan(SEARCH_MEMORY, [
      'default',
      'heavy',
      'Lisbon',
      ['memory', 'event', 'conversation'],
      10,
    ]);
    expect(text).toContain('"Index Name":"turns_owner_search_idx"');
    expect(text).toContain('"Index Name":"memories_owner_search_idx"');
    expect(text).toContain('"Index Name":"sync_segments_owner_search_idx"');
    expect(text).not.toContain('"Node Type":"Seq Scan"');
    const search = async (user: string, words: string) =>
      (
        await store.query<{ id: string }>(SEARCH_MEMORY, [
          'default',
          user,
          words,
          ['memory', 'conversation'],
          50,
        ])
      ).length;
    expect(await search('heavy', 'Lisbon')).toBe(0);
    expect(await search('heavy', 'budget')).toBe(50);
    expect(await search('u1', 'Lisbon')).toBe(50);
    expect(await search('u1', 'budget')).toBe(0);
    // Stop words only: nothing, not every row of the user.
    expect(await search('heavy', 'the of')).toBe(0);
  });
});
