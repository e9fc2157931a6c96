import { afterAll, beforeAll, expect, it } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';
import { eventually } from '../helpers/engine.ts';
import { type FakeStt, speechWav, startFakeStt } from '../helpers/fake-stt.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';
import { type Json, processGroup } from '../helpers/serve.ts';

const T0 = Date.parse('2026-06-01T08:00:00.000Z');
const at = (s: number) => new Date(T0 + s * 1000).toISOString();

/** A deterministic shuffle (so a failure can be replayed). */
function shuffle<T>(items: T[], seed: number): T[] {
  const out = [...items];
  let x = seed;
  for (let i = out.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

describePg('offline sync through 2 server processes sharing PostgreSQL', () => {
  const schema = testSchemaName('sync-processes');
  let stt: FakeStt;
  let store: Store;
  let env: Record<string, string> = {};
  const group = processGroup(() => env);
  const { call } = group;
  const startServer = () => group.start(['serve']);

  beforeAll(async () => {
    stt = await startFakeStt();
    env = {
      MNEMO_DATABASE_URL: testDatabaseUrl,
      MNEMO_DATABASE_SCHEMA: schema,
      MNEMO_PORT: '0',
      MNEMO_STT_BASE_URL: stt.url,
      MNEMO_AUDIO_RETENTION_S: '4',
      MNEMO_WORKER_CONCURRENCY: '8',
    };
    await Promise.all([startServer(), startServer()]);
    store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 2 });
  });

  afterAll(async () => {
    await group.stopAll();
    await store?.close();
    await stt?.close();
    await dropSchema(schema);
  });

  const finished = async (opId: string) => {
    let op: Json = {};
    await eventually(async () => {
      op = (await call(0, 'GET', `/v1/operations/${opId}`)).body;
      return op['status'] === 'succeeded' || op['status'] === 'failed';
    }, 120_000);
    return op;
  };

  it('300 shuffled segments of 3 clusters, in two overlapping batches from two devices to two processes at once, make exactly 3 conversations', async () => {
    // Cluster k: 100 segments 5 s apart, 3 s long, starting at k × 1000 s (gaps > 2 min).
    // The pendant has the first 60 of each cluster, the phone the last 60 (20 in both). The
    // pendant's first segments transcribe slowly: the phone's later part of each cluster is
    // assigned first, more than the merge window away from where the cluster begins, so the
    // two parts must end up merged into one conversation. (The first 5 segments of each
    // cluster hold the pendant's cursor for a second while everything else is transcribed.)
    const all = Array.from({ length: 300 }, (_, i) => {
      const cluster = Math.floor(i / 100);
      const start = cluster * 1000 + (i % 100) * 5;
      const wav = speechWav(10_000 + i);
      const slow = i % 100 < 5;
      stt.script(wav, {
        text: `Segment ${i} words.`,
        delayMs: (slow ? 1000 : 0) + ((i * 37) % 40),
      });
      return {
        id: `s${String(i).padStart(3, '0')}`,
        started_at: at(start),
        ended_at: at(start + 3),
        audio_wav_base64: wav.toString('base64'),
      };
    });
    const first = shuffle(
      all.filter((_, i) => i % 100 < 60),
      7,
    );
    const second = shuffle(
      all.filter((_, i) => i % 100 >= 40),
      11,
    );
    const [a, b] = await Promise.all([
      call(0, 'POST', '/v1/sync', { user_id: 'walker', device_id: 'pendant', segments: first }),
      call(1, 'POST', '/v1/sync', { user_id: 'walker', device_id: 'phone', segments: second }),
    ]);
    expect([a.status, b.status]).toEqual([202, 202]);
    const [opA, opB] = await Promise.all([finished(a.body['id']), finished(b.body['id'])]);
    expect([opA['status'], opB['status']]).toEqual(['succeeded', 'succeeded']);
    const counts = [opA, opB].map((op) => op['result']['segments']);
    expect(counts[0].assigned + counts[1].assigned).toBe(300);
    expect(counts[0].duplicate + counts[1].duplicate).toBe(60);

    const items = (await call(0, 'GET', '/v1/users/walker/conversations')).body['items'] as Json[];
    expect(items.map((c) => [c['started_at'], c['finished_at']])).toEqual([
      [at(0), at(498)],
      [at(1000), at(1498)],
      [at(2000), at(2498)],
    ]);
    const assigned = items.flatMap((c) => c['segment_ids'] as string[]);
    expect(assigned).toHaveLength(300);
    expect(new Set(assigned).size).toBe(300);
    items.forEach((c, k) => {
      expect(c['segment_ids']).toEqual(all.slice(k * 100, k * 100 + 100).map((s) => s.id));
      expect(c['summary']).toEqual(expect.stringContaining('Segment'));
    });
    // Each segment was transcribed once.
    expect(new Set(stt.received).size).toBe(stt.received.length);
  });

  it('takes failed segments re-sent by two devices to two processes at once again exactly once', async () => {
    const segments = Array.from({ length: 20 }, (_, i) => {
      const wav = speechWav(20_000 + i);
      stt.script(wav, { status: 400 }); // final: not retried
      return { id: `f${i}`, started_at: at(5000 + i * 5), ended_at: at(5000 + i * 5 + 3), wav };
    });
    const first = await call(0, 'POST', '/v1/sync', {
      user_id: 'resender',
      segments: segments.map((s) => ({
        id: s.id,
        started_at: s.started_at,
        ended_at: s.ended_at,
        audio_wav_base64: s.wav.toString('base64'),
      })),
    });
    expect((await finished(first.body['id']))['result']['segments']).toMatchObject({
      assigned: 0,
      failed: 20,
    });
    const again = segments.map((s) => ({
      id: s.id,
      started_at: s.started_at,
      ended_at: s.ended_at,
      transcript: `Segment ${s.id} words.`,
    }));
    const [a, b] = await Promise.all([
      call(0, 'POST', '/v1/sync', { user_id: 'resender', segments: again }),
      call(1, 'POST', '/v1/sync', { user_id: 'resender', segments: shuffle(again, 3) }),
    ]);
    const counts = (await Promise.all([finished(a.body['id']), finished(b.body['id'])])).map(
      (op) => op['result']['segments'],
    );
    expect(counts[0].assigned + counts[1].assigned).toBe(20);
    expect(counts[0].duplicate + counts[1].duplicate).toBe(20);
    const items = (await call(0, 'GET', '/v1/users/resender/conversations')).body[
      'items'
    ] as Json[];
    expect(items.flatMap((c) => c['segment_ids'] as string[])).toEqual(segments.map((s) => s.id));
  });

  it('deletes uploaded audio after the retention delay even when every process restarted meanwhile', async () => {
    const wav = speechWav(99_999);
    stt.script(wav, { text: 'Short note.' });
    const res = await call(0, 'POST', '/v1/sync', {
      user_id: 'restarter',
      segments: [
        {
          id: 'only',
          started_at: at(5000),
          ended_at: at(5002),
          audio_wav_base64: wav.toString('base64'),
        },
      ],
    });
    await finished(res.body['id']);
    const [before] = await store.query<{ n: number }>(
      `select count(*)::int as n from sync_audio where user_id = 'restarter'`,
    );
    expect(before?.n).toBe(1);
    // Every process goes away before the delay is up; a new one comes.
    await group.stopAll();
    await startServer();
    await eventually(async () => {
      const [row] = await store.query<{ n: number }>(
        `select count(*)::int as n from sync_audio where user_id = 'restarter'`,
      );
      return row?.n === 0;
    }, 30_000);
  });
});
