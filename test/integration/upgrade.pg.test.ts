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
});
