import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { ErrorCode, MnemoError } from '../../src/core/errors.ts';
import {
  bundledMigrations,
  migrate,
  type Migration,
  migrationStatus,
} from '../../src/store/migrate.ts';
import type { Store } from '../../src/store/types.ts';

/** How a backend's test file hands the suite a fresh, empty store. */
export interface StoreFixture {
  store: Store;
  dispose: () => Promise<void>;
}

function waitFor(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (check()) {
        resolve();
      } else if (Date.now() - started > timeoutMs) {
        reject(new Error('condition not met in time'));
      } else {
        setTimeout(tick, 5);
      }
    };
    tick();
  });
}

/** The behaviour every store engine must share. */
export function storeContract(name: string, open: (label: string) => Promise<StoreFixture>): void {
  describe(`store contract: ${name}`, () => {
    let fixture: StoreFixture;
    let store: Store;

    beforeEach(async (ctx) => {
      fixture = await open(ctx.task.name);
      store = fixture.store;
      await store.exec(`create schema if not exists ${store.schema}`);
    });

    afterEach(async () => {
      await fixture.dispose();
    });

    it('binds parameters and returns typed rows', async () => {
      const [row] = await store.query<{
        n: number;
        at: Date;
        doc: unknown;
        s: string;
        arr: string[];
      }>(`select $1::int8 as n, now() as at, $2::jsonb as doc, $3::text as s, $4::text[] as arr`, [
        42,
        JSON.stringify({ a: [1, 'x'] }),
        "it's; drop table x",
        ['a', 'b'],
      ]);
      expect(row).toEqual({
        n: 42,
        at: expect.any(Date),
        doc: { a: [1, 'x'] },
        s: "it's; drop table x",
        arr: ['a', 'b'],
      });
    });

    it('plans a statement for its values at every call when asked (PostgreSQL: nothing prepared)', async () => {
      const sql = 'select $1::int + 1 as n';
      const prepared = (tx: Parameters<Parameters<Store['transaction']>[0]>[0]) =>
        tx
          .query<{ n: number }>(
            'select count(*)::int as n from pg_prepared_statements where statement = $1',
            [sql],
          )
          .then((rows) => rows[0]?.n);
      await store.transaction(async (tx) => {
        // One connection throughout: a transaction's.
        expect(await tx.query(sql, [1], { planEachCall: true })).toEqual([{ n: 2 }]);
        expect(await prepared(tx)).toBe(0);
        await tx.query(sql, [2]);
        // PostgreSQL prepares a statement with parameters once per connection; PGlite never.
        expect(await prepared(tx)).toBe(store.kind === 'postgres' ? 1 : 0);
      });
    });

    it('runs several statements through exec and creates tables in its schema', async () => {
      await store.exec(
        'create table things (id int primary key); insert into things values (1), (2);',
      );
      const rows = await store.query<{ schema: string; n: number }>(
        `select table_schema as schema, (select count(*) from things)::int as n
           from information_schema.tables where table_name = 'things'`,
      );
      expect(rows).toEqual([{ schema: store.schema, n: 2 }]);
    });

    it('commits a transaction and returns its value', async () => {
      await store.exec('create table things (id int primary key)');
      const result = await store.transaction(async (tx) => {
        await tx.query('insert into things values ($1)', [1]);
        await tx.query('insert into things values ($1)', [2]);
        return 'done';
      });
      expect(result).toBe('done');
      expect(await store.query('select id from things order by id')).toEqual([
        { id: 1 },
        { id: 2 },
      ]);
    });

    it('rolls back every write when the callback throws, and stays usable', async () => {
      await store.exec('create table things (id int primary key)');
      const failure = new Error('boom');
      await expect(
        store.transaction(async (tx) => {
          await tx.query('insert into things values (1)');
          throw failure;
        }),
      ).rejects.toBe(failure);
      // A failed statement inside the transaction must not leave the connection aborted.
      await expect(
        store.transaction(async (tx) => {
          await tx.query('insert into things values (2)');
          await tx.query('select 1/0');
        }),
      ).rejects.toMatchObject({ code: ErrorCode.Internal });
      expect(await store.query('select id from things')).toEqual([]);
      await store.query('insert into things values (3)');
      expect(await store.query('select id from things')).toEqual([{ id: 3 }]);
    });

    it('translates a unique violation into conflict and other errors into internal with the SQLSTATE', async () => {
      await store.exec('create table things (id int primary key)');
      await store.query('insert into things values (1)');
      const dup = await store.query('insert into things values (1)').catch((e: unknown) => e);
      expect(dup).toBeInstanceOf(MnemoError);
      expect(dup).toMatchObject({ code: ErrorCode.Conflict, retryable: false });
      const bad = await store.query('select * from no_such_table').catch((e: unknown) => e);
      expect(bad).toMatchObject({ code: ErrorCode.Internal, details: { sqlstate: '42P01' } });
    });

    it('retries a transaction that fails with serialization_failure, then gives up as unavailable', async () => {
      await store.exec('create table things (id int primary key)');
      let calls = 0;
      const value = await store.transaction(async (tx) => {
        calls += 1;
        await tx.query('insert into things values ($1)', [calls]);
        if (calls < 3) {
          throw Object.assign(new Error('could not serialize access'), { code: '40001' });
        }
        return calls;
      });
      expect(value).toBe(3);
      expect(await store.query('select id from things')).toEqual([{ id: 3 }]);

      let attempts = 0;
      const gaveUp = await store
        .transaction(
          () => {
            attempts += 1;
            return Promise.reject(Object.assign(new Error('deadlock detected'), { code: '40P01' }));
          },
          { maxAttempts: 2 },
        )
        .catch((e: unknown) => e);
      expect(attempts).toBe(2);
      expect(gaveUp).toMatchObject({ code: ErrorCode.Unavailable, retryable: true });
    });

    it('delivers a notification after the sending transaction commits, and none on rollback', async () => {
      const received: string[] = [];
      const unlisten = await store.listen('contract_events', (payload) => received.push(payload));
      try {
        await store
          .transaction(async (tx) => {
            await tx.query(`select pg_notify('contract_events', 'rolled back')`);
            throw new Error('abort');
          })
          .catch(() => undefined);
        await store.transaction(async (tx) => {
          await tx.query(`select pg_notify('contract_events', 'hello')`);
        });
        await waitFor(() => received.length > 0);
        await new Promise((r) => setTimeout(r, 50));
        expect(received).toEqual(['hello']);
      } finally {
        await unlisten();
      }
    });

    it('applies the bundled migrations once and reports none pending afterwards', async () => {
      const all = bundledMigrations().map((m) => m.id);
      expect(await migrate(store)).toEqual(all);
      expect(await migrate(store)).toEqual([]);
      expect(await migrationStatus(store)).toEqual({ applied: all, pending: [] });
      const [tenant] = await store.query<{ id: string }>(`select id from tenants`);
      expect(tenant?.id).toBe('default');
    });

    it('refuses a database whose applied migration was edited', async () => {
      await migrate(store);
      const edited: Migration[] = bundledMigrations().map((m, i) =>
        i === 0 ? { ...m, sql: `${m.sql}\n-- edited`, checksum: 'f'.repeat(64) } : m,
      );
      const err = await migrate(store, edited).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: ErrorCode.SchemaMismatch });
      expect((err as Error).message).toMatch(/migration 1 \(init\) was edited/);
      await expect(migrationStatus(store, edited)).rejects.toMatchObject({
        code: ErrorCode.SchemaMismatch,
      });
    });

    it('refuses a database migrated by a newer build', async () => {
      const newer: Migration[] = [
        ...bundledMigrations(),
        {
          id: 9999,
          name: 'future',
          sql: 'create table future_things (id int)',
          checksum: 'a'.repeat(64),
        },
      ];
      await migrate(store, newer);
      const err = await migrate(store).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: ErrorCode.SchemaMismatch });
      expect((err as Error).message).toMatch(/newer Mnemo/);
    });

    it('serves concurrent transactions without mixing their writes', async () => {
      await store.exec('create table things (id int primary key, batch int not null)');
      await Promise.all(
        [1, 2, 3, 4].map((batch) =>
          store
            .transaction(async (tx) => {
              for (let i = 0; i < 5; i++) {
                await tx.query('insert into things values ($1, $2)', [batch * 100 + i, batch]);
              }
              if (batch === 3) {
                throw new Error('batch 3 fails');
              }
            })
            .catch(() => undefined),
        ),
      );
      const rows = await store.query<{ batch: number; n: number }>(
        'select batch, count(*)::int as n from things group by batch order by batch',
      );
      expect(rows).toEqual([
        { batch: 1, n: 5 },
        { batch: 2, n: 5 },
        { batch: 4, n: 5 },
      ]);
    });
  });
}
