/**
 * A Mnemo worker process for the concurrency tests. Settings come from the environment:
 * TEST_DATABASE_URL, TEST_SCHEMA, TEST_CONCURRENCY, TEST_LEASE_MS, TEST_HEARTBEAT_MS,
 * TEST_REAP_MS. Handlers record their runs in `run_log` through their fenced apply (code, or
 * the database function `log_run` the tests create); the
 * database clock times every run (one clock for all processes). Log lines are JSON on stdout;
 * SIGTERM stops the worker gracefully.
 */
import type { Logger } from '../../src/core/logger.ts';
import { createEngine, type JobContext } from '../../src/engine/index.ts';
import { createPostgresStore } from '../../src/store/postgres.ts';

const env = (name: string, fallback?: string): string => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is required`);
  }
  return value;
};

function jsonLogger(bindings: Record<string, unknown> = {}): Logger {
  const write = (level: string) => (obj: object, msg?: string) => {
    const fields = { ...bindings, ...obj } as Record<string, unknown>;
    if (fields['err'] instanceof Error) {
      fields['err'] = {
        message: fields['err'].message,
        code: (fields['err'] as { code?: string }).code,
      };
    }
    process.stdout.write(`${JSON.stringify({ level, msg, pid: process.pid, ...fields })}\n`);
  };
  return {
    error: write('error'),
    warn: write('warn'),
    info: write('info'),
    debug: () => undefined,
    child: (more) => jsonLogger({ ...bindings, ...more }),
  };
}

const store = createPostgresStore({
  url: env('TEST_DATABASE_URL'),
  schema: env('TEST_SCHEMA'),
  maxConnections: 4,
});
const engine = createEngine({ store, logger: jsonLogger() });

interface Step {
  lane: string | null;
  n: number;
  sleepMs?: number;
  /** Sleep only on the first attempt. */
  firstAttemptOnly?: boolean;
}

async function dbNow(): Promise<string> {
  const [row] = await store.query<{ at: string }>(`select clock_timestamp()::text as at`);
  return row?.at ?? '';
}

/** A step's compute: notes when it started (database clock), then sleeps as asked. */
async function runStep(ctx: JobContext<Step>): Promise<{ startedAt: string }> {
  const startedAt = await dbNow();
  const sleep =
    ctx.payload.firstAttemptOnly === true && ctx.attempt > 1 ? 0 : (ctx.payload.sleepMs ?? 0);
  if (sleep > 0) {
    await new Promise((resolve) => setTimeout(resolve, sleep));
  }
  return { startedAt };
}

engine.register<Step, { startedAt: string }>('step', {
  maxAttempts: 5,
  backoff: { baseMs: 10, maxMs: 50 },
  compute: runStep,
  async apply(tx, computed, ctx) {
    await tx.query(
      `insert into run_log (job_id, lane, n, pid, attempt, started_at, ended_at)
       values ($1, $2, $3, $4, $5, $6::timestamptz, clock_timestamp())`,
      [ctx.id, ctx.payload.lane, ctx.payload.n, process.pid, ctx.attempt, computed.startedAt],
    );
    return { pid: process.pid };
  },
});

// The same, with its apply as a database function (`log_run`, created by the tests): the
// write rides in the statement that completes the job.
engine.register<Step, { startedAt: string }>('step_sql', {
  maxAttempts: 5,
  backoff: { baseMs: 10, maxMs: 50 },
  compute: runStep,
  applyFunction: {
    name: 'log_run',
    argument: (computed, ctx) => ({
      job_id: ctx.id,
      lane: ctx.payload.lane,
      n: ctx.payload.n,
      pid: process.pid,
      attempt: ctx.attempt,
      started_at: computed.startedAt,
    }),
  },
});

const worker = await engine.startWorker({
  concurrency: Number(env('TEST_CONCURRENCY', '8')),
  leaseMs: Number(env('TEST_LEASE_MS', '30000')),
  heartbeatMs: Number(env('TEST_HEARTBEAT_MS', '10000')),
  reapIntervalMs: Number(env('TEST_REAP_MS', '5000')),
  shutdownGraceMs: 2000,
});
process.stdout.write(
  `${JSON.stringify({ event: 'ready', pid: process.pid, workerId: worker.id })}\n`,
);

process.on('SIGTERM', () => {
  void engine
    .stop()
    .then(() => store.close())
    .then(() => process.exit(0));
});
