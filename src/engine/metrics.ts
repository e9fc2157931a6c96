import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { Queryable } from '../store/types.ts';

/** The engine's Prometheus metrics, on a registry of its own. */
export interface EngineMetrics {
  registry: Registry;
  enqueued: Counter<'kind'>;
  completed: Counter<'kind' | 'status'>;
  retried: Counter<'kind'>;
  leaseLost: Counter<'kind'>;
  reaped: Counter<'kind'>;
  swept: Counter<'kind'>;
  earlyComputes: Counter<'kind' | 'outcome'>;
  waitSeconds: Histogram<'kind'>;
  runSeconds: Histogram<'kind'>;
}

const SECONDS_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
];

/** Creates the metrics; the job-count gauge reads the database when scraped. */
export function createEngineMetrics(store: Queryable): EngineMetrics {
  const registry = new Registry();
  const metrics: EngineMetrics = {
    registry,
    enqueued: new Counter({
      name: 'mnemo_jobs_enqueued_total',
      help: 'Jobs created by this process and committed (idempotent replays excluded).',
      labelNames: ['kind'],
      registers: [registry],
    }),
    completed: new Counter({
      name: 'mnemo_jobs_completed_total',
      help: 'Job attempts finished by this process, by outcome (succeeded, failed, retried, released).',
      labelNames: ['kind', 'status'],
      registers: [registry],
    }),
    retried: new Counter({
      name: 'mnemo_jobs_retried_total',
      help: 'Failed attempts scheduled to run again.',
      labelNames: ['kind'],
      registers: [registry],
    }),
    leaseLost: new Counter({
      name: 'mnemo_jobs_lease_lost_total',
      help: 'Attempts whose lease another worker took over; their results were discarded.',
      labelNames: ['kind'],
      registers: [registry],
    }),
    reaped: new Counter({
      name: 'mnemo_jobs_reaped_total',
      help: 'Running jobs whose lease expired (worker crashed or stalled), returned to pending or failed.',
      labelNames: ['kind'],
      registers: [registry],
    }),
    swept: new Counter({
      name: 'mnemo_jobs_swept_total',
      help: 'Finished jobs without a parent deleted at the end of their retention (their children went with them).',
      labelNames: ['kind'],
      registers: [registry],
    }),
    earlyComputes: new Counter({
      name: 'mnemo_jobs_early_computes_total',
      help: 'Pure computes started while their job was being enqueued: used (the job ran with them) or dropped (the enqueue did not claim the job: its lane was busy elsewhere, the same idempotency key at the same moment, a lane over its limit; or the worker had no slot left for it, or was stopping).',
      labelNames: ['kind', 'outcome'],
      registers: [registry],
    }),
    waitSeconds: new Histogram({
      name: 'mnemo_job_wait_seconds',
      help: 'Time from a job becoming due to its claim.',
      labelNames: ['kind'],
      buckets: SECONDS_BUCKETS,
      registers: [registry],
    }),
    runSeconds: new Histogram({
      name: 'mnemo_job_run_seconds',
      help: 'Time from claim to the end of compute.',
      labelNames: ['kind'],
      buckets: SECONDS_BUCKETS,
      registers: [registry],
    }),
  };
  new Gauge({
    name: 'mnemo_jobs',
    help: 'Jobs pending or running in the database, by kind and status (read at scrape time; finished jobs: mnemo_jobs_completed_total).',
    labelNames: ['kind', 'status'],
    registers: [registry],
    async collect() {
      // The backlog only, each status through its partial index: finished jobs are most of
      // the table and only grow, and counting them read the whole table at every scrape.
      // A database that does not answer leaves this gauge out of the scrape, not the scrape
      // failed: the process's own counters matter most then.
      const rows = await store
        .query<{ kind: string; status: string; n: number }>(
          `select kind, 'pending' as status, count(*)::int as n from jobs
            where status = 'pending' group by kind
           union all
           select kind, 'running', count(*)::int from jobs where status = 'running' group by kind`,
        )
        .catch(() => []);
      this.reset();
      for (const row of rows) {
        this.set({ kind: row.kind, status: row.status }, row.n);
      }
    },
  });
  return metrics;
}
