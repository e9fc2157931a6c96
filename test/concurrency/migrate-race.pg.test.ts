import { afterEach, expect, it } from 'vitest';

import { bundledMigrations } from '../../src/store/migrate.ts';
import { createPostgresStore } from '../../src/store/postgres.ts';
import { runMnemo } from '../helpers/cli.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

const PROCESSES = 8;

describePg('concurrent migration (PostgreSQL, separate processes)', () => {
  let schema = '';

  afterEach(async () => {
    await dropSchema(schema);
  });

  it(`applies every migration exactly once when ${PROCESSES} processes migrate an empty database at once`, async () => {
    schema = testSchemaName('migrate-race');
    const results = await Promise.all(
      Array.from({ length: PROCESSES }, () =>
        runMnemo(['migrate'], {
          MNEMO_DATABASE_URL: testDatabaseUrl,
          MNEMO_DATABASE_SCHEMA: schema,
        }),
      ),
    );
    for (const r of results) {
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
    const ids = bundledMigrations().map((m) => m.id);
    const appliers = results.filter((r) => r.stdout.includes('applied migrations'));
    expect(appliers).toHaveLength(1);
    expect(appliers[0]?.stdout.trim()).toBe(`applied migrations ${ids.join(', ')}`);
    expect(results.filter((r) => r.stdout.includes('up to date'))).toHaveLength(PROCESSES - 1);

    const store = createPostgresStore({ url: testDatabaseUrl, schema });
    try {
      const ledger = await store.query<{ id: number; n: number }>(
        'select id, count(*)::int as n from migrations group by id order by id',
      );
      expect(ledger).toEqual(ids.map((id) => ({ id, n: 1 })));
      const tenants = await store.query<{ id: string }>('select id from tenants');
      expect(tenants).toEqual([{ id: 'default' }]);
    } finally {
      await store.close();
    }
  });
});
