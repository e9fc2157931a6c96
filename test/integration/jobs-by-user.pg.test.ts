import { afterAll, beforeAll, expect, it } from 'vitest';

import { createEngine, type Engine } from '../../src/engine/index.ts';
import { listJobsQuery } from '../../src/engine/sql/rows.ts';
import { REDACT_USER_JOBS } from '../../src/memory/pipeline.ts';
import { migrate } from '../../src/store/migrate.ts';
import type { Store } from '../../src/store/types.ts';
import { createPgTestStore, describePg } from '../helpers/pg.ts';

// A user's operations are read by index (migration 0012): listing them, and redacting them
// when the user is deleted, must not read every job of the tenant. The plans are checked on a
// table where the user owns 40 jobs of 30,040, so that the planner's choice is the real one.
describePg("a user's operations by index (PostgreSQL)", () => {
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
    await store.query('analyze jobs');
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
      `select id from jobs where payload ->> 'user_id' = 'alice' order by id desc`,
    );
    expect(seen).toEqual(expected.map((row) => row.id));
    expect(seen).toHaveLength(40);
  });

  it('redacts a deleted user’s operations through jobs_user_idx', async () => {
    const [last] = await store.query<{ id: number }>('select max(id)::int as id from jobs');
    const text = await plan(REDACT_USER_JOBS, ['default', 'alice', (last?.id ?? 0) + 1]);
    expect(text).toContain('"Index Name":"jobs_user_idx"');
  });
});
