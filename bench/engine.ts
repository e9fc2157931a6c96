/**
 * `npm run bench -- engine`: lane and laneless throughput of Mnemo's engine (PostgreSQL with
 * 1 and 2 worker processes, PGlite in process) against graphile-worker on the same
 * PostgreSQL, idle enqueue→start latency, and worker heap after 100,000 distinct lanes.
 * Bounded: fixed job counts, loopback PostgreSQL only.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { makeWorkerUtils } from 'graphile-worker';
import pg from 'pg';

import { createEngine, type Engine, type JobSpec } from '../src/engine/index.ts';
import { migrate } from '../src/store/migrate.ts';
import { createPgliteStore } from '../src/store/pglite.ts';
import { createPostgresStore } from '../src/store/postgres.ts';
import type { Store } from '../src/store/types.ts';
import {
  checkRuns,
  createReporter,
  epochMs,
  percentile,
  readRecords,
  recordingNoop,
  type RunRecord,
  startChild,
} from './lib.ts';

const url =
  process.env['MNEMO_BENCH_DATABASE_URL'] ??
  process.env['MNEMO_TEST_DATABASE_URL'] ??
  'postgres://root@127.0.0.1:5432/test';
const JOBS = Number(process.env['BENCH_JOBS'] ?? '20000');
const LANES = 100;
const SLOTS = 10;
const MEMORY_LANES = Number(process.env['BENCH_MEMORY_LANES'] ?? '100000');
const LATENCY_SAMPLES = 200;

type Scenario = 'lanes' | 'laneless';

function workload(
  scenario: Scenario,
): { lane: string | null; payload: { lane: string; n: number } }[] {
  const perLane = JOBS / LANES;
  const jobs = [];
  // Interleaved: n-th job of every lane, then the (n+1)-th, so lanes compete for slots.
  for (let n = 0; n < perLane; n++) {
    for (let l = 0; l < LANES; l++) {
      const lane = `lane-${l}`;
      jobs.push({ lane: scenario === 'lanes' ? lane : null, payload: { lane, n } });
    }
  }
  return jobs;
}

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

async function enqueueMnemo(store: Store, engine: Engine, scenario: Scenario): Promise<number> {
  const jobs = workload(scenario);
  const started = performance.now();
  for (let i = 0; i < jobs.length; i += 2000) {
    const chunk: JobSpec[] = jobs
      .slice(i, i + 2000)
      .map((j) => ({ kind: 'noop', lane: j.lane, payload: j.payload }));
    await store.transaction((tx) => engine.enqueueMany(tx, 'default', chunk));
  }
  return jobs.length / ((performance.now() - started) / 1000);
}

/** Polls `check` (each poll is one cheap query: the benchmark must not load the database). */
async function waitUntil(check: () => Promise<boolean>, intervalMs = 50): Promise<void> {
  while (!(await check())) {
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** True when no job is pending or running (both index-backed). */
async function allDone(store: Store): Promise<boolean> {
  const [row] = await store.query<{ busy: boolean }>(
    `select exists (select 1 from jobs where status = 'pending')
         or exists (select 1 from jobs where status = 'running') as busy`,
  );
  return row?.busy === false;
}

function line(
  system: string,
  store: string,
  scenario: string,
  seconds: number,
  records: RunRecord[],
  extra: object = {},
) {
  const checks = checkRuns(records, {
    lanes: LANES,
    perLane: JOBS / LANES,
    laneless: scenario === 'laneless',
  });
  return {
    system,
    store,
    scenario,
    jobs: JOBS,
    seconds: Number(seconds.toFixed(3)),
    jobs_per_s: Math.round(JOBS / seconds),
    ...checks,
    ...extra,
  };
}

async function mnemoPostgres(scenario: Scenario, processes: number) {
  const schema = `bench_mnemo_${process.pid}_${processes}_${scenario}`;
  const store = createPostgresStore({ url, schema, maxConnections: 2 });
  await migrate(store);
  const engine = createEngine({ store, options: { maxPendingTotal: 10_000_000 } });
  engine.register('noop', {});
  const enqueuePerS = await enqueueMnemo(store, engine, scenario);
  const slots = Math.max(1, Math.floor(SLOTS / processes));
  const children = Array.from({ length: processes }, () =>
    startChild('engine-worker.ts', {
      BENCH_URL: url,
      BENCH_SCHEMA: schema,
      BENCH_SLOTS: String(slots),
    }),
  );
  await Promise.all(children.map((c) => c.next('ready')));
  const t0 = performance.now();
  children.forEach((c) => c.send({ type: 'go' }));
  await waitUntil(() => allDone(store));
  const seconds = (performance.now() - t0) / 1000;
  children.forEach((c) => c.send({ type: 'stop' }));
  const records = (await Promise.all(children.map((c) => c.next('records')))).flatMap(readRecords);
  await store.exec(`drop schema ${schema} cascade`);
  await store.close();
  return line('mnemo', 'postgres', scenario, seconds, records, {
    processes,
    slots_per_process: slots,
    enqueue_jobs_per_s: Math.round(enqueuePerS),
  });
}

async function mnemoPglite(scenario: Scenario) {
  const dir = mkdtempSync(join(tmpdir(), 'mnemo-bench-'));
  const store = await createPgliteStore({ dataDir: dir });
  try {
    await migrate(store);
    const engine = createEngine({ store, options: { maxPendingTotal: 10_000_000 } });
    const records: RunRecord[] = [];
    engine.register<{ lane: string; n: number }, void>('noop', recordingNoop(records));
    const enqueuePerS = await enqueueMnemo(store, engine, scenario);
    const t0 = performance.now();
    await engine.startWorker({ concurrency: SLOTS });
    await waitUntil(async () => records.length >= JOBS, 20);
    await waitUntil(() => allDone(store), 20);
    const seconds = (performance.now() - t0) / 1000;
    await engine.stop();
    return line('mnemo', 'pglite', scenario, seconds, records, {
      processes: 1,
      slots_per_process: SLOTS,
      enqueue_jobs_per_s: Math.round(enqueuePerS),
    });
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function graphile(scenario: Scenario) {
  const schema = `bench_gw_${process.pid}_${scenario}`;
  const utils = await makeWorkerUtils({ connectionString: url, schema });
  await utils.migrate();
  const jobs = workload(scenario);
  const started = performance.now();
  for (let i = 0; i < jobs.length; i += 2000) {
    await utils.addJobs(
      jobs.slice(i, i + 2000).map((j) => ({
        identifier: 'noop',
        payload: j.payload,
        ...(j.lane === null ? {} : { queueName: j.lane }),
      })),
    );
  }
  const enqueuePerS = jobs.length / ((performance.now() - started) / 1000);
  const child = startChild('graphile-worker-child.ts', {
    BENCH_URL: url,
    BENCH_SCHEMA: schema,
    BENCH_SLOTS: String(SLOTS),
  });
  await child.next('ready');
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const t0 = performance.now();
  child.send({ type: 'go' });
  await waitUntil(async () => {
    const r = await client.query<{ n: number }>(
      `select count(*)::int as n from ${schema}._private_jobs`,
    );
    return r.rows[0]?.n === 0;
  });
  const seconds = (performance.now() - t0) / 1000;
  child.send({ type: 'stop' });
  const records = readRecords(await child.next('records'));
  await client.end();
  await utils.release();
  await adminQuery(`drop schema ${schema} cascade`);
  return line('graphile-worker', 'postgres', scenario, seconds, records, {
    processes: 1,
    slots_per_process: SLOTS,
    enqueue_jobs_per_s: Math.round(enqueuePerS),
    version: '0.17.3',
  });
}

async function latency() {
  const schema = `bench_latency_${process.pid}`;
  const store = createPostgresStore({ url, schema, maxConnections: 2 });
  await migrate(store);
  const engine = createEngine({ store });
  engine.register('noop', {});
  const child = startChild('engine-worker.ts', {
    BENCH_URL: url,
    BENCH_SCHEMA: schema,
    BENCH_SLOTS: '10',
  });
  await child.next('ready');
  child.send({ type: 'go' });
  await child.next('started');
  const sent = new Map<number, number>();
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    const at = epochMs();
    await store.transaction((tx) =>
      engine.enqueue(tx, { kind: 'noop', payload: { lane: 'latency', n: i } }),
    );
    sent.set(i, at);
    await new Promise((r) => setTimeout(r, 10));
  }
  await waitUntil(() => allDone(store));
  child.send({ type: 'stop' });
  const records = readRecords(await child.next('records'));
  const samples = records.map((r) => r[2] - (sent.get(r[1]) ?? Number.NaN)).sort((a, b) => a - b);
  await store.exec(`drop schema ${schema} cascade`);
  await store.close();
  return {
    system: 'mnemo',
    store: 'postgres',
    scenario: 'idle_enqueue_to_start_latency',
    samples: samples.length,
    p50_ms: Number(percentile(samples, 50).toFixed(2)),
    p99_ms: Number(percentile(samples, 99).toFixed(2)),
    max_ms: Number(percentile(samples, 100).toFixed(2)),
  };
}

async function memory() {
  const schema = `bench_memory_${process.pid}`;
  const store = createPostgresStore({ url, schema, maxConnections: 2 });
  await migrate(store);
  const engine = createEngine({ store, options: { maxPendingTotal: 10_000_000 } });
  engine.register('noop', {});
  const child = startChild(
    'engine-worker.ts',
    { BENCH_URL: url, BENCH_SCHEMA: schema, BENCH_SLOTS: '10' },
    ['--expose-gc'],
  );
  await child.next('ready');
  child.send({ type: 'go' });
  const baseline = (await child.next('started'))['heap'] as number;
  for (let i = 0; i < MEMORY_LANES; i += 5000) {
    const chunk: JobSpec[] = Array.from({ length: Math.min(5000, MEMORY_LANES - i) }, (_, k) => ({
      kind: 'noop',
      lane: `user-${i + k}`,
      payload: { lane: `user-${i + k}`, n: 0 },
    }));
    await store.transaction((tx) => engine.enqueueMany(tx, 'default', chunk));
  }
  await waitUntil(() => allDone(store), 200);
  child.send({ type: 'measure' });
  const after = (await child.next('heap'))['heap'] as number;
  child.send({ type: 'stop' });
  readRecords(await child.next('records'));
  await store.exec(`drop schema ${schema} cascade`);
  await store.close();
  return {
    system: 'mnemo',
    store: 'postgres',
    scenario: 'worker_heap_after_distinct_lanes',
    lanes: MEMORY_LANES,
    heap_baseline_mb: Number((baseline / 2 ** 20).toFixed(2)),
    heap_after_mb: Number((after / 2 ** 20).toFixed(2)),
    growth_pct: Number((((after - baseline) / baseline) * 100).toFixed(1)),
  };
}

/** Runs the engine benchmark; `only` limits it to some parts (comma-separated). */
export async function runEngineBench(only?: string): Promise<void> {
  const parts = new Set((only ?? 'throughput,latency,memory').split(','));
  const { report, save } = createReporter('engine');
  if (parts.has('throughput')) {
    const byScenario: Record<string, { mnemo1: number; mnemo2: number; graphile: number }> = {};
    for (const scenario of ['lanes', 'laneless'] as const) {
      const gw = await graphile(scenario);
      report(gw);
      const pg1 = await mnemoPostgres(scenario, 1);
      report(pg1);
      const pg2 = await mnemoPostgres(scenario, 2);
      report(pg2);
      report(await mnemoPglite(scenario));
      byScenario[scenario] = {
        mnemo1: pg1.jobs_per_s,
        mnemo2: pg2.jobs_per_s,
        graphile: gw.jobs_per_s,
      };
    }
    for (const [scenario, r] of Object.entries(byScenario)) {
      report({
        comparison: 'mnemo_postgres / graphile_worker',
        scenario,
        ratio_1_process: Number((r.mnemo1 / r.graphile).toFixed(2)),
        ratio_2_processes: Number((r.mnemo2 / r.graphile).toFixed(2)),
      });
    }
  }
  if (parts.has('latency')) {
    report(await latency());
  }
  if (parts.has('memory')) {
    report(await memory());
  }
  process.stderr.write(`results written to ${save()}\n`);
}
