/**
 * `npm run bench -- ingest`: loopback HTTP load on `POST /v1/memory/ingest` (wait for the
 * result), U users × 3 sources, a fake OpenAI-compatible extractor with fixed latency L and W
 * worker slots, on PostgreSQL and PGlite. Reports throughput against the ideal min(U, W) / L,
 * and the coordination overhead per request (end-to-end latency minus L) with one client
 * per user, where no request waits behind another of its user. Bounded by request counts.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

import { startFakeLlm } from '../test/helpers/fake-llm.ts';
import { dropSchema } from '../test/helpers/pg.ts';
import { createReporter, percentile, repoRoot } from './lib.ts';

/** Starts `mnemo serve` from the sources and resolves with its URL once it listens. */
function startServerProcess(
  env: Record<string, string>,
): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'serve'], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const entry = JSON.parse(line) as { url?: string; msg?: string };
        if (entry.url !== undefined && entry.msg?.startsWith('Mnemo listening') === true) {
          resolve({ url: entry.url, child });
        }
      } catch {
        // not a log line
      }
    });
    child.on('exit', (code) => reject(new Error(`mnemo serve exited (${code})`)));
  });
}

const url =
  process.env['MNEMO_BENCH_DATABASE_URL'] ??
  process.env['MNEMO_TEST_DATABASE_URL'] ??
  'postgres://root@127.0.0.1:5432/test';
const L = Number(process.env['BENCH_LLM_MS'] ?? '50');
const USERS = Number(process.env['BENCH_USERS'] ?? '20');
const SLOTS = Number(process.env['BENCH_SLOTS'] ?? '10');
const PER_CLIENT = Number(process.env['BENCH_PER_CLIENT'] ?? '10');

async function run(store: 'postgres' | 'pglite') {
  const llm = await startFakeLlm(L);
  const schema = `bench_ingest_${process.pid}`;
  const env: Record<string, string> = {
    MNEMO_EXTRACTOR: 'openai',
    MNEMO_LLM_BASE_URL: llm.url,
    MNEMO_LLM_MODEL: 'fake',
    MNEMO_WORKER_CONCURRENCY: String(SLOTS),
    MNEMO_LOG_LEVEL: 'silent',
    ...(store === 'postgres'
      ? { MNEMO_DATABASE_URL: url, MNEMO_DATABASE_SCHEMA: schema, MNEMO_DATABASE_POOL_SIZE: '20' }
      : { MNEMO_DATA_DIR: 'memory://' }),
  };
  // The server runs as `mnemo serve` in a process of its own, as deployed; the load and the
  // fake LLM share this one.
  const server = await startServerProcess({ ...env, MNEMO_LOG_LEVEL: 'info', MNEMO_PORT: '0' });
  const ingest = async (user: number, source: string, n: number): Promise<number> => {
    const t = performance.now();
    const res = await fetch(`${server.url}/v1/memory/ingest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        user_id: `user-${user}`,
        source,
        user_query: `My ${source} note ${n} is saved. I like item ${n}.`,
        timeout_ms: 120_000,
      }),
    });
    const body = (await res.json()) as { status: string };
    if (res.status !== 200 || body.status !== 'succeeded') {
      throw new Error(`ingest answered ${res.status} ${JSON.stringify(body)}`);
    }
    return performance.now() - t;
  };
  try {
    // Throughput: U users × 3 sources, each client sending PER_CLIENT requests back to back.
    const sources = ['mcp', 'sdk', 'extension'];
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: USERS }, (_, u) =>
        sources.map(async (s) => {
          for (let n = 0; n < PER_CLIENT; n++) {
            await ingest(u, s, n);
          }
        }),
      ).flat(),
    );
    const seconds = (performance.now() - t0) / 1000;
    const requests = USERS * sources.length * PER_CLIENT;
    const ideal = Math.min(USERS, SLOTS) / (L / 1000);
    // Overhead: one client per user (min(U, W) of them), nothing queued behind its own user.
    const overhead: number[] = [];
    await Promise.all(
      Array.from({ length: Math.min(USERS, SLOTS) }, async (_, u) => {
        for (let n = 0; n < PER_CLIENT * 2; n++) {
          overhead.push((await ingest(1000 + u, 'sdk', n)) - L);
        }
      }),
    );
    overhead.sort((a, b) => a - b);
    return {
      system: 'mnemo',
      store,
      scenario: 'http_ingest',
      users: USERS,
      sources: 3,
      slots: SLOTS,
      llm_latency_ms: L,
      requests,
      seconds: Number(seconds.toFixed(3)),
      requests_per_s: Number((requests / seconds).toFixed(1)),
      ideal_per_s: ideal,
      of_ideal_pct: Number(((requests / seconds / ideal) * 100).toFixed(1)),
      overhead_samples: overhead.length,
      overhead_p50_ms: Number(percentile(overhead, 50).toFixed(2)),
      overhead_p99_ms: Number(percentile(overhead, 99).toFixed(2)),
    };
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.on('exit', resolve));
    await llm.close();
    if (store === 'postgres') {
      await dropSchema(schema);
    }
  }
}

/** Runs the ingest benchmark on PostgreSQL and PGlite. */
export async function runIngestBench(only?: string): Promise<void> {
  const { report, save } = createReporter('ingest');
  for (const store of (only ?? 'postgres,pglite').split(',') as ('postgres' | 'pglite')[]) {
    report(await run(store));
  }
  process.stderr.write(`results written to ${save()}\n`);
}
