import { afterAll, beforeAll, expect, it } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';
import { eventually } from '../helpers/engine.ts';
import { type FakeLlm, startFakeLlm } from '../helpers/fake-llm.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';
import { type Json, processGroup } from '../helpers/serve.ts';

describePg('sessions through 2 server processes sharing PostgreSQL', () => {
  const schema = testSchemaName('session-processes');
  let llm: FakeLlm;
  let store: Store;
  let env: Record<string, string> = {};
  const group = processGroup(() => env);
  const { call } = group;

  beforeAll(async () => {
    llm = await startFakeLlm(0);
    env = {
      MNEMO_DATABASE_URL: testDatabaseUrl,
      MNEMO_DATABASE_SCHEMA: schema,
      MNEMO_PORT: '0',
      MNEMO_EXTRACTOR: 'openai',
      MNEMO_LLM_BASE_URL: llm.url,
      MNEMO_LLM_MODEL: 'fake',
      MNEMO_WORKER_LEASE_MS: '2000',
      MNEMO_LOG_LEVEL: 'info',
    };
    // Two HTTP servers with workers, and nothing else yet.
    await Promise.all([group.start(['serve']), group.start(['serve'])]);
    store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 2 });
  });

  afterAll(async () => {
    await group.stopAll();
    await store?.close();
    await llm?.close();
    await dropSchema(schema);
  });

  const messages = (prefix: string, n: number) =>
    Array.from({ length: n }, (_, i) => ({
      role: i % 2 === 0 ? 'user' : 'assistant',
      content: `${prefix} message ${i}.`,
    }));

  it('20 concurrent commits of 100 live messages make exactly one archive holding all 100', async () => {
    const res = await call(0, 'POST', '/v1/sessions/race/messages', {
      user_id: 'ru',
      messages: messages('race', 100),
    });
    expect(res.body).toEqual({ live_count: 100 });
    const commits = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        call(i, 'POST', '/v1/sessions/race/commit', { timeout_ms: 60_000 }),
      ),
    );
    const committed = commits.filter((c) => c.body['status'] === 'committed');
    expect(committed).toHaveLength(1);
    expect(committed[0]?.body).toMatchObject({
      archive: { index: 1, message_count: 100 },
      operation: { status: 'succeeded', result: { summary: { turn_count: 1 } } },
    });
    expect(commits.filter((c) => c.body['status'] === 'nothing_to_commit')).toHaveLength(19);
    const rows = await store.query<{ archive_index: number | null; n: number }>(
      `select archive_index, count(*)::int as n from session_messages
        where session_id = 'race' group by archive_index`,
    );
    expect(rows).toEqual([{ archive_index: 1, n: 100 }]);
    // Phase 2 ran once: one archive job, one turn.
    expect(
      await store.query(`select count(*)::int as n from jobs where kind = 'session.commit'`),
    ).toEqual([{ n: 1 }]);
    expect(await store.query(`select count(*)::int as n from turns where user_id = 'ru'`)).toEqual([
      { n: 1 },
    ]);
  });

  it('messages appended while commits run end up in exactly one archive or still live', async () => {
    const sent: string[] = [];
    let appending = true;
    const appenders = Array.from({ length: 4 }, async (_, a) => {
      for (let n = 0; n < 30; n++) {
        const batch = Array.from({ length: 1 + (n % 3) }, (_, k) => ({
          role: 'user',
          content: `a${a} n${n} k${k}.`,
        }));
        const res = await call(a + n, 'POST', '/v1/sessions/stream/messages', {
          user_id: 'su',
          messages: batch,
        });
        expect(res.status).toBe(200);
        sent.push(...batch.map((m) => m.content));
      }
    });
    let archivesMade = 0;
    const committers = Array.from({ length: 3 }, async (_, c) => {
      let i = 0;
      while (appending) {
        const res = await call(c + i++, 'POST', '/v1/sessions/stream/commit', { wait: false });
        if (res.status === 404) {
          continue; // the first append has not created the session yet
        }
        expect([200, 202]).toContain(res.status);
        if (res.body['status'] === 'committed') {
          archivesMade += 1;
        }
      }
    });
    await Promise.all(appenders);
    appending = false;
    await Promise.all(committers);

    const rows = await store.query<{ content: string; archive_index: number | null }>(
      `select content, archive_index from session_messages where session_id = 'stream' order by id`,
    );
    // None lost, none twice.
    expect(rows.map((r) => r.content).sort()).toEqual([...sent].sort());
    expect(archivesMade).toBeGreaterThan(1);
    const archives = await store.query<{ archive_index: number; message_count: number }>(
      `select archive_index, message_count from session_archives where session_id = 'stream'
        order by archive_index`,
    );
    expect(archives).toHaveLength(archivesMade);
    expect(archives.map((a) => a.archive_index)).toEqual(
      Array.from({ length: archivesMade }, (_, i) => i + 1),
    );
    for (const a of archives) {
      expect(rows.filter((r) => r.archive_index === a.archive_index)).toHaveLength(a.message_count);
    }
    const live = rows.filter((r) => r.archive_index === null).length;
    expect(archives.reduce((sum, a) => sum + a.message_count, 0) + live).toBe(sent.length);
    // Every archive's job finishes, once each.
    await eventually(async () => {
      const [row] = await store.query<{ n: number }>(
        `select count(*)::int as n from jobs where kind = 'session.commit'
           and payload->>'session_id' = 'stream' and status = 'succeeded'`,
      );
      return row?.n === archivesMade;
    }, 60_000);
    expect(await store.query(`select count(*)::int as n from turns where user_id = 'su'`)).toEqual([
      { n: archivesMade },
    ]);
  });

  it('a worker killed during phase 2: the archive is summarized and its memory applied once, after recovery', async () => {
    // Only a dedicated worker runs jobs now; the servers stop theirs by restarting without.
    await group.stopAll();
    await group.start(['serve', '--no-worker']);
    const doomed = await group.start(['worker']);

    await call(0, 'POST', '/v1/sessions/crash/messages', {
      user_id: 'cu',
      messages: [
        { role: 'user', content: 'My favorite tree is the oak. I collect stamps.' },
        { role: 'assistant', content: 'Lovely.' },
      ],
    });
    llm.latencyMs = 60_000; // the worker is stuck in the model call when it dies
    const commit = await call(0, 'POST', '/v1/sessions/crash/commit', { wait: false });
    expect(commit.status).toBe(202);
    const opId = String(commit.body['operation'].id);
    // Claimed: the worker is inside the model call (which answers after a minute).
    await eventually(
      async () => (await call(0, 'GET', `/v1/operations/${opId}`)).body['status'] === 'running',
      20_000,
    );
    doomed.kill('SIGKILL');
    await doomed.exited;
    llm.latencyMs = 0;

    await group.start(['worker']);
    let op: Json = {};
    await eventually(async () => {
      op = (await call(0, 'GET', `/v1/operations/${opId}`)).body;
      return op['status'] === 'succeeded';
    }, 30_000);
    expect(op['attempts']).toBe(2);
    expect(op['result']).toMatchObject({
      archive: { index: 1, message_count: 2, summary: expect.stringContaining('2 messages') },
      profile: { set: { favorite_tree: 'the oak' } },
      memories: { added: [{ text: 'I collect stamps' }] },
      summary: { turn_count: 1 },
    });
    const session = (await call(0, 'GET', '/v1/sessions/crash')).body;
    expect(session).toMatchObject({
      live_count: 0,
      archives: [{ index: 1, message_count: 2, status: 'succeeded', summary: expect.any(String) }],
    });
    expect(await store.query(`select count(*)::int as n from turns where user_id = 'cu'`)).toEqual([
      { n: 1 },
    ]);
    expect(
      await store.query(`select count(*)::int as n from memories where user_id = 'cu'`),
    ).toEqual([{ n: 1 }]);
    const profile = (await call(0, 'GET', '/v1/users/cu/profile')).body;
    expect(profile['summary']).toMatchObject({ turn_count: 1 });
  });
});
