import type pg from 'pg';
import { afterEach, beforeEach, expect, it } from 'vitest';

import { createEngine, type Engine } from '../../src/engine/index.ts';
import { claimJobs, extendLeases } from '../../src/engine/sql/claim.ts';
import { migrate } from '../../src/store/migrate.ts';
import type { Store } from '../../src/store/types.ts';
import { connectToSchema, createPgTestStore, describePg } from '../helpers/pg.ts';

// A heartbeat extends every lease its worker holds, while that worker's completions move some
// of the same jobs. It used to wait for a row a completion had locked while holding the rows it
// had already extended; a completion of several jobs then wanting one of those made a deadlock,
// which PostgreSQL breaks after deadlock_timeout (1 s), stalling every job of the completion.
describePg('heartbeat against a completion in flight (PostgreSQL)', () => {
  let store: Store;
  let dispose: () => Promise<void>;
  let engine: Engine;
  let other: pg.Client;

  beforeEach(async (ctx) => {
    ({ store, dispose } = createPgTestStore(`heartbeat:${ctx.task.name}`));
    await migrate(store);
    engine = createEngine({ store });
    engine.register('step', {});
    other = await connectToSchema(store.schema);
  });

  afterEach(async () => {
    await other.end();
    await engine.stop();
    await dispose();
  });

  async function runningJobs(n: number) {
    for (let i = 0; i < n; i++) {
      await engine.enqueue(store, { kind: 'step', tenantId: 'default', payload: { i } });
    }
    const claimed = await claimJobs(store, n, 30_000, 'worker-a', ['step']);
    expect(claimed).toHaveLength(n);
    return claimed.map((row) => ({ id: row.id, token: row.lease_token }));
  }

  async function leaseSecondsLeft(id: number): Promise<number> {
    const [row] = await store.query<{ left: number }>(
      `select extract(epoch from lease_expires_at - now())::float8 as left from jobs where id = $1`,
      [id],
    );
    return row!.left;
  }

  it('skips a job another transaction holds, without waiting and without calling it lost', async () => {
    const [x, y, z] = await runningJobs(3);
    // A completion of y (and, next, of x) in flight on another connection.
    await other.query('begin');
    await other.query(`update jobs set updated_at = now() where id = $1`, [y!.id]);

    const heartbeat = extendLeases(store, [x!, y!, z!], 600_000);
    const outcome = await Promise.race([
      heartbeat.then((lost) => ({ lost })),
      new Promise<'blocked'>((resolve) => setTimeout(() => resolve('blocked'), 10_000)),
    ]);
    // The old statement is still waiting for y here, holding x and z.
    expect(outcome).toEqual({ lost: [] });

    // The completion goes on to x: no deadlock, nothing waits for the heartbeat.
    await other.query(`update jobs set updated_at = now() where id = $1`, [x!.id]);
    await other.query('commit');

    expect(await leaseSecondsLeft(x!.id)).toBeGreaterThan(500);
    expect(await leaseSecondsLeft(z!.id)).toBeGreaterThan(500);
    // y kept its lease from the claim; the next heartbeat extends it.
    expect(await leaseSecondsLeft(y!.id)).toBeLessThan(31);
    expect(await extendLeases(store, [y!], 600_000)).toEqual([]);
    expect(await leaseSecondsLeft(y!.id)).toBeGreaterThan(500);
  });

  it('extends a job whose row is only key-share locked (a child being inserted under it)', async () => {
    const [x] = await runningJobs(1);
    await other.query('begin');
    await other.query(`select id from jobs where id = $1 for key share`, [x!.id]);
    try {
      expect(await extendLeases(store, [x!], 600_000)).toEqual([]);
    } finally {
      await other.query('commit');
    }
    expect(await leaseSecondsLeft(x!.id)).toBeGreaterThan(500);
  });

  it('still reports a job lost when it is not running under its token any more', async () => {
    const [x, y, z] = await runningJobs(3);
    await store.query(`update jobs set status = 'succeeded', finished_at = now() where id = $1`, [
      y!.id,
    ]);
    await store.query(`update jobs set lease_token = lease_token + 1 where id = $1`, [z!.id]);
    // Locked by another transaction as well: lost wins over busy.
    await other.query('begin');
    await other.query(`update jobs set updated_at = now() where id = $1`, [z!.id]);
    try {
      expect((await extendLeases(store, [x!, y!, z!], 600_000)).sort()).toEqual(
        [y!.id, z!.id].sort(),
      );
    } finally {
      await other.query('commit');
    }
    expect(await leaseSecondsLeft(x!.id)).toBeGreaterThan(500);
  });
});
