import { afterEach, beforeEach, expect, it } from 'vitest';

import { createEngine, type Engine, type JobSpec } from '../../src/engine/index.ts';
import { migrate } from '../../src/store/migrate.ts';
import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';
import { type JsonProcess, startJsonProcess } from '../helpers/cli.ts';
import { eventually } from '../helpers/engine.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

const WORKER = 'test/helpers/worker-process.ts';

describePg('engine across processes (PostgreSQL)', () => {
  let schema: string;
  let store: Store;
  let engine: Engine;
  const processes: JsonProcess[] = [];

  beforeEach(async (ctx) => {
    schema = testSchemaName(`engine-processes:${ctx.task.name}`);
    store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 12 });
    await migrate(store);
    await store.exec(`create table run_log (job_id bigint not null, lane text, n int, pid int not null,
      attempt int not null, started_at timestamptz not null, ended_at timestamptz not null)`);
    await store.exec(`create function log_run(p jsonb) returns jsonb language sql as $$
      insert into run_log (job_id, lane, n, pid, attempt, started_at, ended_at)
      values ((p->>'job_id')::bigint, p->>'lane', (p->>'n')::int, (p->>'pid')::int,
        (p->>'attempt')::int, (p->>'started_at')::timestamptz, clock_timestamp())
      returning jsonb_build_object('pid', pid) $$`);
    engine = createEngine({ store, options: { maxPendingTotal: 1_000_000 } });
    engine.register('step', {});
    engine.register('step_sql', {});
  });

  afterEach(async () => {
    for (const p of processes.splice(0)) {
      p.kill('SIGKILL');
      await p.exited;
    }
    await engine.stop();
    await store.close();
    await dropSchema(schema);
  });

  function startWorker(env: Record<string, string> = {}): JsonProcess {
    const p = startJsonProcess(WORKER, {
      TEST_DATABASE_URL: testDatabaseUrl,
      TEST_SCHEMA: schema,
      ...env,
    });
    processes.push(p);
    return p;
  }

  async function enqueueAll(specs: JobSpec[]): Promise<void> {
    for (let i = 0; i < specs.length; i += 2500) {
      await store.transaction((tx) => engine.enqueueMany(tx, 'default', specs.slice(i, i + 2500)));
    }
  }

  async function unfinished(): Promise<number> {
    const [row] = await store.query<{ n: number }>(
      `select count(*)::int as n from jobs where status in ('pending', 'running')`,
    );
    return row?.n ?? -1;
  }

  it('runs 20,000 lane jobs and 5,000 laneless jobs exactly once with 4 processes × 8 slots, lanes in order and never overlapping', async () => {
    const LANES = 100;
    const PER_LANE = 200;
    const specs: JobSpec[] = [];
    for (let n = 0; n < PER_LANE; n++) {
      for (let l = 0; l < LANES; l++) {
        // Half the lanes apply through code, half through a database function.
        const kind = l % 2 === 0 ? 'step' : 'step_sql';
        specs.push({ kind, lane: `lane-${l}`, payload: { lane: `lane-${l}`, n } });
      }
      for (let k = 0; k < 25; k++) {
        specs.push({ kind: 'step', payload: { lane: null, n: n * 25 + k, sleepMs: 3 } });
      }
    }
    await enqueueAll(specs);
    const workers = Array.from({ length: 4 }, () => startWorker({ TEST_CONCURRENCY: '8' }));
    await Promise.all(workers.map((w) => w.waitFor((l) => l['event'] === 'ready')));
    await eventually(async () => (await unfinished()) === 0, 240_000);

    const [counts] = await store.query<{ runs: number; jobs: number; dup: number; failed: number }>(
      `select (select count(*) from run_log)::int as runs,
              (select count(distinct job_id) from run_log)::int as jobs,
              (select count(*) from (select job_id from run_log group by job_id having count(*) > 1) d)::int as dup,
              (select count(*) from jobs where status <> 'succeeded')::int as failed`,
    );
    expect(counts).toEqual({ runs: 25_000, jobs: 25_000, dup: 0, failed: 0 });

    // Within each lane: starts follow enqueue order, and each run ends before the next starts.
    const [lanes] = await store.query<{ disorder: number; overlaps: number; pids: number }>(
      `with ordered as (
         select lane, n, started_at, ended_at, pid,
           lag(n) over w as prev_n, lag(ended_at) over w as prev_end
         from run_log where lane is not null
         window w as (partition by lane order by started_at, ended_at))
       select count(*) filter (where prev_n is not null and n <> prev_n + 1)::int as disorder,
              count(*) filter (where started_at < prev_end)::int as overlaps,
              (select count(distinct pid) from run_log where lane is not null)::int as pids
       from ordered`,
    );
    expect(lanes).toEqual({ disorder: 0, overlaps: 0, pids: 4 });

    // Laneless jobs did run in parallel.
    const [parallel] = await store.query<{ overlapping: number }>(
      `select count(*)::int as overlapping from run_log a join run_log b
         on a.lane is null and b.lane is null and a.job_id < b.job_id
        and a.started_at < b.ended_at and b.started_at < a.ended_at`,
    );
    expect(parallel?.overlapping).toBeGreaterThan(100);
  }, 240_000);

  it('re-runs the jobs of a worker killed with SIGKILL after its lease expires, committing nothing of the killed attempt', async () => {
    const victim = startWorker({
      TEST_LEASE_MS: '1000',
      TEST_HEARTBEAT_MS: '250',
      TEST_REAP_MS: '0',
    });
    const ready = await victim.waitFor((l) => l['event'] === 'ready');
    const specs: JobSpec[] = Array.from({ length: 6 }, (_, n) => ({
      kind: 'step',
      payload: { lane: null, n, sleepMs: 1500, firstAttemptOnly: true },
    }));
    await enqueueAll(specs);
    await eventually(async () => {
      const [row] = await store.query<{ n: number }>(
        `select count(*)::int as n from jobs where status = 'running' and locked_by = $1`,
        [ready['workerId']],
      );
      return row?.n === 6;
    });
    victim.kill('SIGKILL');
    await victim.exited;
    startWorker({ TEST_LEASE_MS: '1000', TEST_HEARTBEAT_MS: '250', TEST_REAP_MS: '100' });
    await eventually(async () => (await unfinished()) === 0, 30_000);

    const runs = await store.query<{ job_id: number; pid: number; attempt: number }>(
      'select job_id::int, pid, attempt from run_log order by job_id',
    );
    expect(runs).toHaveLength(6);
    expect(runs.every((r) => r.pid !== victim.pid && r.attempt === 2)).toBe(true);
    const jobs = await store.query<{ status: string; attempts: number; error: unknown }>(
      'select status, attempts, error from jobs order by id',
    );
    expect(
      jobs.every((j) => j.status === 'succeeded' && j.attempts === 2 && j.error === null),
    ).toBe(true);
  });

  it.each(['step', 'step_sql'])(
    'fences a paused worker: after its lease was taken over, its apply fails with lease_lost and writes nothing (%s)',
    async (kind) => {
      // The paused worker never heartbeats within the test, so only the pause decides.
      const paused = startWorker({
        TEST_LEASE_MS: '800',
        TEST_HEARTBEAT_MS: '60000',
        TEST_REAP_MS: '0',
      });
      await paused.waitFor((l) => l['event'] === 'ready');
      await enqueueAll([
        { kind, payload: { lane: null, n: 1, sleepMs: 1500, firstAttemptOnly: true } },
      ]);
      await eventually(async () => {
        const [row] = await store.query<{ n: number }>(
          `select count(*)::int as n from jobs where status = 'running'`,
        );
        return row?.n === 1;
      });
      paused.kill('SIGSTOP');
      const rescuer = startWorker({
        TEST_LEASE_MS: '5000',
        TEST_HEARTBEAT_MS: '1000',
        TEST_REAP_MS: '100',
      });
      await eventually(async () => (await unfinished()) === 0, 30_000);
      paused.kill('SIGCONT');
      const lost = await paused.waitFor(
        (l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('lease lost'),
      );
      expect(lost).toMatchObject({ level: 'warn', kind });

      const runs = await store.query<{ pid: number; attempt: number }>(
        'select pid, attempt from run_log',
      );
      expect(runs).toEqual([{ pid: rescuer.pid, attempt: 2 }]);
      const [job] = await store.query<{ status: string; attempts: number; result: unknown }>(
        'select status, attempts, result from jobs',
      );
      expect(job).toEqual({ status: 'succeeded', attempts: 2, result: { pid: rescuer.pid } });
    },
  );

  it('creates one job when 10 connections enqueue the same idempotency key at once', async () => {
    const stores = Array.from({ length: 10 }, () =>
      createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 1 }),
    );
    try {
      const engines = stores.map((s) => createEngine({ store: s }));
      await Promise.all(stores.map((s) => s.query('select 1'))); // connect first: start together
      const results = await Promise.all(
        engines.map((e, i) =>
          stores[i]!.transaction((tx) =>
            e.enqueue(tx, {
              kind: 'step',
              lane: 'user-1',
              payload: { lane: 'user-1', n: 0 },
              idempotencyKey: 'same',
            }),
          ),
        ),
      );
      expect(new Set(results.map((r) => r.job.id)).size).toBe(1);
      expect(results.filter((r) => r.created)).toHaveLength(1);
      const [row] = await store.query<{ n: number }>('select count(*)::int as n from jobs');
      expect(row?.n).toBe(1);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });
});
