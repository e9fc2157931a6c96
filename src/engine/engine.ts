import { hostname } from 'node:os';

import { ErrorCode, isMnemoError, MnemoError } from '../core/errors.ts';
import { createId } from '../core/ids.ts';
import { type Logger, silentLogger } from '../core/logger.ts';
import { runTransactionWithRetries } from '../store/retry.ts';
import type { Queryable, Store } from '../store/types.ts';
import {
  addChildJob,
  childrenOf,
  type ClaimFor,
  enqueueBatchJobs,
  type EnqueueContext,
  enqueueJob,
  enqueueJobs,
} from './enqueue.ts';
import { createEngineMetrics, type EngineMetrics } from './metrics.ts';
import { type JobCountsRow, listJobsQuery, selectJobs, toJobWithCounts } from './sql/rows.ts';
import { applyTransitions, type Channels, finishedIn, type Transition } from './sql/transition.ts';
import {
  type BatchParentSpec,
  type Enqueued,
  type EnqueuedBatch,
  type Job,
  type JobFilter,
  type JobHandler,
  type JobSpec,
  type Retention,
  TERMINAL_STATUSES,
} from './types.ts';
import { CompletionWaiter } from './waiter.ts';
import { type EarlyCompute, Worker, type WorkerOptions } from './worker.ts';

/** What a handler's `applyFunction` may name: an unquoted identifier of the store's schema. */
const SQL_NAME = /^[a-z_][a-z0-9_]*$/;

/** Engine-wide settings. */
export interface EngineOptions {
  /** Run time limit of one attempt when neither the job nor its kind sets one. @defaultValue 60000 */
  defaultTimeoutMs?: number;
  /** Attempts when neither the job nor its kind sets them. @defaultValue 3 */
  defaultMaxAttempts?: number;
  /** Unfinished jobs per lane past which enqueue fails with `queue_full`. @defaultValue 10000 */
  maxPendingPerLane?: number;
  /** Pending jobs overall past which enqueue fails with `queue_full`. @defaultValue 1000000 */
  maxPendingTotal?: number;
  /** `Retry-After` suggested with `queue_full`. @defaultValue 1000 */
  queueFullRetryAfterMs?: number;
  /**
   * How long a count of pending jobs is trusted by admission control; after that it is
   * refreshed in the background while the last count still serves (0: count at every
   * enqueue). @defaultValue 1000
   */
  pendingCountTtlMs?: number;
  /** How often `waitFor` re-reads a job if no notification arrives. @defaultValue 1000 */
  waitPollIntervalMs?: number;
}

/** Options of {@link Engine.waitFor}. */
export interface WaitOptions {
  /** Give up after this long and return the job as it stands. */
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * The job as its enqueue returned it, when that enqueue ran after
   * {@link Engine.prepareWait} resolved: the waiter has been listening since before the job
   * existed, so the first read is skipped.
   */
  enqueued?: Job;
}

