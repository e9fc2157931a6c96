import type pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';

import { createMnemo, type Mnemo } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { eventually } from '../helpers/engine.ts';
import {
  connectToSchema,
  describePg,
  dropSchema,
  testDatabaseUrl,
  testSchemaName,
} from '../helpers/pg.ts';

const T0 = Date.parse('2026-06-01T08:00:00.000Z');
const at = (s: number) => new Date(T0 + s * 1000).toISOString();

// Every apply that writes a user's sync rows takes the user's lock (the sync_users row)
// before any of them. One that locked a segment first and then waited for the user's lock
// could deadlock with a cursor that, holding the lock, writes that segment; PostgreSQL
// breaks a deadlock only after deadlock_timeout (1 s). Here another connection holds the
// user's lock: the blocked apply must not hold the user's segments meanwhile.
describePg('sync applies take the user lock before the user rows (PostgreSQL)', () => {
  const schema = testSchemaName('sync-locks');
  let mnemo: Mnemo;
  let other: pg.Client;
  let otherPid = 0;

  beforeAll(async () => {
    mnemo = await createMnemo(
      loadConfig({ MNEMO_DATABASE_URL: testDatabaseUrl, MNEMO_DATABASE_SCHEMA: schema }),
    );
    await mnemo.startWorker();
    other = await connectToSchema(schema);
    otherPid = (await other.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
  });

  afterAll(async () => {
    await other?.end();
    await mnemo?.close();
    await dropSchema(schema);
  });

  const upload = (userId: string, id: string, from: number) =>
    mnemo.sync(
      'default',
      userId,
      [{ id, started_at: at(from), ended_at: at(from + 5), transcript: `words of ${id}` }],
      { mergeWindowS: 120 },
      { wait: true, timeoutMs: 30_000 },
    );

  /** Whether some statement waits for a lock the other connection holds. */
  const waitingOnOther = async () => {
    const [row] = await mnemo.store.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity where $1::int = any(pg_blocking_pids(pid))`,
      [otherPid],
    );
    return (row?.n ?? 0) > 0;
  };

  /** Holds the user's lock on the other connection while `blocked` runs into it. */
  async function whileUserLocked<T>(userId: string, blocked: () => Promise<T>): Promise<T> {
    await other.query('begin');
    await other.query(
      `select 1 from sync_users where tenant_id = 'default' and user_id = $1 for update`,
      [userId],
    );
    const running = blocked();
    try {
      await eventually(waitingOnOther);
      // The blocked apply holds none of the user's segments: they can be written at once
      // (well before deadlock_timeout, after which PostgreSQL would break the wait anyway).
      await other.query(`set local lock_timeout = '200ms'`);
      await other.query(
        `update sync_segments set reason = reason where tenant_id = 'default' and user_id = $1`,
        [userId],
      );
    } finally {
      await other.query('commit');
    }
    return running;
  }

  it('a segment apply waits for the user lock before it writes its segment', async () => {
    // A first upload creates the user's lock row.
    expect((await upload('u1', 'a', 0)).finished).toBe(true);
    const second = await whileUserLocked('u1', () => upload('u1', 'b', 600));
    expect(second.finished).toBe(true);
    expect(second.operation.status).toBe('succeeded');
  });

  it("a user's deletion waits for the user lock before it deletes the user's segments", async () => {
    expect((await upload('u2', 'a', 0)).finished).toBe(true);
    const deleted = await whileUserLocked('u2', () =>
      mnemo.deleteUser('default', 'u2', { wait: true, timeoutMs: 30_000 }),
    );
    expect(deleted.operation.status).toBe('succeeded');
    const [left] = await mnemo.store.query<{ n: number }>(
      `select count(*)::int as n from sync_segments where tenant_id = 'default' and user_id = 'u2'`,
    );
    expect(left?.n).toBe(0);
  });
});
