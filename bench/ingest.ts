/**
 * `npm run bench -- ingest`: loopback HTTP load on `POST /v1/memory/ingest` (wait for the
 * result), U users × 3 sources, a fake extractor with fixed latency L and W worker slots, on
 * PostgreSQL and PGlite. Reports throughput against the ideal min(U, W) / L (over the whole
 * run, and sustained: between the 10th and 90th percentile of completions), and the
 * coordination overhead per request (end-to-end latency minus L) with one client per user,
 * where no request waits behind another of its user. Bounded by request counts.
 *
 * Setups: see {@link Setup}.
 */
import { Agent, request } from 'node:http';

import { dropSchema } from '../test/helpers/pg.ts';
import {
  type Child,
  createReporter,
  percentile,
  postgresCpuMs,
  processCpuMs,
  startChild,
} from './lib.ts';

const url =
  process.env['MNEMO_BENCH_DATABASE_URL'] ??
  process.env['MNEMO_TEST_DATABASE_URL'] ??
  'postgres://root@127.0.0.1:5432/test';
const L = Number(process.env['BENCH_LLM_MS'] ?? '50');
const USERS = Number(process.env['BENCH_USERS'] ?? '20');
const SLOTS = Number(process.env['BENCH_SLOTS'] ?? '10');
// 30: the first requests of all U × 3 clients arrive in one instant, and that start costs
// about 0.35 s on a 2-vCPU machine whatever the run's length; in a run of 10 requests a
// client (3 s) it took 10 points off the share of ideal (docs/benchmarks.md).
const PER_CLIENT = Number(process.env['BENCH_PER_CLIENT'] ?? '30');
/** Requests per client of the overhead phase, and of the single client. */
const OVERHEAD_PER_CLIENT = 20;
const SINGLE_REQUESTS = 50;

/**
 * `postgres` and `pglite` — one Mnemo process with HTTP and workers (`mnemo serve`);
 * `postgres-split` — an HTTP process (`serve --no-worker`) and a worker process
 * (`mnemo worker`) on the same PostgreSQL database, so the two use both cores; `floor` — not
 * Mnemo: bench/ingest-floor-server.ts, the least a durable waited ingest can do here (two
 * autocommit statements, no lanes, no framework), whose overhead phases are the same-run
 * reference for Mnemo's, quoted as a ratio (its throughput phase runs but is not reported).
 */
type Setup = 'postgres' | 'postgres-split' | 'pglite' | 'floor';

