import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import { eventually } from '../helpers/engine.ts';
import { startFakeLlm } from '../helpers/fake-llm.ts';
import { type FakeStt, silentWav, speechWav, startFakeStt } from '../helpers/fake-stt.ts';
import { openHttp } from '../helpers/http.ts';

type Harness = Awaited<ReturnType<typeof openHttp>>;

const T0 = Date.parse('2026-06-01T10:00:00.000Z');
const at = (s: number) => new Date(T0 + s * 1000).toISOString();
const b64 = (wav: Buffer) => wav.toString('base64');

/** Offline sync over HTTP on one store engine, one process. */
export function syncSuite(kind: 'pglite' | 'postgres'): void {
  describe(`offline sync (${kind})`, () => {
    let stt: FakeStt;
    let h: Harness;

    beforeAll(async () => {
      stt = await startFakeStt();
    });

    afterAll(async () => {
      await stt.close();
    });

    beforeEach(async (ctx) => {
      h = await openHttp(kind, `sync:${ctx.task.name}`, {
        env: { MNEMO_STT_BASE_URL: stt.url, MNEMO_AUDIO_RETENTION_S: '1' },
      });
    });

    afterEach(async () => {
      await h.dispose();
    });

    const count = async (sql: string) =>
      (await h.mnemo.store.query<{ n: number }>(sql))[0]?.n ?? -1;

    const finished = async (opId: string) => {
      let op: Record<string, unknown> = {};
      await eventually(async () => {
        op = (await h.call('GET', `/v1/operations/${opId}`)).body;
        return ['succeeded', 'failed'].includes(String(op['status']));
      }, 30_000);
      return op;
    };

    it('assigns segments whose transcriptions finish newest first as if in time order, and summarizes once', async () => {
      const wavs = [0, 1, 2].map((i) => speechWav(100 + i));
      // The oldest segment's transcription finishes last.
      wavs.forEach((wav, i) =>
        stt.script(wav, { text: `Part ${i} of the walk.`, delayMs: 300 - i * 140 }),
      );
      const res = await h.call('POST', '/v1/sync', {
        user_id: 'u1',
        device_id: 'pendant',
        segments: [0, 1, 2].map((i) => ({
          id: `seg-${i}`,
          started_at: at(i * 30),
          ended_at: at(i * 30 + 10),
          audio_wav_base64: b64(wavs[i] as Buffer),
        })),
      });
      expect(res.status).toBe(202);
      expect(res.body['kind']).toBe('sync.batch');
      const op = await finished(res.body['id']);
      expect(op).toMatchObject({
        status: 'succeeded',
        result: {
          conversations: { created: [expect.stringMatching(/^conv_\d+$/)], merged: [] },
          segments: { assigned: 3, skipped: 0, duplicate: 0, failed: 0 },
        },
      });
      const list = await h.call('GET', '/v1/users/u1/conversations');
      expect(list.body['items']).toEqual([
        {
          id: expect.stringMatching(/^conv_/),
          started_at: at(0),
          finished_at: at(70),
          segment_ids: ['seg-0', 'seg-1', 'seg-2'],
          summary: expect.stringContaining('Part 0 of the walk. Part 1 of the walk.'),
        },
      ]);
      expect(await count('select summary_count as n from conversations')).toBe(1);

      // The same upload again: every segment a duplicate, nothing changes.
      const again = await h.call('POST', '/v1/sync', {
        user_id: 'u1',
        segments: [0, 1, 2].map((i) => ({
          id: `seg-${i}`,
          started_at: at(i * 30),
          ended_at: at(i * 30 + 10),
          audio_wav_base64: b64(wavs[i] as Buffer),
        })),
      });
      expect((await finished(again.body['id']))['result']).toEqual({
        conversations: { created: [], merged: [] },
        segments: { assigned: 0, skipped: 0, duplicate: 3, failed: 0 },
      });
      expect((await h.call('GET', '/v1/users/u1/conversations')).body['items']).toEqual(
        list.body['items'],
      );
      expect(await count('select summary_count as n from conversations')).toBe(1);
    });

    it('lists conversations page by page in time order', async () => {
      // Five conversations 10 minutes apart.
      const starts = [0, 1, 2, 3, 4].map((i) => at(i * 600));
      const res = await h.call('POST', '/v1/sync', {
        user_id: 'u9',
        segments: starts.map((started_at, i) => ({
          id: `p${i}`,
          started_at,
          ended_at: at(i * 600 + 5),
          transcript: `Talk ${i}.`,
        })),
      });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      await finished(res.body['id']);
      const seen = (
        await h.pages<{ segment_ids: string[] }>('/v1/users/u9/conversations?limit=2')
      ).map((page) => page.map((c) => c.segment_ids[0]));
      expect(seen).toEqual([['p0', 'p1'], ['p2', 'p3'], ['p4']]);
      const all = await h.call('GET', '/v1/users/u9/conversations');
      expect(all.body['items']).toHaveLength(5);
      expect(all.body['next_cursor']).toBeNull();
      for (const bad of [
        'cursor=abc',
        'cursor=12',
        'cursor=9223372036854775807_1', // past bigint's digits
        'cursor=253402300800000000_1', // after the year 9999
        'cursor=-62135596800000001_1', // before the year 1
        'limit=0',
        'limit=1001',
      ]) {
        const res = await h.call('GET', `/v1/users/u9/conversations?${bad}`);
        expect(res.status).toBe(400);
        expect(res.body).toMatchObject({ error: { code: 'invalid_request' } });
      }
    });

    it('skips a silent segment and a failed transcription in the middle of a cluster, and keeps the cluster one conversation', async () => {
      const speech = [0, 1, 2, 3].map((i) => speechWav(200 + i));
      speech.forEach((wav, i) => stt.script(wav, { text: `Sentence ${i}.` }));
      stt.script(speech[2] as Buffer, { status: 400 }); // final: not retried
      const segments = [
        { id: 'a', started_at: at(0), ended_at: at(5), audio_wav_base64: b64(speech[0]!) },
        { id: 'b', started_at: at(20), ended_at: at(25), audio_wav_base64: b64(silentWav()) },
        { id: 'c', started_at: at(40), ended_at: at(45), audio_wav_base64: b64(speech[2]!) },
        { id: 'd', started_at: at(60), ended_at: at(65), transcript: '   ' },
        { id: 'e', started_at: at(80), ended_at: at(85), transcript: 'The end.' },
        // Another cluster, 10 minutes later.
        { id: 'f', started_at: at(700), ended_at: at(705), audio_wav_base64: b64(speech[3]!) },
      ];
      const res = await h.call('POST', '/v1/sync', { user_id: 'u2', segments });
      const op = await finished(res.body['id']);
      expect(op['result']).toMatchObject({
        segments: { assigned: 3, skipped: 2, duplicate: 0, failed: 1 },
      });
      const items = (await h.call('GET', '/v1/users/u2/conversations')).body['items'];
      expect(items).toMatchObject([
        { started_at: at(0), finished_at: at(85), segment_ids: ['a', 'e'] },
        { started_at: at(700), finished_at: at(705), segment_ids: ['f'] },
      ]);
      const reasons = await h.mnemo.store.query<{ id: string; state: string; reason: string }>(
        `select id, state, reason from sync_segments where user_id = 'u2' and reason is not null
          order by id`,
      );
      expect(reasons).toEqual([
        { id: 'b', state: 'skipped', reason: 'silent audio' },
        { id: 'c', state: 'failed', reason: expect.stringContaining('HTTP 400') },
        { id: 'd', state: 'skipped', reason: 'empty transcript' },
      ]);
    });

    it('merges conversations that a later upload bridges, as if every segment had come in time order', async () => {
      const seg = (n: number) => ({
        id: `m${n}`,
        started_at: at(n * 60),
        ended_at: at(n * 60 + 50),
        transcript: `Minute ${n}.`,
      });
      // Minutes 6-9 first: one conversation. Then minutes 0-5: they start more than the
      // window (120 s) before it, so they begin their own, until minute 4 comes within the
      // window of both: the two become one.
      const late = await h.call('POST', '/v1/sync', {
        user_id: 'u5',
        segments: [6, 7, 8, 9].map(seg),
      });
      await finished(late.body['id']);
      const early = await h.call('POST', '/v1/sync', {
        user_id: 'u5',
        segments: [3, 0, 5, 1, 4, 2].map(seg),
      });
      const op = await finished(early.body['id']);
      const items = (await h.call('GET', '/v1/users/u5/conversations')).body['items'];
      expect(items).toEqual([
        {
          id: expect.any(String),
          started_at: at(0),
          finished_at: at(9 * 60 + 50),
          segment_ids: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => `m${n}`),
          summary: expect.stringContaining('Minute 0.'),
        },
      ]);
      // The conversation this upload started was the closest when minute 4 came, so it
      // absorbed the other one: this upload reports it as created and nothing as merged into.
      expect(op['result']).toEqual({
        conversations: { created: [items[0].id], merged: [] },
        segments: { assigned: 6, skipped: 0, duplicate: 0, failed: 0 },
      });
    });

    it('reaches a conversation that began hours before a later segment, through its end', async () => {
      // Three hours of recording in half-hour segments, the fourth sent later: first two
      // conversations (0-1.5 h and 2-3 h), then one when the fourth bridges them (the merge
      // makes it 3 h long). Then, in a third upload, a segment just after its end: within the
      // window of its end, so it joins it, though it began hours before the window.
      const half = 1800;
      const seg = (n: number) => ({
        id: `h${n}`,
        started_at: at(n * half),
        ended_at: at((n + 1) * half),
        transcript: `Half hour ${n}.`,
      });
      for (const segments of [
        [0, 1, 2, 4, 5].map(seg),
        [seg(3)],
        [
          {
            id: 'after',
            started_at: at(6 * half + 60),
            ended_at: at(6 * half + 90),
            transcript: 'After.',
          },
        ],
      ]) {
        const res = await h.call('POST', '/v1/sync', { user_id: 'u6', segments });
        await finished(res.body['id']);
      }
      const items = (await h.call('GET', '/v1/users/u6/conversations')).body['items'];
      expect(items).toEqual([
        expect.objectContaining({
          started_at: at(0),
          finished_at: at(6 * half + 90),
          segment_ids: ['h0', 'h1', 'h2', 'h3', 'h4', 'h5', 'after'],
        }),
      ]);
    });

    it('deletes uploaded audio after the retention delay by a scheduled job', async () => {
      const wav = speechWav(300);
      stt.script(wav, { text: 'Hello there.' });
      const res = await h.call('POST', '/v1/sync', {
        user_id: 'u3',
        segments: [{ id: 's', started_at: at(0), ended_at: at(3), audio_wav_base64: b64(wav) }],
      });
      await finished(res.body['id']);
      await eventually(
        async () => (await count('select count(*)::int as n from sync_audio')) === 0,
        20_000,
      );
      expect(
        await count(
          `select count(*)::int as n from jobs where kind = 'sync.delete_audio' and status = 'succeeded'`,
        ),
      ).toBe(1);
    });

    it('with a retention of 0, looks at audio still being transcribed again only every few seconds', async () => {
      const eager = await openHttp(kind, 'sync:retention-zero', {
        env: { MNEMO_STT_BASE_URL: stt.url, MNEMO_AUDIO_RETENTION_S: '0' },
      });
      try {
        const wav = speechWav(800);
        stt.script(wav, { text: 'Slow words.', delayMs: 2500 });
        const res = await eager.call('POST', '/v1/sync', {
          user_id: 'u11',
          segments: [{ id: 'z', started_at: at(0), ended_at: at(3), audio_wav_base64: b64(wav) }],
        });
        await new Promise((resolve) => setTimeout(resolve, 2000)); // still transcribing
        const [checks] = await eager.mnemo.store.query<{ n: number }>(
          `select count(*)::int as n from jobs where kind = 'sync.delete_audio'`,
        );
        // The first look and the one it scheduled; not one after another at once.
        expect(checks?.n).toBeLessThanOrEqual(2);
        await eventually(
          async () =>
            (await eager.call('GET', `/v1/operations/${String(res.body['id'])}`)).body['status'] ===
            'succeeded',
          20_000,
        );
      } finally {
        await eager.dispose();
      }
    });

    it('deletes the audio of a cancelled upload, whose segments wait for nothing, by a job no client can see or cancel', async () => {
      const idle = await openHttp(kind, 'sync:cancelled-audio', {
        env: { MNEMO_STT_BASE_URL: stt.url, MNEMO_AUDIO_RETENTION_S: '1' },
        worker: false,
      });
      try {
        const wav = speechWav(400);
        const res = await idle.call('POST', '/v1/sync', {
          user_id: 'u7',
          segments: [{ id: 'c', started_at: at(0), ended_at: at(3), audio_wav_base64: b64(wav) }],
        });
        // The audio's deletion is Mnemo's own job, not an operation: not found, not listed,
        // not cancellable.
        const [deletion] = await idle.mnemo.store.query<{ id: number }>(
          `select id from jobs where kind = 'sync.delete_audio'`,
        );
        const deletionId = `op_${deletion?.id}`;
        expect((await idle.call('GET', `/v1/operations/${deletionId}`)).status).toBe(404);
        expect((await idle.call('POST', `/v1/operations/${deletionId}/cancel`)).status).toBe(404);
        const listed = await idle.call('GET', '/v1/operations');
        expect(listed.body['items'].map((o: { id: string }) => o.id)).toEqual([res.body['id']]);
        const byKind = await idle.call('GET', '/v1/operations?kind=sync.delete_audio');
        expect(byKind.body).toEqual({ items: [], next_cursor: null });
        const cancelled = await idle.call('POST', `/v1/operations/${res.body['id']}/cancel`);
        expect(cancelled.body['status']).toBe('cancelled');
        await idle.mnemo.startWorker({ pollIntervalMs: 100 });
        const deletions = async () =>
          idle.mnemo.store.query<{ result: unknown }>(
            `select result from jobs where kind = 'sync.delete_audio' and status = 'succeeded'`,
          );
        await eventually(async () => (await deletions()).length > 0, 20_000);
        expect((await deletions()).map((d) => d.result)).toEqual([{ deleted: 1, kept: 0 }]);
        expect(
          (
            await idle.mnemo.store.query<{ n: number }>('select count(*)::int as n from sync_audio')
          )[0]?.n,
        ).toBe(0);
      } finally {
        await idle.dispose();
      }
    });

    it('passes the segments of a cancelled upload as failed, so that re-sending them takes them again', async () => {
      const idle = await openHttp(kind, 'sync:cancelled-resend', {
        env: { MNEMO_STT_BASE_URL: stt.url },
        worker: false,
      });
      try {
        const segments = [0, 10, 20].map((s) => ({
          id: `r-${s}`,
          started_at: at(s),
          ended_at: at(s + 5),
          transcript: `We talked about the garden at ${s}.`,
        }));
        const first = await idle.call('POST', '/v1/sync', { user_id: 'u9', segments });
        const cancelled = await idle.call('POST', `/v1/operations/${first.body['id']}/cancel`);
        expect(cancelled.body).toMatchObject({
          status: 'cancelled',
          result: { segments: { assigned: 0, failed: 3 } },
        });
        expect(
          await idle.mnemo.store.query(
            `select id, state, processed from sync_segments where user_id = 'u9' order by id`,
          ),
        ).toEqual(segments.map((s) => ({ id: s.id, state: 'failed', processed: true })));
        // No summary job for a cancelled upload.
        expect(
          await idle.mnemo.store.query(`select id from jobs where kind = 'sync.summarize'`),
        ).toEqual([]);
        await idle.mnemo.startWorker({ pollIntervalMs: 100 });
        const again = await idle.call('POST', '/v1/sync', { user_id: 'u9', segments });
        let op: Record<string, unknown> = {};
        await eventually(async () => {
          op = (await idle.call('GET', `/v1/operations/${again.body['id']}`)).body;
          return op['status'] === 'succeeded';
        }, 30_000);
        expect(op['result']).toMatchObject({ segments: { assigned: 3, duplicate: 0 } });
        const conversations = await idle.call('GET', '/v1/users/u9/conversations');
        expect(conversations.body['items']).toHaveLength(1);
      } finally {
        await idle.dispose();
      }
    });

    it('finishes an upload cancelled after part of it was assigned, and starts no summary for it', async () => {
      const idle = await openHttp(kind, 'sync:cancelled-partly', {
        env: { MNEMO_STT_BASE_URL: stt.url },
        worker: false,
      });
      try {
        const slow = [speechWav(700), speechWav(701)];
        slow.forEach((wav) => stt.script(wav, { text: 'Later words.', delayMs: 5000 }));
        const res = await idle.call('POST', '/v1/sync', {
          user_id: 'u10',
          segments: [
            { id: 'p-a', started_at: at(0), ended_at: at(5), transcript: 'First words here.' },
            ...slow.map((wav, i) => ({
              id: `p-${i}`,
              started_at: at(10 + i * 10),
              ended_at: at(15 + i * 10),
              audio_wav_base64: b64(wav),
            })),
          ],
        });
        // One slot: the first segment is assigned, the next one is transcribing (slowly) when
        // the worker stops, which hands it back pending.
        const worker = await idle.mnemo.startWorker({
          concurrency: 1,
          prefetch: 0,
          shutdownGraceMs: 0,
          pollIntervalMs: 50,
        });
        await eventually(
          async () =>
            (
              await idle.mnemo.store.query(
                `select 1 from sync_segments where id = 'p-a' and state = 'assigned'`,
              )
            ).length === 1,
          20_000,
        );
        await worker.stop();
        const cancelled = await idle.call('POST', `/v1/operations/${res.body['id']}/cancel`);
        expect(cancelled.body).toMatchObject({
          status: 'cancelled',
          result: { segments: { assigned: 1, failed: 2 } },
        });
        expect(
          await idle.mnemo.store.query(`select id from jobs where kind = 'sync.summarize'`),
        ).toEqual([]);
      } finally {
        await idle.dispose();
      }
    });

    // Every conversation an upload touched is summarized by one model call, one after another,
    // in one job: its run limit grows with them, or a backlog of many could never finish.
    it('summarizes every conversation of an upload that takes several run limits of one call', async () => {
      const llm = await startFakeLlm(250);
      const slow = await openHttp(kind, 'sync:many-summaries', {
        env: {
          MNEMO_EXTRACTOR: 'openai',
          MNEMO_LLM_BASE_URL: llm.url,
          MNEMO_LLM_MODEL: 'fake',
          // A run limit of 600 ms a call; four calls of 250 ms take 1 s.
          MNEMO_LLM_TIMEOUT_MS: '300',
          MNEMO_STT_TIMEOUT_MS: '300',
        },
      });
      try {
        const res = await slow.call('POST', '/v1/sync', {
          user_id: 'u8',
          // An hour apart: four conversations.
          segments: [0, 1, 2, 3].map((i) => ({
            id: `m${i}`,
            started_at: at(i * 3600),
            ended_at: at(i * 3600 + 5),
            transcript: `I walked to place ${i} today.`,
          })),
          wait: true,
          timeout_ms: 60_000,
        });
        expect(res.body).toMatchObject({
          status: 'succeeded',
          result: { segments: { assigned: 4 } },
        });
        const summaries = await slow.mnemo.store.query<{ summary: string | null; n: number }>(
          `select summary, summary_count as n from conversations order by started_at`,
        );
        expect(summaries).toHaveLength(4);
        for (const row of summaries) {
          expect(row.n).toBe(1);
          expect(row.summary).toEqual(expect.stringContaining('place'));
        }
      } finally {
        await slow.dispose();
        await llm.close();
      }
    });

    it('finds synced speech by search, one hit per conversation, and only the asking user’s', async () => {
      const upload = (user: string, segments: { id: string; at: number; text: string }[]) =>
        h.call('POST', '/v1/sync', {
          user_id: user,
          segments: segments.map((s) => ({
            id: s.id,
            started_at: at(s.at),
            ended_at: at(s.at + 5),
            transcript: s.text,
          })),
          wait: true,
        });
      const mine = await upload('u9', [
        { id: 'a', at: 0, text: 'The dentist moved my appointment to Friday.' },
        { id: 'b', at: 30, text: 'I should call the dentist back.' },
        { id: 'c', at: 7200, text: 'Lunch with Mia by the harbour.' },
      ]);
      await upload('u10', [{ id: 'a', at: 0, text: 'My dentist is on holiday.' }]);
      const [dentist, harbour] = (mine.body['result'] as { conversations: { created: string[] } })
        .conversations.created;
      const search = async (q: string) =>
        (await h.call('GET', `/v1/memory/search?user_id=u9&types=conversation&q=${q}`)).body[
          'items'
        ];
      // Two segments match in the first conversation: one hit, its better passage.
      expect(await search('dentist')).toEqual([
        expect.objectContaining({
          type: 'conversation',
          id: dentist,
          text: expect.stringContaining('dentist'),
        }),
      ]);
      expect(await search('harbour')).toEqual([
        expect.objectContaining({
          id: harbour,
          text: 'Lunch with Mia by the harbour.',
          occurred_at: at(7200),
        }),
      ]);
      expect(await search('holiday')).toEqual([]);
    });

    it('takes a segment whose transcription failed again when it is re-sent, and nothing else', async () => {
      const wav = speechWav(500);
      stt.script(wav, { status: 400 }); // final: not retried
      const segment = { id: 'r', started_at: at(0), ended_at: at(3) };
      const upload = async (extra: Record<string, string>) => {
        const res = await h.call('POST', '/v1/sync', {
          user_id: 'u11',
          segments: [{ ...segment, ...extra }],
        });
        return (await finished(res.body['id']))['result'];
      };
      expect(await upload({ audio_wav_base64: b64(wav) })).toMatchObject({
        segments: { assigned: 0, failed: 1, duplicate: 0 },
      });
      // The device sends it again (here with its transcript): this time it is assigned.
      expect(await upload({ transcript: 'Hello again.' })).toMatchObject({
        segments: { assigned: 1, failed: 0, duplicate: 0 },
      });
      expect((await h.call('GET', '/v1/users/u11/conversations')).body['items']).toEqual([
        expect.objectContaining({ segment_ids: ['r'] }),
      ]);
      // Processed now: a third time changes nothing.
      expect(await upload({ transcript: 'Something else.' })).toMatchObject({
        segments: { assigned: 0, failed: 0, duplicate: 1 },
      });
      expect(
        await count(`select count(*)::int as n from sync_segments where user_id = 'u11'`),
      ).toBe(1);
    });

    it('replays an upload by idempotency key and refuses the key for another upload', async () => {
      const body = {
        user_id: 'u6',
        segments: [{ id: 'k1', started_at: at(0), ended_at: at(1), transcript: 'Hello there.' }],
        idempotency_key: 'upload-1',
      };
      const [a, b] = await Promise.all([
        h.call('POST', '/v1/sync', body),
        h.call('POST', '/v1/sync', body),
      ]);
      expect(a.body['id']).toBe(b.body['id']);
      const again = await h.call('POST', '/v1/sync', body);
      expect(again.body['id']).toBe(a.body['id']);
      const other = await h.call('POST', '/v1/sync', {
        ...body,
        segments: [{ ...body.segments[0], transcript: 'Something else.' }],
      });
      expect(other.status).toBe(409);
      expect(other.body['error'].code).toBe('idempotency_conflict');
      expect(await count('select count(*)::int as n from sync_batches')).toBe(1);
    });

    it('refuses bad uploads with 400 and writes nothing', async () => {
      const ok = { id: 'x', started_at: at(0), ended_at: at(1), transcript: 'Hi there.' };
      const bad: unknown[] = [
        { user_id: 'u', segments: [] },
        { user_id: 'u', segments: [{ ...ok, ended_at: at(-1) }] },
        { user_id: 'u', segments: [{ id: 'x', started_at: at(0), ended_at: at(1) }] },
        { user_id: 'u', segments: [{ ...ok, audio_wav_base64: b64(silentWav()) }] },
        { user_id: 'u', segments: [{ ...ok, transcript: undefined, audio_wav_base64: 'AAAA' }] },
        { user_id: 'u', segments: [{ ...ok, transcript: undefined, audio_wav_base64: '!!' }] },
        { user_id: 'u', segments: [ok, ok] },
        { user_id: 'u', segments: [ok], merge_window_s: -1 },
        { user_id: 'u', segments: [{ ...ok, started_at: 'yesterday' }] },
      ];
      for (const body of bad) {
        const res = await h.call('POST', '/v1/sync', body);
        expect(res.status, JSON.stringify(body).slice(0, 100)).toBe(400);
        expect(res.body['error'].code).toBe('invalid_request');
      }
      expect(await count('select count(*)::int as n from sync_segments')).toBe(0);
      expect(await count('select count(*)::int as n from jobs')).toBe(0);
    });
  });
}
