import { afterAll, expect, it } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import { eventually } from '../helpers/engine.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

describePg('the PostgreSQL store when a connection drops', () => {
  const schema = testSchemaName('postgres-store');
  const store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 3 });
  const other = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 1 });
  afterAll(async () => {
    await store.close();
    await other.close();
    await dropSchema(schema);
  });

  it('fails or retries a transaction whose connection is terminated, and the process lives on', async () => {
    let attempts = 0;
    const outcome = await store
      .transaction(async (tx) => {
        attempts += 1;
        const [me] = await tx.query<{ pid: number }>('select pg_backend_pid() as pid');
        if (attempts === 1) {
          // Terminated while idle in the transaction: the connection's `error` comes between
          // two statements, with no query to reject.
          await other.query('select pg_terminate_backend($1)', [me?.pid]);
          await new Promise((resolve) => setTimeout(resolve, 300));
        }
        return (await tx.query<{ n: number }>('select 1 as n'))[0]?.n;
      })
      .then(
        (n) => ({ ok: n }),
        (err: unknown) => ({ code: (err as { code?: string }).code }),
      );
    // Either way a clear outcome, not a crash: run again on a fresh connection, or unavailable.
    expect([{ ok: 1 }, { code: 'unavailable' }]).toContainEqual(outcome);
    expect(await store.query<{ n: number }>('select 1 as n')).toEqual([{ n: 1 }]);
  });

  it('keeps trying to listen when the first connection is refused, and hears notifications once it is in', async () => {
    const role = `mnemo_listen_${process.pid}`;
    // With a password of its own, in case the server asks for one.
    await other.exec(`create role ${role} login password 'listen-pw' connection limit 0`);
    const url = new URL(testDatabaseUrl);
    url.username = role;
    url.password = 'listen-pw';
    const limited = createPostgresStore({ url: url.toString(), schema });
    try {
      const heard: string[] = [];
      // Refused (too many connections for the role): no throw, retried in the background.
      const unlisten = await limited.listen('store_retry', (payload) => heard.push(payload));
      await other.exec(`alter role ${role} connection limit -1`);
      await eventually(async () => {
        await other.query(`select pg_notify('store_retry', 'hello')`);
        return heard.includes('hello');
      }, 20_000);
      await unlisten();
    } finally {
      await limited.close();
      await other.exec(`drop role ${role}`);
    }
  });
});

describePg('the PostgreSQL store when it sits idle', () => {
  const schema = testSchemaName('postgres-idle');
  const store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 1 });
  afterAll(async () => {
    await store.close();
    await dropSchema(schema);
  });

  it('keeps its connection past a quiet spell longer than the pool’s default idle timeout (10 s)', async () => {
    // A new connection compiles the PL/pgSQL functions and plans their statements again:
    // the first ingest after every quiet spell paid for it (docs/benchmarks.md).
    const [before] = await store.query<{ pid: number }>('select pg_backend_pid() as pid');
    await new Promise((resolve) => setTimeout(resolve, 10_500));
    const [after] = await store.query<{ pid: number }>('select pg_backend_pid() as pid');
    expect(after?.pid).toBe(before?.pid);
  }, 20_000);
});