/** The durable job engine: lanes, leases, fencing, batches. Knows nothing of memory. */
export interface Engine {
  readonly store: Store;
  readonly metrics: EngineMetrics;
  /** Registers the handler of a job kind. Register before starting workers. */
  register<P, C>(kind: string, handler: JobHandler<P, C>): void;
  /**
   * Keeps finished jobs of `kind` without a parent for `ms` after they finish, then deletes
   * them with their children: each worker sweeps them (see `WorkerOptions.sweepIntervalMs`).
   * Kinds not named here are kept for good. Call before starting workers.
   * `beforeDelete` runs in the deleting transaction first (see {@link Retention}).
   * @throws MnemoError `invalid_config` (`ms` not a whole number of 1 or more), `internal` (a
   *   worker has started)
   */
  retain(kind: string, ms: number, options?: Pick<Retention, 'beforeDelete'>): void;
  /**
   * Writes a job in one statement: inside the caller's transaction (it exists iff that
   * commits; wake-ups go out then), or on the store itself in autocommit.
   * @throws MnemoError `invalid_request`, `idempotency_conflict`, `queue_full`
   */
  enqueue(tx: Queryable, spec: JobSpec): Promise<Enqueued>;
  /** Writes many independent jobs of one tenant in one statement. */
  enqueueMany(tx: Queryable, tenantId: string, specs: readonly JobSpec[]): Promise<Job[]>;
  /**
   * Writes a parent and its children inside the caller's transaction: all or nothing.
   * @throws MnemoError `invalid_request`, `idempotency_conflict`, `queue_full`
   */
  enqueueBatch(
    tx: Queryable,
    parent: BatchParentSpec,
    children: readonly JobSpec[],
  ): Promise<EnqueuedBatch>;
  /**
   * Adds a child to a batch still pending or running (the parent then waits for it too),
   * inside the caller's transaction. A handler may grow its own batch from its apply.
   * @throws MnemoError `conflict`, `queue_full`
   */
  addChild(tx: Queryable, parentId: number, spec: JobSpec): Promise<Job>;
  /** Sets the result of a batch parent (its status stays derived from its children). */
  setParentResult(
    tx: Queryable,
    tenantId: string,
    parentId: number,
    result: unknown,
  ): Promise<void>;
  /** The job `tenantId` enqueued with idempotency key `key`, or undefined. */
  findByIdempotencyKey(tenantId: string, key: string): Promise<Job | undefined>;
  /** A job of `tenantId`, or undefined. */
  getJob(tenantId: string, id: number, q?: Queryable): Promise<Job | undefined>;
  /** A batch parent's children, in order. */
  getChildren(tenantId: string, id: number): Promise<Job[]>;
  /** Jobs of `tenantId` without a parent, newest first, one page: see {@link JobFilter}. */
  listJobs(tenantId: string, filter: JobFilter): Promise<Job[]>;
  /**
   * Cancels pending work: the job if it is pending, or a parent's pending children.
   * Running and finished jobs are left alone. Returns the job as it stands after.
   * @throws MnemoError `not_found`
   */
  cancel(tenantId: string, id: number): Promise<Job>;
  /**
   * Makes `job` (as its enqueue returned it) durable, with everything committed before: one
   * synchronous commit of a write to its row (a commit that wrote nothing is not flushed).
   * For a job enqueued with `syncCommit: false`, before it is acknowledged unfinished.
   * @throws MnemoError `not_found`: the job is not there any more (lost before it was
   *   durable; its id may even name a later job)
   */
  makeDurable(job: Job): Promise<void>;
  /** Waits until the job is finished or the timeout passes; returns it as it stands then. */
  waitFor(tenantId: string, id: number, options: WaitOptions): Promise<Job>;
  /** Resolves once this process hears of finished jobs (see {@link WaitOptions.enqueued}). */
  prepareWait(): Promise<void>;
  /**
   * Optional: tells this process's workers that a transaction which enqueued work has just
   * committed, so they claim without waiting for the NOTIFY to come back from the database.
   * An {@link enqueue} outside a transaction does it itself, for a job it did not claim
   * that is claimable now.
   */
  wakeWorkers(): void;
  /** Starts a worker in this process. */
  startWorker(options?: WorkerOptions): Promise<Worker>;
  /** Stops every worker (graceful) and the waiter. */
  stop(): Promise<void>;
}

