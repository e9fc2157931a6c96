/**
 * `npm run bench -- sync`: one upload of N audio segments to `mnemo serve` (its own process,
 * PostgreSQL), a fake OpenAI-compatible transcriber with latency S (jittered ±40 %; S = 50 and
 * 250 ms by default, BENCH_STT_MS) in this process, P worker slots. Reports the wall time (request to finished operation, `wait:
 * true`) against the pipelined ideal max(ceil(N/P)·S, N·a), where a — the cost of one
 * segment's assignment — is measured by the same upload with transcripts (no transcription),
 * and against a one-by-one baseline (the same upload with one worker slot). Bounded by N.
 */

import { type FakeStt, speechWav, startFakeStt } from '../test/helpers/fake-stt.ts';
import { dropSchema } from '../test/helpers/pg.ts';
import { createReporter, startMnemoServe as startServer } from './lib.ts';

const url =
  process.env['MNEMO_BENCH_DATABASE_URL'] ??
  process.env['MNEMO_TEST_DATABASE_URL'] ??
  'postgres://root@127.0.0.1:5432/test';
const N = Number(process.env['BENCH_SEGMENTS'] ?? '500');
const LATENCIES = (process.env['BENCH_STT_MS'] ?? '50,250').split(',').map(Number);
const P = Number(process.env['BENCH_SLOTS'] ?? '10');

/** N segments, 5 s apart in clusters of 50 (10 conversations), each its own audio. */
function segments(user: string, stt: FakeStt, audio: boolean, seed: number, S = 0) {
  const t0 = Date.parse('2026-06-01T08:00:00.000Z');
  return Array.from({ length: N }, (_, i) => {
    const start = t0 + (Math.floor(i / 50) * 1000 + (i % 50) * 5) * 1000;
    const base = {
      id: `${user}-${i}`,
      started_at: new Date(start).toISOString(),
      ended_at: new Date(start + 3000).toISOString(),
    };
    if (!audio) {
      return { ...base, transcript: `Segment ${i} of the day.` };
    }
    const wav = speechWav(seed * 100_000 + i);
    // Latency S ± 40 %, spread so transcriptions finish out of time order.
    const jitter = (((i * 7919) % 81) - 40) / 100;
    stt.script(wav, { text: `Segment ${i} of the day.`, delayMs: Math.round(S * (1 + jitter)) });
    return { ...base, audio_wav_base64: wav.toString('base64') };
  });
}

async function upload(base: string, user: string, body: unknown[]): Promise<number> {
  const t = performance.now();
  const res = await fetch(`${base}/v1/sync`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user, segments: body, wait: true, timeout_ms: 120_000 }),
  });
  type Op = { id: string; status: string; result: { segments: { assigned: number } } | null };
  let op = (await res.json()) as Op;
  // Past the longest wait (a slow one-by-one run), poll every 50 ms.
  while (op.status === 'pending' || op.status === 'running') {
    await new Promise((resolve) => setTimeout(resolve, 50));
    op = (await (await fetch(`${base}/v1/operations/${op.id}`)).json()) as Op;
  }
  if (op.status !== 'succeeded' || op.result?.segments.assigned !== N) {
    throw new Error(`sync ended ${JSON.stringify(op).slice(0, 300)}`);
  }
  return (performance.now() - t) / 1000;
}

/** Runs the sync benchmark on PostgreSQL. */
export async function runSyncBench(): Promise<void> {
  const { report, save } = createReporter('sync');
  const stt = await startFakeStt();
  const schema = `bench_sync_${process.pid}`;
  const env = (slots: number) => ({
    MNEMO_DATABASE_URL: url,
    MNEMO_DATABASE_SCHEMA: schema,
    MNEMO_DATABASE_POOL_SIZE: '20',
    MNEMO_PORT: '0',
    MNEMO_LOG_LEVEL: 'silent',
    MNEMO_STT_BASE_URL: stt.url,
    MNEMO_WORKER_CONCURRENCY: String(slots),
  });
  let server = await startServer({ ...env(P), MNEMO_LOG_LEVEL: 'info' });
  try {
    // Warm-up: connections, prepared statements, JIT.
    await upload(server.url, 'warm', segments('warm', stt, false, 0));
    const assignOnly = await upload(server.url, 'text', segments('text', stt, false, 1));
    const a = assignOnly / N;
    const pipelined = new Map<number, number>();
    for (const [k, S] of LATENCIES.entries()) {
      pipelined.set(
        S,
        await upload(server.url, `audio${k}`, segments(`audio${k}`, stt, true, 10 + k, S)),
      );
    }
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.on('exit', resolve));
    server = await startServer({ ...env(1), MNEMO_LOG_LEVEL: 'info' });
    for (const [k, S] of LATENCIES.entries()) {
      const oneByOne = await upload(
        server.url,
        `serial${k}`,
        segments(`serial${k}`, stt, true, 20 + k, S),
      );
      const wall = pipelined.get(S) ?? Number.NaN;
      const ideal = Math.max(Math.ceil(N / P) * (S / 1000), N * a);
      report({
        system: 'mnemo',
        store: 'postgres',
        scenario: 'offline_sync',
        segments: N,
        transcriber_latency_ms: S,
        jitter: '±40%',
        slots: P,
        assignment_ms_per_segment: Number((a * 1000).toFixed(2)),
        wall_s: Number(wall.toFixed(3)),
        ideal_s: Number(ideal.toFixed(3)),
        over_ideal_pct: Number(((wall / ideal - 1) * 100).toFixed(1)),
        one_by_one_s: Number(oneByOne.toFixed(3)),
        speedup_vs_one_by_one: Number((oneByOne / wall).toFixed(2)),
      });
    }
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.on('exit', resolve));
    await stt.close();
    await dropSchema(schema);
  }
  process.stderr.write(`results written to ${save()}\n`);
}
