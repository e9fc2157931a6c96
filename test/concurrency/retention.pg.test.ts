import type pg from 'pg';
import { afterEach, beforeEach, expect, it } from 'vitest';

import { deleteFinished } from '../../src/engine/sql/retention.ts';
import { migrate } from '../../src/store/migrate.ts';
import type { Store } from '../../src/store/types.ts';
import { connectToSchema, createPgTestStore, describePg } from '../helpers/pg.ts';

// Every worker process sweeps finished jobs past their retention. Sweeps running at once must
// share the work without deleting a row twice or waiting for one another, and a sweep must give
// way to a transaction holding a row it would delete (a user's deletion redacting a batch's
// children) instead of waiting on it.
describePg('retention sweeps at once (PostgreSQL)', () => {
  let store: Store;
  let dispose: () => Promise<void>;
  let other: pg.Client;

  beforeEach(async (ctx) => {
    ({ store, dispose } = createPgTestStore(`retention:${ctx.task.name}`, 20));
    await migrate(store);
    other = await connectToSchema(store.schema);
  });

  afterEach(async () => {
    await other.end();
    await dispose();
  });

  /** `n` finished jobs of `kind`, every tenth a batch parent with 5 children; returns the parents' ids. */
  async function finished(kind: string, n: number): Promise<number[]> {
    const rows = await store.query<{ id: number }>(
      `insert into jobs (tenant_id, kind, status, is_parent, children_total, children_succeeded,
                         finished_at)
       select 'default', $1, 'succeeded', i % 10 = 0, case when i % 10 = 0 then 5 else 0 end,
              case when i % 10 = 0 then 5 else 0 end, now() - interval '2 hours'
         from generate_series(1, $2::int) as i
       returning id::int as id`,
      [kind, n],
    );
    await store.query(
      `insert into jobs (tenant_id, kind, status, parent_id, finished_at)
       select 'default', 'item', 'succeeded', p.id, now() - interval '2 hours'
         from jobs p cross join generate_series(1, 5)
        where p.is_parent and p.kind = $1`,
      [kind],
    );
    return rows.map((r) => r.id);
  }

  it('shares the work between six sweepers: every job deleted once, children with their parents', async () => {
    await finished('swept', 3000);
    await finished('kept', 50);
    const sweepers = Array.from({ length: 6 }, async () => {
      let deleted = 0;
      for (;;) {
        const n = await deleteFinished(store, 'swept', { ms: 3_600_000 }, 100);
        deleted += n;
        if (n === 0) {
          return deleted;
        }
      }
    });
    const counts = await Promise.all(sweepers);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(3000);
    const left = await store.query<{ kind: string; n: number }>(
      `select kind, count(*)::int as n from jobs group by kind order by kind`,
    );
    // The kind not swept, with its 5 batches' 25 children.
    expect(left).toEqual([
      { kind: 'item', n: 25 },
      { kind: 'kept', n: 50 },
    ]);
  });

  it('skips a job another transaction holds instead of waiting for it', async () => {
    const ids = await finished('swept', 5);
    await other.query('begin');
    await other.query(`select id from jobs where id = $1 for update`, [ids[0]]);
    // Four deleted while the fifth is still held: the statement did not wait for it (with a
    // plain FOR UPDATE it would have, and given way after 100 ms with nothing deleted).
    expect(await deleteFinished(store, 'swept', { ms: 3_600_000 }, 100)).toBe(4);
    await other.query('commit');
    expect(await deleteFinished(store, 'swept', { ms: 3_600_000 }, 100)).toBe(1);
  });

  it('gives way to a transaction holding a child row, and deletes the batch once it is gone', async () => {
    const [parent] = await finished('swept', 1);
    await store.query(`update jobs set is_parent = true, children_total = 5 where id = $1`, [
      parent,
    ]);
    await store.query(
      `insert into jobs (tenant_id, kind, status, parent_id, finished_at)
       select 'default', 'item', 'succeeded', $1, now() - interval '2 hours'
         from generate_series(1, 5)`,
      [parent],
    );
    await other.query('begin');
    await other.query(
      `select id from jobs where parent_id = $1 order by id limit 1 for no key update`,
      [parent],
    );
    // Returns while the other transaction still holds its row: it did not wait for it.
    expect(await deleteFinished(store, 'swept', { ms: 3_600_000 }, 100)).toBe(0);
    expect((await store.query('select id from jobs where id = $1', [parent])).length).toBe(1);
    await other.query('commit');
    expect(await deleteFinished(store, 'swept', { ms: 3_600_000 }, 100)).toBe(1);
    expect(await store.query('select id from jobs')).toEqual([]);
  });
});
