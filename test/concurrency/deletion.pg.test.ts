import { expect, it } from 'vitest';

import { eventually } from '../helpers/engine.ts';
import { describePg, sleepingIn } from '../helpers/pg.ts';
import { type Json, twoServersOnPostgres } from '../helpers/serve.ts';

/**
 * A user's deletion against writes for that user outside the user's lane that are in flight
 * when it runs (a sync upload, a session's first append), on two server processes: the
 * deletion waits for them and deletes what they wrote. Test-only triggers hold those writes'
 * transactions open (pg_sleep) after their first rows, which is when the race used to lose
 * them: the deletion's statements did not see the uncommitted rows, and committed first.
 */
describePg('user deletion against writes in flight, 2 server processes on PostgreSQL', () => {
  // Slow writes for users whose id begins with "slow": 1.5 s inside their transaction.
  const servers = twoServersOnPostgres(
    'deletion-gate',
    ['serve'],
    `create function test_slow_write() returns trigger language plpgsql as $$
     begin
       if new.user_id like 'slow%' then perform pg_sleep(1.5); end if;
       return new;
     end $$;
     create trigger test_slow_batch after insert on sync_batches
       for each row execute function test_slow_write();
     create trigger test_slow_session after insert on sessions
       for each row execute function test_slow_write();`,
  );
  const { call } = servers;

  /** Resolves once a statement of this schema's database sleeps in the trigger. */
  const sleeping = () => sleepingIn(servers.store(), ['%into sync_batches%', '%into sessions%']);

  const rowsOf = async (userId: string) => {
    const counts: Record<string, number> = {};
    for (const table of [
      'sync_users',
      'sync_batches',
      'sync_segments',
      'sync_audio',
      'conversations',
      'sessions',
      'session_messages',
    ]) {
      const where =
        table === 'session_messages'
          ? `session_id in (select id from sessions where user_id = $1)`
          : `user_id = $1`;
      const [row] = await servers
        .store()
        .query<{ n: number }>(`select count(*)::int as n from ${table} where ${where}`, [userId]);
      counts[table] = row?.n ?? -1;
    }
    return counts;
  };

  const empty = {
    sync_users: 0,
    sync_batches: 0,
    sync_segments: 0,
    sync_audio: 0,
    conversations: 0,
    sessions: 0,
    session_messages: 0,
  };

  it('a sync upload in flight when the deletion runs is deleted with the rest, and nothing of it comes back', async () => {
    const body = {
      user_id: 'slow-sync',
      idempotency_key: 'upload-1',
      segments: [0, 10, 20].map((s) => ({
        id: `seg-${s}`,
        started_at: new Date(Date.UTC(2026, 5, 1, 8, 0, s)).toISOString(),
        ended_at: new Date(Date.UTC(2026, 5, 1, 8, 0, s + 5)).toISOString(),
        transcript: `I walked to the market at ${s}.`,
      })),
    };
    const upload = call(0, 'POST', '/v1/sync', body);
    await sleeping();
    const deletion = await call(1, 'DELETE', '/v1/users/slow-sync', { wait: true });
    expect(deletion.body).toMatchObject({ status: 'succeeded' });
    const uploaded = await upload;
    expect(uploaded.status).toBe(202);
    // The upload's jobs run after the deletion: they find their batch gone and write nothing.
    let op: Json = {};
    await eventually(async () => {
      op = (await call(0, 'GET', `/v1/operations/${String(uploaded.body['id'])}`)).body;
      return ['succeeded', 'failed', 'cancelled'].includes(String(op['status']));
    }, 30_000);
    expect(op['status']).toBe('succeeded');
    expect(await rowsOf('slow-sync')).toEqual(empty);
    expect((await call(1, 'GET', '/v1/users/slow-sync/conversations')).body['items']).toEqual([]);
    // It came before the deletion (which waited for it), though its id is higher: redacted,
    // no longer the user's, and its key is free. (Its jobs' payloads hold ids, not words.)
    expect(
      (await call(1, 'GET', '/v1/operations?user_id=slow-sync&kind=sync.batch')).body['items'],
    ).toEqual([]);
    const [words] = await servers
      .store()
      .query<{ n: number }>(
        `select count(*)::int as n from jobs where payload::text like '%market%'`,
      );
    expect(words?.n).toBe(0);
    await servers.store().exec(`drop trigger test_slow_batch on sync_batches`);
    const again = await call(1, 'POST', '/v1/sync', body);
    expect(again.status).toBe(202);
    expect(again.body['id']).not.toBe(uploaded.body['id']);
  });

  it('a first append in flight when the deletion runs is deleted with the rest', async () => {
    const append = call(0, 'POST', '/v1/sessions/s-slow/messages', {
      user_id: 'slow-session',
      messages: [{ role: 'user', content: 'My pet is a cat.' }],
    });
    await sleeping();
    const deletion = await call(1, 'DELETE', '/v1/users/slow-session', { wait: true });
    expect(deletion.body).toMatchObject({ status: 'succeeded' });
    expect((await append).status).toBe(200);
    expect(await rowsOf('slow-session')).toEqual(empty);
    expect((await call(1, 'GET', '/v1/sessions/s-slow')).status).toBe(404);
  });
});
