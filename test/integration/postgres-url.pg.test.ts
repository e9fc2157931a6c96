import { afterAll, expect, it } from 'vitest';

import { writeTurn } from '../../src/memory/pipeline.ts';
import { migrate } from '../../src/store/migrate.ts';
import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

describePg('a database URL with server options of its own (PostgreSQL)', () => {
  const schema = testSchemaName('postgres-url');
  const stores: Store[] = [];
  afterAll(async () => {
    for (const store of stores) {
      await store.close();
    }
    await dropSchema(schema);
  });

  it('keeps Mnemo in its schema and applies the URL options too', async () => {
    const url = new URL(testDatabaseUrl);
    // A search_path of its own among them: MNEMO_DATABASE_SCHEMA still decides.
    url.searchParams.set('options', '-c statement_timeout=4321 -c search_path=public');
    const store = createPostgresStore({ url: url.toString(), schema });
    stores.push(store);
    await migrate(store);

    const [settings] = await store.query<{ path: string; timeout: string }>(
      `select current_setting('search_path') as path,
              current_setting('statement_timeout') as timeout`,
    );
    expect(settings).toEqual({ path: schema, timeout: '4321ms' });
    const tables = await store.query<{ tablename: string }>(
      `select tablename from pg_tables where schemaname = $1 and tablename in ('jobs', 'migrations')
        order by tablename`,
      [schema],
    );
    expect(tables.map((t) => t.tablename)).toEqual(['jobs', 'migrations']);
    // In a transaction too (another pooled connection made from the same settings).
    const inTx = await store.transaction((tx) =>
      tx.query<{ path: string }>(`select current_setting('search_path') as path`),
    );
    expect(inTx).toEqual([{ path: schema }]);
  });

  it('answers ISO dates whatever DateStyle the URL sets', async () => {
    const url = new URL(testDatabaseUrl);
    url.searchParams.set('options', '-c datestyle=SQL,DMY');
    const store = createPostgresStore({ url: url.toString(), schema });
    stores.push(store);
    await migrate(store);
    const result = await store.transaction((tx) =>
      writeTurn(
        tx,
        { tenantId: 'default', userId: 'u', operationId: 1 },
        { user_query: 'On 2024-05-01 I went to Oslo.' },
        {
          set: {},
          unset: [],
          memories: [],
          events: [{ date: '2024-05-01', description: 'went to Oslo' }],
        },
      ),
    );
    expect(result.events.added.map((e) => e.date)).toEqual(['2024-05-01']);
  });

  it('migrates whatever statement and lock timeouts the URL sets, waiting for another migrating process', async () => {
    const url = new URL(testDatabaseUrl);
    url.searchParams.set('options', '-c statement_timeout=200 -c lock_timeout=200');
    const fresh = testSchemaName('postgres-url-timeouts');
    const store = createPostgresStore({ url: url.toString(), schema: fresh });
    const holder = createPostgresStore({ url: testDatabaseUrl, schema: fresh, maxConnections: 1 });
    stores.push(store, holder);
    try {
      // Another process holds the migration lock for a second.
      const held = holder.transaction(async (tx) => {
        await tx.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [
          `mnemo:migrate:${fresh}`,
        ]);
        await tx.query('select pg_sleep(1)');
      });
      await new Promise((resolve) => setTimeout(resolve, 200));
      const applied = await migrate(store);
      await held;
      expect(applied.length).toBeGreaterThan(20);
    } finally {
      await dropSchema(fresh);
    }
  });
});
