import { afterAll, beforeAll, expect, it } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';
import { eventually } from '../helpers/engine.ts';
import { type FakeLlm, startFakeLlm } from '../helpers/fake-llm.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';
import { processGroup } from '../helpers/serve.ts';

const LLM_LATENCY_MS = 50;

describePg('memory ingestion through 2 server processes sharing PostgreSQL', () => {
  const schema = testSchemaName('ingest-processes');
  let llm: FakeLlm;
  let store: Store;
  let env: Record<string, string> = {};
  const group = processGroup(() => env);
  const post = (i: number, path: string, body: unknown) => group.call(i, 'POST', path, body);

  beforeAll(async () => {
    llm = await startFakeLlm(LLM_LATENCY_MS);
    env = {
      MNEMO_DATABASE_URL: testDatabaseUrl,
      MNEMO_DATABASE_SCHEMA: schema,
      MNEMO_PORT: '0',
      MNEMO_EXTRACTOR: 'openai',
      MNEMO_LLM_BASE_URL: llm.url,
      MNEMO_LLM_MODEL: 'fake',
      MNEMO_WORKER_CONCURRENCY: '10',
    };
    await Promise.all([group.start(['serve']), group.start(['serve'])]);
    store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 2 });
  });

  afterAll(async () => {
    await group.stopAll();
    await store?.close();
    await llm?.close();
    await dropSchema(schema);
  });

  it('keeps every attribute of 90 concurrent ingests from 3 sources, counts 90 turns, lets the last one win, and never overlaps them', async () => {
    const sources = ['mcp', 'sdk', 'extension'];
    const requests = sources.flatMap((source) =>
      Array.from({ length: 30 }, (_, i) => ({
        user_id: 'shared-user',
        source,
        user_query: `My ${source} attribute ${i} is value ${i}. My last source is ${source}-${i}.`,
        timeout_ms: 60_000,
      })),
    );
    const responses = await Promise.all(
      requests.map((body, i) => post(i, '/v1/memory/ingest', body)),
    );
    expect(responses.every((r) => r.status === 200 && r.body['status'] === 'succeeded')).toBe(true);

    const profile = (await group.call(0, 'GET', '/v1/users/shared-user/profile')).body;
    const attributes = profile['attributes'] as Record<
      string,
      { value: string; operation_id: string }
    >;
    for (const source of sources) {
      for (let i = 0; i < 30; i++) {
        expect(attributes[`${source}_attribute_${i}`]?.value).toBe(`value ${i}`);
      }
    }
    expect(profile['summary']['turn_count']).toBe(90);

    const ops = responses
      .map((r) => r.body)
      .sort(
        (a, b) => Date.parse(a['started_at'] as string) - Date.parse(b['started_at'] as string),
      );
    for (let i = 1; i < ops.length; i++) {
      expect(Date.parse(ops[i]!['started_at'] as string)).toBeGreaterThanOrEqual(
        Date.parse(ops[i - 1]!['finished_at'] as string),
      );
    }
    const lastFinished = ops.at(-1)!;
    expect(attributes['last_source']?.operation_id).toBe(lastFinished['id']);
    // The value too: the one the last operation's own text set.
    const lastBody = requests[responses.findIndex((r) => r.body['id'] === lastFinished['id'])]!;
    expect(attributes['last_source']?.value).toBe(
      /My last source is ([a-z]+-\d+)\./.exec(lastBody.user_query)![1],
    );
    // Turn counts follow the order the operations ran in.
    expect(ops.map((o) => o['result']['summary']['turn_count'])).toEqual(
      Array.from({ length: 90 }, (_, i) => i + 1),
    );
  });

  it('stores an event sent by two sources at once once, reporting it added to one and duplicate to the other', async () => {
    const body = {
      user_id: 'event-user',
      user_query: 'On 2024-06-01 I adopted a cat.',
      timeout_ms: 60_000,
    };
    const [a, b] = await Promise.all([
      post(0, '/v1/memory/ingest', { ...body, source: 'mcp' }),
      post(1, '/v1/memory/ingest', { ...body, source: 'extension' }),
    ]);
    const results = [a!, b!].map(
      (r) => r.body['result']['events'] as { added: unknown[]; duplicates: number },
    );
    // One response reports it added and not duplicate, the other the reverse.
    expect(results.map((r) => [r.added.length, r.duplicates]).sort()).toEqual([
      [0, 1],
      [1, 0],
    ]);
    const [row] = await store.query<{ n: number }>(
      `select count(*)::int as n from events where user_id = 'event-user'`,
    );
    expect(row?.n).toBe(1);
  });

  it('runs 50 users × 20 ingests in parallel across users and in order within each user', async () => {
    const USERS = 50;
    const PER_USER = 20;
    const accepted: { user: number; n: number; id: string }[] = [];
    for (let n = 0; n < PER_USER; n++) {
      const batch = await Promise.all(
        Array.from({ length: USERS }, (_, user) =>
          post(user + n, '/v1/memory/ingest', {
            user_id: `load-${user}`,
            user_query: `My counter is ${n}.`,
            wait: false,
          }).then((r) => ({ user, n, id: r.body['id'] as string, status: r.status })),
        ),
      );
      expect(batch.every((r) => r.status === 202 || r.status === 200)).toBe(true);
      accepted.push(...batch);
    }
    await eventually(async () => {
      const [row] = await store.query<{ n: number }>(
        `select count(*)::int as n from jobs where kind = 'memory.ingest' and status in ('pending', 'running')`,
      );
      return row?.n === 0;
    }, 120_000);
    // Users proceed in parallel: at the busiest moment many users' jobs were running at once
    // (proven from the jobs' own run intervals, not from wall time, which CI load bends).
    const [busiest] = await store.query<{ users: number }>(
      `select max(n)::int as users from (
         select (select count(distinct b.payload->>'user_id') from jobs b
                  where b.kind = 'memory.ingest' and b.payload->>'user_id' like 'load-%'
                    and b.started_at <= a.started_at and b.finished_at > a.started_at) as n
           from jobs a where a.kind = 'memory.ingest' and a.payload->>'user_id' like 'load-%') t`,
    );
    expect(busiest?.users).toBeGreaterThanOrEqual(4);
    // And the whole took far less than the runs one after another: the sum of the runs'
    // durations over the span from the first start to the last finish (both from the jobs'
    // own times) is the mean number of runs at once. A run starts when it is claimed, so
    // 2 processes × (10 slots + 2 claimed ahead) allow 24; serially it would be 1.
    const [span] = await store.query<{ parallelism: number }>(
      `select (sum(extract(epoch from finished_at - started_at))
               / extract(epoch from max(finished_at) - min(started_at)))::float8 as parallelism
         from jobs where kind = 'memory.ingest' and payload->>'user_id' like 'load-%'`,
    );
    expect(span?.parallelism).toBeGreaterThan(5);

    const rows = await store.query<{ user_id: string; value: string; turn_count: number }>(
      `select s.user_id, p.value, s.turn_count from user_summaries s
         join profile_attributes p on p.tenant_id = s.tenant_id and p.user_id = s.user_id and p.key = 'counter'
        where s.user_id like 'load-%'`,
    );
    expect(rows).toHaveLength(USERS);
    expect(rows.every((r) => r.value === String(PER_USER - 1) && r.turn_count === PER_USER)).toBe(
      true,
    );
    const order = await store.query<{ bad: number }>(
      `select count(*)::int as bad from (
         select payload->>'user_id' as u, (result->'summary'->>'turn_count')::int as tc,
                row_number() over (partition by payload->>'user_id' order by id) as rn
           from jobs where kind = 'memory.ingest' and payload->>'user_id' like 'load-%') t
        where tc <> rn`,
    );
    expect(order[0]?.bad).toBe(0);
  });
});
