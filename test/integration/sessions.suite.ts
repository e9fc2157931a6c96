import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { eventually } from '../helpers/engine.ts';
import { startFakeLlm } from '../helpers/fake-llm.ts';
import { openHttp } from '../helpers/http.ts';

type Harness = Awaited<ReturnType<typeof openHttp>>;

/** Sessions over HTTP on one store engine, one process. */
export function sessionsSuite(kind: 'pglite' | 'postgres'): void {
  describe(`sessions (${kind})`, () => {
    let h: Harness;

    beforeEach(async (ctx) => {
      h = await openHttp(kind, `sessions:${ctx.task.name}`);
    });

    afterEach(async () => {
      await h.dispose();
    });

    const count = async (sql: string) =>
      (await h.mnemo.store.query<{ n: number }>(sql))[0]?.n ?? -1;

    const append = (session: string, user: string, messages: unknown[], key?: string) =>
      h.call(
        'POST',
        `/v1/sessions/${session}/messages`,
        { user_id: user, messages },
        key === undefined ? {} : { 'idempotency-key': key },
      );

    it('appends, commits into an archive, summarizes it and extracts memory from the user messages', async () => {
      const first = await append('s1', 'u1', [
        { role: 'user', content: 'My name is Ada. I like green tea.' },
        { role: 'assistant', content: 'Nice to meet you, Ada.' },
      ]);
      expect(first).toMatchObject({ status: 200, body: { live_count: 2 } });
      expect(
        (await append('s1', 'u1', [{ role: 'user', content: 'On 2024-03-01 I moved house.' }]))
          .body,
      ).toEqual({ live_count: 3 });

      const commit = await h.call('POST', '/v1/sessions/s1/commit', {});
      expect(commit.status).toBe(200);
      expect(commit.body).toMatchObject({
        status: 'committed',
        archive: { index: 1, message_count: 3 },
        operation: {
          kind: 'session.commit',
          status: 'succeeded',
          result: {
            archive: {
              index: 1,
              message_count: 3,
              summary:
                '3 messages (2 from the user, 1 from the assistant). The user said: My name is Ada. I like green tea. On 2024-03-01 I moved house.',
            },
            profile: { set: { name: 'Ada' } },
            memories: { added: [{ text: 'I like green tea' }] },
            events: { added: [{ date: '2024-03-01', description: 'I moved house' }] },
            summary: { turn_count: 1 },
          },
        },
      });
      const session = await h.call('GET', '/v1/sessions/s1');
      expect(session.body).toEqual({
        user_id: 'u1',
        live_count: 0,
        archives: [
          {
            index: 1,
            message_count: 3,
            summary: expect.stringContaining('3 messages'),
            status: 'succeeded',
            operation_id: commit.body['operation'].id,
          },
        ],
      });
      // The archive is conversation text for search.
      const search = await h.call('GET', '/v1/memory/search?user_id=u1&q=tea&types=conversation');
      expect(search.body['items']).toHaveLength(1);

      // Nothing live: the second commit says so and makes no archive.
      expect((await h.call('POST', '/v1/sessions/s1/commit')).body).toEqual({
        status: 'nothing_to_commit',
      });
      await append('s1', 'u1', [{ role: 'user', content: 'I play chess.' }]);
      const again = await h.call('POST', '/v1/sessions/s1/commit', { wait: true });
      expect(again.body).toMatchObject({ archive: { index: 2, message_count: 1 } });
      expect(
        await count('select count(*)::int as n from session_messages where archive_index is null'),
      ).toBe(0);
      expect(await count('select count(*)::int as n from session_archives')).toBe(2);
    });

    it('answers 202 with the pending operation when not waiting', async () => {
      await append('s2', 'u2', [{ role: 'user', content: 'I like rain.' }]);
      const res = await h.call('POST', '/v1/sessions/s2/commit', { wait: false });
      expect(res.status).toBe(202);
      expect(res.body).toMatchObject({
        status: 'committed',
        archive: { index: 1, message_count: 1 },
        operation: { kind: 'session.commit' },
      });
      const done = await h.mnemo.engine.waitFor(
        'default',
        Number(String(res.body['operation'].id).slice(3)),
        { timeoutMs: 10_000 },
      );
      expect(done.status).toBe('succeeded');
    });

    it('refuses bad input with 4xx and writes nothing', async () => {
      const cases: [unknown, number][] = [
        [{ user_id: 'u', messages: [{ role: 'boss', content: 'hi there' }] }, 400],
        [{ user_id: 'u', messages: [{ role: 'user', content: '' }] }, 400],
        [{ user_id: 'u', messages: [{ role: 'user', content: 'x'.repeat(32_001) }] }, 400],
        [{ user_id: 'u', messages: [] }, 400],
        [{ user_id: 'u', messages: [{ role: 'user', content: 'hi', extra: 1 }] }, 400],
        [{ messages: [{ role: 'user', content: 'hi there' }] }, 400],
        [
          {
            user_id: 'u',
            messages: [{ role: 'user', content: 'x'.repeat(100) }],
            pad: 'y'.repeat(2_000_000),
          },
          413,
        ],
      ];
      for (const [body, status] of cases) {
        const res = await h.call('POST', '/v1/sessions/bad/messages', body);
        expect(res.status, JSON.stringify(body).slice(0, 80)).toBe(status);
        expect(res.body['error'].code).toBe(
          status === 413 ? 'payload_too_large' : 'invalid_request',
        );
      }
      expect((await h.call('POST', '/v1/sessions/bad/messages', '{"user_id":')).status).toBe(400);
      // The whole append is refused when one message is bad: nothing written, no session.
      const mixed = await append('bad', 'u', [
        { role: 'user', content: 'fine' },
        { role: 'robot', content: 'not fine' },
      ]);
      expect(mixed.status).toBe(400);
      expect((await h.call('GET', '/v1/sessions/bad')).status).toBe(404);
      expect((await h.call('POST', '/v1/sessions/bad/commit')).status).toBe(404);
      expect((await h.call('POST', '/v1/sessions/nope/commit', { wait: 'yes' })).status).toBe(400);
      expect(await count('select count(*)::int as n from sessions')).toBe(0);
      expect(await count('select count(*)::int as n from session_messages')).toBe(0);
    });

    it("refuses a message for another user's session", async () => {
      await append('s3', 'alice', [{ role: 'user', content: 'I am Alice.' }]);
      const res = await append('s3', 'mallory', [{ role: 'user', content: 'I am Alice too.' }]);
      expect(res.status).toBe(409);
      expect(res.body['error']).toMatchObject({ code: 'conflict' });
      expect((await h.call('GET', '/v1/sessions/s3')).body).toMatchObject({
        user_id: 'alice',
        live_count: 1,
      });
    });

    it('replays an append and a commit by idempotency key', async () => {
      const msg = [{ role: 'user', content: 'I like jazz.' }];
      expect((await append('s4', 'u4', msg, 'k1')).body).toEqual({ live_count: 1 });
      expect((await append('s4', 'u4', msg, 'k1')).body).toEqual({ live_count: 1 });
      const other = await append('s4', 'u4', [{ role: 'user', content: 'I like rock.' }], 'k1');
      expect(other.status).toBe(409);
      expect(other.body['error'].code).toBe('idempotency_conflict');

      const c1 = await h.call('POST', '/v1/sessions/s4/commit', { idempotency_key: 'c1' });
      const c2 = await h.call('POST', '/v1/sessions/s4/commit', { idempotency_key: 'c1' });
      expect(c1.body['operation'].id).toBe(c2.body['operation'].id);
      expect(c2.body).toMatchObject({ status: 'committed', archive: { index: 1 } });
      await append('s5', 'u4', msg);
      const elsewhere = await h.call('POST', '/v1/sessions/s5/commit', { idempotency_key: 'c1' });
      expect(elsewhere.status).toBe(409);
      expect(await count('select count(*)::int as n from session_archives')).toBe(1);
    });

    it('deleting the user deletes their sessions', async () => {
      await append('s6', 'u6', [{ role: 'user', content: 'I like snow.' }]);
      await h.call('POST', '/v1/sessions/s6/commit');
      await append('s6', 'u6', [{ role: 'user', content: 'Still live.' }]);
      const del = await h.call('DELETE', '/v1/users/u6', { wait: true });
      expect(del.body).toMatchObject({ status: 'succeeded' });
      expect((await h.call('GET', '/v1/sessions/s6')).status).toBe(404);
      expect(await count('select count(*)::int as n from session_messages')).toBe(0);
      // The session id can be used again, by anyone: a fresh archive 1 with its own job.
      const first = await h.call('POST', '/v1/sessions/s6/commit');
      expect(first.status).toBe(404);
      await append('s6', 'u7', [{ role: 'user', content: 'My pet is a cat.' }]);
      const reused = await h.call('POST', '/v1/sessions/s6/commit');
      expect(reused.body).toMatchObject({
        status: 'committed',
        archive: { index: 1, message_count: 1 },
        operation: { status: 'succeeded', result: { profile: { set: { pet: 'a cat' } } } },
      });
    });

    it('undoes a commit whose job failed for good: its messages are live again for the next commit', async () => {
      const llm = await startFakeLlm(0);
      const h2 = await openHttp(kind, 'sessions:failed-commit', {
        env: { MNEMO_EXTRACTOR: 'openai', MNEMO_LLM_BASE_URL: llm.url, MNEMO_LLM_MODEL: 'fake' },
      });
      try {
        await h2.call('POST', '/v1/sessions/sf/messages', {
          user_id: 'uf',
          messages: [
            { role: 'user', content: 'My pet is a dog.' },
            { role: 'assistant', content: 'Nice.' },
          ],
        });
        llm.failNext(2, 400); // the summary and the extraction: refused, not retried
        const failed = await h2.call('POST', '/v1/sessions/sf/commit', { idempotency_key: 'c1' });
        expect(failed.body).toMatchObject({ status: 'committed', operation: { status: 'failed' } });
        expect((await h2.call('GET', '/v1/sessions/sf')).body).toMatchObject({
          live_count: 2,
          archives: [],
        });
        // The key is free again with its archive; the messages go into the next archive.
        const again = await h2.call('POST', '/v1/sessions/sf/commit', { idempotency_key: 'c1' });
        expect(again.body).toMatchObject({
          status: 'committed',
          archive: { index: 2, message_count: 2 },
          operation: { status: 'succeeded', result: { profile: { set: { pet: 'a dog' } } } },
        });
        expect((await h2.call('GET', '/v1/sessions/sf')).body).toMatchObject({
          live_count: 0,
          archives: [{ index: 2, message_count: 2, status: 'succeeded' }],
        });
      } finally {
        await h2.dispose();
        await llm.close();
      }
    });

    it('gives messages back once: a commit of given-back messages that fails again stays archived', async () => {
      const llm = await startFakeLlm(0);
      const h2 = await openHttp(kind, 'sessions:failing-twice', {
        env: { MNEMO_EXTRACTOR: 'openai', MNEMO_LLM_BASE_URL: llm.url, MNEMO_LLM_MODEL: 'fake' },
      });
      try {
        await h2.call('POST', '/v1/sessions/sp/messages', {
          user_id: 'up',
          messages: [{ role: 'user', content: 'My pet is a dog.' }],
        });
        llm.failNext(2, 400); // the summary and the extraction, refused
        const first = await h2.call('POST', '/v1/sessions/sp/commit', {});
        expect(first.body).toMatchObject({ operation: { status: 'failed' } });
        await h2.call('POST', '/v1/sessions/sp/messages', {
          user_id: 'up',
          messages: [{ role: 'user', content: 'My city is Oslo.' }],
        });
        llm.failNext(2, 400); // the same words fail again
        const second = await h2.call('POST', '/v1/sessions/sp/commit', {});
        expect(second.body).toMatchObject({
          archive: { index: 2, message_count: 2 },
          operation: { status: 'failed' },
        });
        // Kept as it ended: the next commit does not bring them back a third time.
        expect((await h2.call('GET', '/v1/sessions/sp')).body).toMatchObject({
          live_count: 0,
          archives: [{ index: 2, message_count: 2, status: 'failed' }],
        });
        expect((await h2.call('POST', '/v1/sessions/sp/commit', {})).body).toMatchObject({
          status: 'nothing_to_commit',
        });
      } finally {
        await h2.dispose();
        await llm.close();
      }
    });

    it('keeps a cancelled commit archived when a newer commit of the session exists (older words never after newer)', async () => {
      const h2 = await openHttp(kind, 'sessions:cancelled-older', { worker: false });
      try {
        const say = (content: string) =>
          h2.call('POST', '/v1/sessions/so/messages', {
            user_id: 'uo',
            messages: [{ role: 'user', content }],
          });
        await say('My city is Paris.');
        const older = await h2.call('POST', '/v1/sessions/so/commit', { wait: false });
        await say('My city is Berlin.');
        await h2.call('POST', '/v1/sessions/so/commit', { wait: false });
        const id = String(older.body['operation'].id);
        expect((await h2.call('POST', `/v1/operations/${id}/cancel`)).body).toMatchObject({
          status: 'cancelled',
        });
        expect((await h2.call('GET', '/v1/sessions/so')).body).toMatchObject({
          live_count: 0,
          archives: [
            { index: 1, message_count: 1, status: 'cancelled' },
            { index: 2, message_count: 1, status: 'pending' },
          ],
        });
        await h2.mnemo.startWorker();
        await eventually(
          async () =>
            (await h2.call('GET', '/v1/users/uo/profile')).body['attributes']?.['city']?.value ===
            'Berlin',
        );
        expect((await h2.call('POST', '/v1/sessions/so/commit', {})).body).toMatchObject({
          status: 'nothing_to_commit',
        });
      } finally {
        await h2.dispose();
      }
    });

    it('undoes a commit whose job is cancelled while pending; a finished commit stays', async () => {
      const h2 = await openHttp(kind, 'sessions:cancelled-commit', { worker: false });
      try {
        await h2.call('POST', '/v1/sessions/sc/messages', {
          user_id: 'uc',
          messages: [
            { role: 'user', content: 'My pet is a cat.' },
            { role: 'assistant', content: 'Nice.' },
          ],
        });
        const pending = await h2.call('POST', '/v1/sessions/sc/commit', {
          wait: false,
          idempotency_key: 'k1',
        });
        expect(pending.body).toMatchObject({ archive: { index: 1, message_count: 2 } });
        const id = String(pending.body['operation'].id);
        const cancelled = await h2.call('POST', `/v1/operations/${id}/cancel`);
        expect(cancelled.body).toMatchObject({ status: 'cancelled' });
        expect((await h2.call('GET', '/v1/sessions/sc')).body).toMatchObject({
          live_count: 2,
          archives: [],
        });
        // The key went with the archive: the same key commits the messages anew.
        const again = await h2.call('POST', '/v1/sessions/sc/commit', {
          wait: false,
          idempotency_key: 'k1',
        });
        expect(again.body).toMatchObject({ archive: { index: 2, message_count: 2 } });
        expect(String(again.body['operation'].id)).not.toBe(id);
      } finally {
        await h2.dispose();
      }
      // With a worker: the commit finishes; cancelling it afterwards changes nothing.
      await append('sd', 'ud', [{ role: 'user', content: 'I like tea.' }]);
      const done = await h.call('POST', '/v1/sessions/sd/commit', {});
      expect(done.body).toMatchObject({ operation: { status: 'succeeded' } });
      const late = await h.call(
        'POST',
        `/v1/operations/${String(done.body['operation'].id)}/cancel`,
      );
      expect(late.body).toMatchObject({ status: 'succeeded' });
      expect((await h.call('GET', '/v1/sessions/sd')).body).toMatchObject({
        live_count: 0,
        archives: [{ index: 1, message_count: 1, status: 'succeeded' }],
      });
    });

    // A commit's job that runs only after its session was deleted and created again (same id,
    // archives from 1 anew) must not take the new archive 1 for its own.
    it('a commit job that runs late never takes a recreated session’s archive of the same index', async () => {
      const late = await openHttp(kind, 'sessions:late-commit', { worker: false });
      try {
        const call = late.call;
        await call('POST', '/v1/sessions/s9/messages', {
          user_id: 'u9',
          messages: [{ role: 'user', content: 'My pet is a dog.' }],
        });
        const old = await call('POST', '/v1/sessions/s9/commit', { wait: false });
        // The session goes (as a user's deletion takes it) while its job still waits, and the
        // same id is used again at once.
        await late.mnemo.store.query(`delete from sessions where id = 's9'`);
        await call('POST', '/v1/sessions/s9/messages', {
          user_id: 'u10',
          messages: [{ role: 'user', content: 'My pet is a cat.' }],
        });
        const fresh = await call('POST', '/v1/sessions/s9/commit', { wait: false });
        expect(fresh.body['archive']).toEqual({ index: 1, message_count: 1 });
        await late.mnemo.startWorker({ pollIntervalMs: 50 });
        const done = async (id: string) => {
          let op: Record<string, unknown> = {};
          await eventually(async () => {
            op = (await call('GET', `/v1/operations/${id}`)).body;
            return op['status'] === 'succeeded';
          });
          return op;
        };
        expect((await done(old.body['operation']['id']))['result']).toMatchObject({
          skipped: 'the session was deleted',
        });
        expect((await done(fresh.body['operation']['id']))['result']).toMatchObject({
          profile: { set: { pet: 'a cat' } },
        });
        // u9 got nothing of u10's words; u10's turn is written once.
        expect((await call('GET', '/v1/users/u9/profile')).body['attributes']).toEqual({});
        expect((await call('GET', '/v1/users/u10/profile')).body['summary']).toMatchObject({
          turn_count: 1,
        });
      } finally {
        await late.dispose();
      }
    });
  });
}
