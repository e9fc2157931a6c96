import { afterEach, beforeEach, expect, it } from 'vitest';

import { migrations } from '../../src/store/generated/migrations.ts';
import { migrate } from '../../src/store/migrate.ts';
import type { Store } from '../../src/store/types.ts';
import { createPgTestStore, describePg } from '../helpers/pg.ts';

// Migrations that fill a new column from the rows already there, run on a database holding
// such rows (the state of a deployment that upgrades), not only on an empty one.
describePg('upgrading a database with data (PostgreSQL)', () => {
  let store: Store;
  let dispose: () => Promise<void>;

  beforeEach(async (ctx) => {
    ({ store, dispose } = createPgTestStore(`upgrade:${ctx.task.name}`));
  });

  afterEach(async () => {
    await dispose();
  });

  it('0015 records each user’s longest conversation in hours, and nothing for a user without any', async () => {
    await migrate(
      store,
      migrations.filter((m) => m.id < 15),
    );
    await store.query(
      `insert into sync_users (tenant_id, user_id)
       values ('default', 'ann'), ('default', 'bob'), ('default', 'cy')`,
    );
    await store.query(
      `insert into conversations (tenant_id, user_id, started_at, finished_at)
       values ('default', 'ann', '2026-01-01 10:00Z', '2026-01-01 10:20Z'),
              ('default', 'ann', '2026-01-02 08:00Z', '2026-01-02 11:30Z'),
              ('default', 'ann', '2026-01-03 09:00Z', '2026-01-03 09:05Z'),
              ('default', 'cy', '2026-03-28 22:00Z', '2026-03-30 00:00Z')`,
    );
    expect(await migrate(store)).toEqual(migrations.filter((m) => m.id >= 15).map((m) => m.id));
    const rows = await store.query<{ user_id: string; longest: string }>(
      `select user_id, longest_conversation::text as longest from sync_users order by user_id`,
    );
    expect(rows).toEqual([
      { user_id: 'ann', longest: '03:30:00' },
      { user_id: 'bob', longest: '00:00:00' },
      // Hours, not a day: a calendar day is 23 hours across a change to summer time.
      { user_id: 'cy', longest: '26:00:00' },
    ]);
  });

  it('0017 inlines lane_lock_key with the same keys as before and as finish_jobs’s copy', async () => {
    await migrate(
      store,
      migrations.filter((m) => m.id < 17),
    );
    // Tenants and lanes of many lengths and characters, including multibyte ones and ':'.
    await store.query(`create table lane_samples (tenant text, lane text)`);
    await store.query(
      `insert into lane_samples
       select repeat(chr(65 + i % 50) || 'é:', i % 40), 'user:' || i || repeat('ß', i % 7)
         from generate_series(1, 2000) as i`,
    );
    const keys = `select tenant, lane, lane_lock_key(tenant, lane)::text as key from lane_samples
                  order by tenant, lane`;
    const before = await store.query<{ key: string }>(keys);
    await migrate(store);
    expect(await store.query(keys)).toEqual(before);
    // finish_jobs writes the key out; enqueue_jobs calls the function: both lock one lane.
    const [differ] = await store.query<{ n: number }>(
      `select count(*)::int as n from lane_samples
        where lane_lock_key(tenant, lane)
              <> hashtextextended('lane:' || length(tenant) || ':' || tenant || ':' || lane, 0)`,
    );
    expect(differ?.n).toBe(0);
    // Inlined: the plan computes the hash itself instead of calling the function.
    const plan = (
      await store.query<{ 'QUERY PLAN': string }>(
        `explain (verbose, format text) select lane_lock_key(tenant, lane) from lane_samples`,
      )
    )
      .map((r) => r['QUERY PLAN'])
      .join('\n');
    expect(plan).toContain('hashtextextended');
    expect(plan).not.toContain('lane_lock_key');
  });
});