/** POSTs JSON over a keep-alive agent; resolves with the status and the parsed body. */
function postJson(
  agent: Agent,
  target: URL,
  body: unknown,
): Promise<{ status: number; body: { status?: string } }> {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      target,
      {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
      },
      (res) => {
        let raw = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (raw += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(raw) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

async function startProcesses(
  setup: Setup,
  schema: string,
): Promise<{ url: string; children: Child[]; extracting: Child }> {
  const env: Record<string, string> = {
    BENCH_EXTRACTOR_MS: String(L),
    MNEMO_WORKER_CONCURRENCY: String(SLOTS),
    MNEMO_LOG_LEVEL: 'silent',
    ...(setup === 'pglite'
      ? { MNEMO_DATA_DIR: 'memory://' }
      : // The pool at Mnemo's default unless MNEMO_DATABASE_POOL_SIZE says otherwise; the
        // floor takes the same (docs/benchmarks.md, "Connections per process").
        { MNEMO_DATABASE_URL: url, MNEMO_DATABASE_SCHEMA: schema }),
  };
  if (setup !== 'postgres-split') {
    const script = setup === 'floor' ? 'ingest-floor-server.ts' : 'ingest-server.ts';
    const server = startChild(script, { ...env, BENCH_ROLE: 'serve' });
    const ready = await server.next('ready');
    return { url: ready['url'] as string, children: [server], extracting: server };
  }
  const http = startChild('ingest-server.ts', { ...env, BENCH_ROLE: 'http' });
  const ready = await http.next('ready');
  const worker = startChild('ingest-server.ts', { ...env, BENCH_ROLE: 'worker' });
  await worker.next('ready');
  return { url: ready['url'] as string, children: [http, worker], extracting: worker };
}

type Ingest = (user: number, source: string, n: number) => Promise<number>;

/** Throughput: U users × 3 sources, each client sending PER_CLIENT requests back to back. */
async function throughputPhase(ingest: Ingest) {
  const sources = ['mcp', 'sdk', 'extension'];
  const t0 = performance.now();
  const finishedAt: number[] = [];
  await Promise.all(
    Array.from({ length: USERS }, (_, u) =>
      sources.map(async (s) => {
        for (let n = 0; n < PER_CLIENT; n++) {
          await ingest(u, s, n);
          finishedAt.push(performance.now());
        }
      }),
    ).flat(),
  );
  const seconds = (performance.now() - t0) / 1000;
  const requests = USERS * sources.length * PER_CLIENT;
  const ideal = Math.min(USERS, SLOTS) / (L / 1000);
  // The sustained rate: between the 10th and the 90th percentile of completions, without
  // the start (every client at once) and the drain (fewer lanes than slots at the end).
  const first = finishedAt[Math.floor(requests * 0.1)] ?? t0;
  const last = finishedAt[Math.floor(requests * 0.9)] ?? performance.now();
  const steadyPerS =
    (Math.floor(requests * 0.9) - Math.floor(requests * 0.1)) / ((last - first) / 1000);
  return {
    requests,
    seconds: Number(seconds.toFixed(3)),
    requests_per_s: Number((requests / seconds).toFixed(1)),
    ideal_per_s: ideal,
    of_ideal_pct: Number(((requests / seconds / ideal) * 100).toFixed(1)),
    steady_requests_per_s: Number(steadyPerS.toFixed(1)),
    steady_of_ideal_pct: Number(((steadyPerS / ideal) * 100).toFixed(1)),
  };
}

/**
 * CPU time spent so far by the setup's processes, PostgreSQL's (all of the machine's) and this
 * load generator's, in ms: what the phases' requests cost the machine's cores, whose queue is
 * where a request's overhead goes when several share them (docs/benchmarks.md).
 */
function cpuSnapshot(children: readonly Child[], store: 'postgres' | 'pglite') {
  const server = children.reduce((sum, c) => sum + (processCpuMs(c.process.pid ?? -1) ?? NaN), 0);
  const own = process.cpuUsage();
  return {
    server,
    postgres: store === 'postgres' ? (postgresCpuMs() ?? NaN) : NaN, // PGlite: in the server
    loadGenerator: (own.user + own.system) / 1000,
  };
}

/** Overhead: one client per user (min(U, W) of them), nothing queued behind its own user. */
async function overheadPhase(ingest: Ingest, cpu: () => ReturnType<typeof cpuSnapshot>) {
  const overhead: number[] = [];
  const before = cpu();
  await Promise.all(
    Array.from({ length: Math.min(USERS, SLOTS) }, async (_, u) => {
      for (let n = 0; n < OVERHEAD_PER_CLIENT; n++) {
        overhead.push((await ingest(1000 + u, 'sdk', n)) - L);
      }
    }),
  );
  const after = cpu();
  overhead.sort((a, b) => a - b);
  const perRequest = (key: keyof typeof after) => {
    const ms = (after[key] - before[key]) / overhead.length;
    return Number.isFinite(ms) ? Number(ms.toFixed(2)) : undefined;
  };
  return {
    overhead_samples: overhead.length,
    overhead_p50_ms: Number(percentile(overhead, 50).toFixed(2)),
    overhead_p99_ms: Number(percentile(overhead, 99).toFixed(2)),
    // CPU a request of this phase cost, by process (10 ms ticks of /proc over ~1 s of CPU).
    overhead_cpu_ms_server: perRequest('server'),
    overhead_cpu_ms_postgres: perRequest('postgres'),
    overhead_cpu_ms_load_generator: perRequest('loadGenerator'),
  };
}

/** One client alone: the latency floor of the setup. */
async function singleClientPhase(ingest: Ingest) {
  const single: number[] = [];
  for (let n = 0; n < SINGLE_REQUESTS; n++) {
    single.push((await ingest(2000, 'sdk', n)) - L);
  }
  single.sort((a, b) => a - b);
  return {
    single_client_overhead_p50_ms: Number(percentile(single, 50).toFixed(2)),
    single_client_overhead_p99_ms: Number(percentile(single, 99).toFixed(2)),
  };
}

async function run(setup: Setup) {
  const schema = `bench_ingest_${process.pid}`;
  const { url: base, children, extracting } = await startProcesses(setup, schema);
  /** How late the fake extractor's timer fired since the last call (its process's loop). */
  const extractorLate = async () => {
    extracting.send({ type: 'extractor_stats' });
    const stats = await extracting.next('extractor_stats');
    return { p50: stats['late_p50_ms'] as number, p99: stats['late_p99_ms'] as number };
  };
  const agent = new Agent({ keepAlive: true, maxSockets: 1000 });
  const target = new URL('/v1/memory/ingest', base);
  const ingest: Ingest = async (user, source, n) => {
    const t = performance.now();
    const res = await postJson(agent, target, {
      user_id: `user-${user}`,
      source,
      user_query: `My ${source} note ${n} is saved. I like item ${n}.`,
      timeout_ms: 120_000,
    });
    if (res.status !== 200 || res.body.status !== 'succeeded') {
      throw new Error(`ingest answered ${res.status} ${JSON.stringify(res.body)}`);
    }
    return performance.now() - t;
  };
  try {
    // Warm-up: connections, prepared statements, JIT.
    await Promise.all(Array.from({ length: SLOTS }, (_, u) => ingest(9000 + u, 'sdk', 0)));
    await extractorLate();
    // The floor runs the throughput phase too, so that its overhead phases start from the
    // same state (connections, caches, table sizes); with no lanes its rate is not comparable
    // and is not reported.
    const measured = await throughputPhase(ingest);
    const throughputLate = await extractorLate();
    const throughput = setup === 'floor' ? undefined : measured;
    const overhead = await overheadPhase(ingest, () =>
      cpuSnapshot(children, setup === 'pglite' ? 'pglite' : 'postgres'),
    );
    const overheadLate = await extractorLate();
    const single = await singleClientPhase(ingest);
    return {
      system: setup === 'floor' ? 'floor' : 'mnemo',
      store: setup === 'pglite' ? 'pglite' : 'postgres',
      processes: setup === 'postgres-split' ? 'http + worker' : 'serve',
      scenario: 'http_ingest',
      users: USERS,
      sources: 3,
      slots: SLOTS,
      extractor_latency_ms: L,
      ...throughput,
      ...overhead,
      ...single,
      // Included in the figures above: the fake extractor's timer firing late.
      ...(throughput && {
        extractor_late_p50_ms_throughput: throughputLate.p50,
        extractor_late_p99_ms_throughput: throughputLate.p99,
      }),
      extractor_late_p50_ms_overhead: overheadLate.p50,
      extractor_late_p99_ms_overhead: overheadLate.p99,
    };
  } finally {
    agent.destroy();
    for (const child of children) {
      child.process.kill('SIGTERM');
    }
    await Promise.all(children.map((c) => c.exited));
    if (setup !== 'pglite') {
      await dropSchema(schema);
    }
  }
}

/**
 * Runs the ingest benchmark: `postgres`, `floor`, `postgres-split`, `pglite` (default: all
 * four, in this order). With `floor` and a PostgreSQL setup in one run, one more record gives
 * each PostgreSQL setup's overhead as a multiple of the floor's.
 */
export async function runIngestBench(only?: string): Promise<void> {
  const { report, save } = createReporter('ingest');
  const results: Awaited<ReturnType<typeof run>>[] = [];
  for (const setup of (only ?? 'postgres,floor,postgres-split,pglite').split(',') as Setup[]) {
    const result = await run(setup);
    report(result);
    results.push(result);
  }
  const floor = results.find((r) => r.system === 'floor');
  if (floor !== undefined) {
    for (const r of results.filter((x) => x.system === 'mnemo' && x.store === 'postgres')) {
      const ratio = (
        key: 'overhead_p50_ms' | 'overhead_p99_ms' | 'single_client_overhead_p50_ms',
      ) => Number((r[key] / floor[key]).toFixed(2));
      report({
        system: 'mnemo',
        store: r.store,
        processes: r.processes,
        scenario: 'http_ingest_vs_floor',
        overhead_p50_x: ratio('overhead_p50_ms'),
        overhead_p99_x: ratio('overhead_p99_ms'),
        single_client_overhead_p50_x: ratio('single_client_overhead_p50_ms'),
      });
    }
  }
  process.stderr.write(`results written to ${save()}\n`);
}