/** Creates an engine over `store` (migrated). */
export function createEngine(deps: {
  store: Store;
  logger?: Logger;
  options?: EngineOptions;
}): Engine {
  const { store } = deps;
  const logger = deps.logger ?? silentLogger;
  const options = deps.options ?? {};
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 60_000;
  const defaultMaxAttempts = options.defaultMaxAttempts ?? 3;
  const handlers = new Map<string, JobHandler>();
  const retention = new Map<string, Retention>();
  const metrics = createEngineMetrics(store);
  const channels: Channels = {
    jobs: `${store.schema}_jobs`,
    done: `${store.schema}_done`,
    engineId: `${hostname()}:${process.pid}:${createId('e').slice(2, 10)}`,
  };
  const waiter = new CompletionWaiter(store, channels.done, logger);
  const workers = new Set<Worker>();
  const wakeWorkers = () => {
    for (const worker of workers) {
      worker.wake();
    }
  };
  const pendingCount = {
    value: 0,
    /** When the kept count finished (its TTL runs from there). */
    at: -Infinity,
    /** When the kept count began: a count begun earlier never replaces it. */
    begunAt: -Infinity,
    refreshing: undefined as Promise<void> | undefined,
  };
  const countPending = async (q: Queryable) =>
    (
      await q.query<{ n: number }>(`select count(*)::int as n from jobs where status = 'pending'`)
    )[0]?.n ?? 0;
  /**
   * Keeps a count unless one begun later is kept already. Its TTL runs from when it finished,
   * so a count slower than the TTL is not begun again at once, back to back.
   */
  const keepCount = (n: number, begunAt: number) => {
    if (begunAt > pendingCount.begunAt) {
      pendingCount.value = n;
      pendingCount.begunAt = begunAt;
      pendingCount.at = performance.now();
    }
  };
  const ttl = options.pendingCountTtlMs ?? 1000;

  const enqueueContext: EnqueueContext = {
    defaultsFor(kind) {
      const handler = handlers.get(kind);
      return {
        maxAttempts: handler?.maxAttempts ?? defaultMaxAttempts,
        timeoutMs: null,
      };
    },
    channels,
    maxPendingPerLane: options.maxPendingPerLane ?? 10_000,
    maxPendingTotal: options.maxPendingTotal ?? 1_000_000,
    retryAfterMs: options.queueFullRetryAfterMs ?? 1000,
    async pendingTotal(q, fresh = false) {
      const now = performance.now();
      if (now - pendingCount.at <= ttl) {
        return pendingCount.value;
      }
      if (fresh || ttl === 0 || pendingCount.at === -Infinity) {
        // No count yet, none may be reused, or the caller would refuse work on a stale one:
        // count now, in the caller's transaction.
        const n = await countPending(q);
        keepCount(n, now);
        return n;
      }
      // Stale: one refresh in the background (not in the caller's transaction), while the
      // last count still serves; enqueues do not queue behind a count of the whole table.
      pendingCount.refreshing ??= countPending(store)
        .then((n) => keepCount(n, now))
        .catch((err: unknown) => logger.warn({ err }, 'counting pending jobs failed'))
        .finally(() => {
          pendingCount.refreshing = undefined;
        });
      return pendingCount.value;
    },
  };

  async function readJob(q: Queryable, tenantId: string, id: number): Promise<Job | undefined> {
    const [row] = await q.query<JobCountsRow>(selectJobs('j.id = $1 and j.tenant_id = $2'), [
      id,
      tenantId,
    ]);
    return row === undefined ? undefined : toJobWithCounts(row);
  }

  /**
   * A replayed enqueue whose caller will wait here, of a job some other process (or nobody)
   * was to wait for: from now on its finish is announced to every process.
   */
  async function joinWaiters(q: Queryable, job: Job, waiter: JobSpec['waiter']): Promise<void> {
    if (waiter === 'local' && !TERMINAL_STATUSES.includes(job.status)) {
      await q.query(
        `update jobs set waiter = null
          where id = $1 and tenant_id = $2 and waiter is not null and waiter <> $3`,
        [job.id, job.tenantId, channels.engineId],
      );
    }
  }

  const engine: Engine = {
    store,
    metrics,
    register(kind, handler) {
      if (handlers.has(kind)) {
        throw new MnemoError(ErrorCode.Internal, `job kind ${kind} is already registered`);
      }
      const fn = handler.applyFunction;
      if (fn !== undefined && (handler.apply !== undefined || !SQL_NAME.test(fn.name))) {
        throw new MnemoError(
          ErrorCode.Internal,
          `job kind ${kind}: applyFunction needs a plain function name and no apply`,
        );
      }
      if (handler.compute !== undefined && handler.pureCompute !== undefined) {
        throw new MnemoError(
          ErrorCode.Internal,
          `job kind ${kind}: give compute or pureCompute, not both`,
        );
      }
      handlers.set(kind, handler as JobHandler);
    },
    retain(kind, ms, options = {}) {
      if (!Number.isSafeInteger(ms) || ms < 1) {
        throw new MnemoError(
          ErrorCode.InvalidConfig,
          `job kind ${kind}: retention must be a whole number of ms, 1 or more`,
        );
      }
      if (workers.size > 0) {
        // A worker started before the first retained kind has no sweep.
        throw new MnemoError(ErrorCode.Internal, 'retain job kinds before starting workers');
      }
      retention.set(kind, { ms, beforeDelete: options.beforeDelete });
    },
    async enqueue(tx, spec) {
      if (tx.inTransaction) {
        const out = await enqueueJob(tx, enqueueContext, spec);
        if (out.created) {
          tx.afterCommit(() => metrics.enqueued.inc({ kind: spec.kind }));
        } else {
          await joinWaiters(tx, out.job, spec.waiter);
        }
        return { job: out.job, created: out.created };
      }
      // In autocommit the statement is the whole transaction: a deadlock is retried here.
      // A worker of this process with a free slot takes the job in the same statement.
      let worker: Worker | undefined;
      let claim: ClaimFor | undefined;
      for (const w of workers) {
        claim = w.reserve();
        if (claim !== undefined) {
          worker = w;
          break;
        }
      }
      // A pure compute starts as the statement that may claim its job is sent, and runs while
      // it is in flight.
      let early: EarlyCompute | undefined;
      const claimed: ClaimFor | undefined =
        claim === undefined || worker === undefined
          ? claim
          : { ...claim, onInsert: (payload) => (early ??= worker?.startEarly(spec, payload)) };
      let out: Awaited<ReturnType<typeof enqueueJob>>;
      try {
        out = await runTransactionWithRetries(
          () => enqueueJob(tx, enqueueContext, spec, claimed),
          5,
        );
      } catch (err) {
        // queue_full after the statement was sent: the lane is over its limit.
        const laneFull = early !== undefined && isMnemoError(err, ErrorCode.QueueFull);
        worker?.unreserve(early, laneFull ? (spec.lane ?? null) : null, spec.tenantId);
        throw err;
      }
      if (out.claimed !== undefined && worker !== undefined) {
        worker.adopt(out.claimed, early);
      } else {
        worker?.unreserve(early, out.laneBusy === true ? out.job.lane : null, out.job.tenantId);
        if (out.job.status === 'pending' && out.laneBusy !== true) {
          // Claimable and not claimed: committed, so this process's workers may claim it.
          // A job behind a busy lane is not claimable until that lane's job finishes, whose
          // completion hands the lane on; waking for it would claim nothing.
          wakeWorkers();
        }
      }
      if (out.created) {
        metrics.enqueued.inc({ kind: spec.kind });
      } else {
        await joinWaiters(tx, out.job, spec.waiter);
      }
      return { job: out.job, created: out.created };
    },
    async enqueueMany(tx, tenantId, specs) {
      const jobs = tx.inTransaction
        ? await enqueueJobs(tx, enqueueContext, tenantId, specs)
        : await runTransactionWithRetries(
            () => enqueueJobs(tx, enqueueContext, tenantId, specs),
            5,
          );
      tx.afterCommit(() => {
        for (const job of jobs) {
          metrics.enqueued.inc({ kind: job.kind });
        }
      });
      return jobs;
    },
    async enqueueBatch(tx, parent, children) {
      const out = await enqueueBatchJobs(tx, enqueueContext, parent, children);
      if (out.created) {
        tx.afterCommit(() => {
          for (const child of out.children) {
            metrics.enqueued.inc({ kind: child.kind });
          }
        });
      } else {
        await joinWaiters(tx, out.parent, parent.waiter);
      }
      return out;
    },
    async addChild(tx, parentId, spec) {
      const job = await addChildJob(tx, enqueueContext, parentId, spec);
      tx.afterCommit(() => metrics.enqueued.inc({ kind: spec.kind }));
      return job;
    },
    async setParentResult(tx, tenantId, parentId, result) {
      await tx.query(
        `update jobs set result = $3::jsonb, updated_at = now()
          where id = $1 and tenant_id = $2 and is_parent`,
        [parentId, tenantId, JSON.stringify(result)],
      );
    },
    async findByIdempotencyKey(tenantId, key) {
      const [row] = await store.query<{ id: number }>(
        `select id from jobs where tenant_id = $1 and idempotency_key = $2`,
        [tenantId, key],
      );
      return row === undefined ? undefined : readJob(store, tenantId, row.id);
    },
    getJob(tenantId, id, q = store) {
      return readJob(q, tenantId, id);
    },
    async getChildren(tenantId, id) {
      const parent = await readJob(store, tenantId, id);
      return parent === undefined ? [] : childrenOf(store, id, tenantId);
    },
    async listJobs(tenantId, filter) {
      const { text, params } = listJobsQuery(tenantId, filter);
      // Planned for its values: a rare status must be read through its index even after a
      // common one was listed five times.
      const rows = await store.query<JobCountsRow>(text, params, { planEachCall: true });
      return rows.map(toJobWithCounts);
    },
    async cancel(tenantId, id) {
      let finished: number[] = [];
      const job = await store.transaction(async (tx) => {
        const current = await readJob(tx, tenantId, id);
        if (current === undefined) {
          throw new MnemoError(ErrorCode.NotFound, `operation ${id} not found`);
        }
        const targets = current.isParent
          ? (await childrenOf(tx, id, tenantId)).filter((c) => c.status === 'pending')
          : current.status === 'pending'
            ? [current]
            : [];
        // Jobs with a cancel hook: their rows locked first (in id order), so that they are
        // still pending when their hooks run (a claim skips a locked row), and the hooks take
        // their locks before the transitions take the lanes' and the parent's (the order a
        // completion takes them in: its applies first). FOR KEY SHARE: a completion ahead in
        // the lane, holding the lane's lock, may still mark the row ready (an update of no key
        // column) instead of waiting for this transaction while it waits for the lane. A job
        // claimed meanwhile is not cancelled, and gets no hook.
        const hooked = targets.filter((t) => handlers.get(t.kind)?.onCancel !== undefined);
        const held =
          hooked.length === 0
            ? new Set<number>()
            : new Set(
                (
                  await tx.query<{ id: number }>(
                    `select id from jobs where id = any($1::bigint[]) and status = 'pending'
                      order by id for key share`,
                    [hooked.map((t) => t.id)],
                  )
                ).map((r) => r.id),
              );
        const cancelling = targets.filter((t) => !hooked.includes(t) || held.has(t.id));
        for (const target of cancelling.filter((t) => held.has(t.id))) {
          await handlers.get(target.kind)?.onCancel?.(tx, {
            id: target.id,
            tenantId,
            kind: target.kind,
            lane: target.lane,
            payload: target.payload,
            attempt: target.attempts,
            maxAttempts: target.maxAttempts,
            parentId: target.parentId,
            leaseToken: target.leaseToken,
            signal: AbortSignal.abort(),
          });
        }
        const transitions: Transition[] = cancelling.map((t) => ({
          id: t.id,
          tenantId,
          lane: t.lane,
          from: 'pending',
          to: 'cancelled',
          error: {
            code: 'cancelled',
            message: 'cancelled on request',
            retryable: false,
            attempt: t.attempts,
          },
        }));
        finished = finishedIn(await applyTransitions(tx, channels, transitions));
        return readJob(tx, tenantId, id);
      });
      // Committed: waiters in this process (whose jobs are not announced to it) learn now.
      waiter.wake(finished);
      if (job === undefined) {
        throw new MnemoError(ErrorCode.NotFound, `operation ${id} not found`);
      }
      return job;
    },
    async makeDurable(job) {
      const [row] = await store.query<{ created_at: Date }>(
        `update jobs set updated_at = updated_at where tenant_id = $1 and id = $2
         returning created_at`,
        [job.tenantId, job.id],
      );
      // Another job with the same id (see waitFor) was only touched, not changed.
      if (row === undefined || Math.abs(row.created_at.getTime() - job.createdAt.getTime()) > 1) {
        throw new MnemoError(ErrorCode.NotFound, `operation ${job.id} not found`);
      }
    },
    async waitFor(tenantId, id, { timeoutMs, signal, enqueued }) {
      const deadline = performance.now() + timeoutMs;
      const poll = options.waitPollIntervalMs ?? 1000;
      // Watch before reading: a finish between the read and the wait still wakes us.
      const watch = await waiter.watch(id);
      let known = enqueued?.id === id && enqueued.tenantId === tenantId ? enqueued : undefined;
      // The job its enqueue returned, and no other: a job lost in a database crash before
      // its commit was flushed may leave its id to a later job (decision 0007).
      const born = known?.createdAt.getTime();
      const same = (job: Job) =>
        born === undefined || Math.abs(job.createdAt.getTime() - born) <= 1;
      let handOver = true;
      try {
        for (;;) {
          const seen = waiter.finished(id);
          if (seen !== undefined && seen !== null && seen.tenantId === tenantId && same(seen)) {
            return seen; // handed over by a completion in this process
          }
          if (seen === null && handOver && [...workers].some((w) => w.holds(id))) {
            // The news came first; the completion in this process that sent it is about
            // to hand the row over. Wait a little for it rather than read.
            handOver = false;
            await watch.wait(Math.max(0, Math.min(deadline - performance.now(), 100)), signal);
            continue;
          }
          const job =
            seen === undefined && known !== undefined ? known : await readJob(store, tenantId, id);
          known = undefined;
          if (job === undefined || !same(job)) {
            throw new MnemoError(ErrorCode.NotFound, `operation ${id} not found`);
          }
          const left = deadline - performance.now();
          if (TERMINAL_STATUSES.includes(job.status) || left <= 0 || signal?.aborted === true) {
            return job;
          }
          await watch.wait(Math.min(left, poll), signal);
        }
      } finally {
        watch.close();
      }
    },
    prepareWait() {
      return waiter.listening();
    },
    wakeWorkers,
    async startWorker(workerOptions) {
      const worker = new Worker(
        {
          store,
          handlers,
          retention,
          metrics,
          logger,
          channels,
          defaultTimeoutMs,
          onFinished: (ids, rows) => waiter.wake(ids, rows),
          watched: (ids) => waiter.watched(ids),
        },
        workerOptions,
      );
      workers.add(worker);
      await worker.start();
      return worker;
    },
    async stop() {
      await Promise.all([...workers].map((w) => w.stop()));
      workers.clear();
      await waiter.close();
      // Before the caller closes the store (bounded: a count stuck on a lock must not hang).
      if (pendingCount.refreshing !== undefined) {
        await Promise.race([
          pendingCount.refreshing,
          new Promise((resolve) => setTimeout(resolve, 1000).unref()),
        ]);
      }
    },
  };
  return engine;
}
