import { expect, it } from 'vitest';

import { describePg, sleepingIn } from '../helpers/pg.ts';
import { type Json, twoServersOnPostgres } from '../helpers/serve.ts';

/**
 * Cancelling a session commit's pending job while the next commit of that session runs its
 * phase 1 in another process (2 `serve --no-worker` processes, so the jobs stay pending). A
 * test-only trigger holds the cancel's transaction open (pg_sleep) as its job row moves.
 */
describePg('cancelling a session commit against the next commit, 2 processes on PostgreSQL', () => {
  const servers = twoServersOnPostgres(
    'session-cancel',
    ['serve', '--no-worker'],
    `create function test_slow_cancel() returns trigger language plpgsql as $$
     begin
       perform pg_sleep(1.5);
       return new;
     end $$;
     create trigger test_slow_cancel after update on jobs
       for each row when (old.status = 'pending' and new.status = 'cancelled')
       execute function test_slow_cancel();`,
  );
  const { call } = servers;

  it('never gives a cancelled commit’s older messages back behind a newer commit made meanwhile', async () => {
    const say = (content: string) =>
      call(0, 'POST', '/v1/sessions/s/messages', {
        user_id: 'u',
        messages: [{ role: 'user', content }],
      });
    await say('My city is Paris.');
    const older = await call(0, 'POST', '/v1/sessions/s/commit', { wait: false });
    expect(older.body).toMatchObject({ archive: { index: 1 } });
    await say('My city is Berlin.');
    const cancel = call(0, 'POST', `/v1/operations/${String(older.body['operation'].id)}/cancel`);
    // The newer commit, in the other process, while the cancel's transaction is open.
    await sleepingIn(servers.store(), ['%finish_jobs%']);
    const newer = await call(1, 'POST', '/v1/sessions/s/commit', { wait: false });
    expect((await cancel).body).toMatchObject({ status: 'cancelled' });
    const session = (await call(1, 'GET', '/v1/sessions/s')).body as Json;
    // Either the cancel gave Paris back before the newer commit took the live messages (and
    // the newer archive holds both, in order), or the newer commit came first and the
    // cancelled archive keeps Paris. Never Paris live again after the Berlin archive.
    expect(session['live_count']).toBe(0);
    const messages = await servers
      .store()
      .query<{ content: string; archive_index: number }>(
        `select content, archive_index from session_messages order by id`,
      );
    const newerIndex = (newer.body as Json)['archive']['index'] as number;
    const paris = messages.find((m) => m.content.includes('Paris'));
    const berlin = messages.find((m) => m.content.includes('Berlin'));
    expect(berlin?.archive_index).toBe(newerIndex);
    expect([1, newerIndex]).toContain(paris?.archive_index);
  });
});
