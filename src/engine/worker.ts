import { hostname } from 'node:os';

import { coerceError, ErrorCode, isMnemoError, MnemoError } from '../core/errors.ts';
import { createId } from '../core/ids.ts';
import type { Logger } from '../core/logger.ts';
import { savepointScope } from '../store/commit.ts';
import { databaseStateOf, isRetryableDatabaseError } from '../store/errors.ts';
import { quoteIdent } from '../store/quote.ts';
import { runTransactionWithRetries } from '../store/retry.ts';
import type { Queryable, Store } from '../store/types.ts';
import { DEFAULT_BACKOFF, retryDelayMs } from './backoff.ts';
import type { EngineMetrics } from './metrics.ts';
import { WakeSignal } from './signal.ts';
import { type ClaimedRow, claimJobs, extendLeases, findExpired } from './sql/claim.ts';
import { deleteFinished } from './sql/retention.ts';
import {
  type AppliedInStatement,
  applyTransitions,
  type Channels,
  finishedIn,
  type FinishedRow,
  finishStatement,
  notifyStatement,
  parseFinished,
  type Transition,
  type TransitionOutcome,
} from './sql/transition.ts';
import {
  type Job,
  type JobContext,
  type JobError,
  type JobHandler,
  type JobSpec,
  type JobStatus,
  type Retention,
} from './types.ts';

/** How a worker runs. */
export interface WorkerOptions {
  /** Jobs this worker runs at once (its slots). @defaultValue 10 */
  concurrency?: number;
  /** Poll for due jobs this often when no notification arrives. @defaultValue 1000 */
  pollIntervalMs?: number;
  /** Lease length; a job whose worker stops heartbeating is re-run after it. @defaultValue 30000 */
  leaseMs?: number;
  /** Heartbeat period. @defaultValue leaseMs / 3 */
  heartbeatMs?: number;
  /** Reaper period (0 disables this worker's reaper). @defaultValue min(leaseMs / 2, 5000) */
  reapIntervalMs?: number;
  /**
   * Retention sweep period: finished jobs of the kinds given to `Engine.retain` are deleted
   * once their time is up (0 disables this worker's sweep). @defaultValue 60000
   */
  sweepIntervalMs?: number;
  /** On stop, how long running jobs may take to finish before they are released. @defaultValue 10000 */
  shutdownGraceMs?: number;
  /**
   * Jobs claimed ahead while every slot computes, started the moment a slot frees (their
   * lease runs, their run time does not). Hides the claim's round trip under load.
   * @defaultValue 2
   */
  prefetch?: number;
  /**
   * Whether an enqueue in this process that reserves one of this worker's slots starts the
   * job's `pureCompute` at once, before the job is stored (JobHandler.pureCompute).
   * @defaultValue true
   */
  earlyCompute?: boolean;
  /** Completions per transaction at most. @defaultValue 200 */
  maxBatch?: number;
  /** Completion transactions in flight at once (they touch different lanes). @defaultValue 4 */
  maxParallelCompletions?: number;
  /** Shown in `locked_by`. @defaultValue host:pid:random */
  workerId?: string;
}

/** What the worker needs from its engine. */
export interface WorkerDeps {
  store: Store;
  handlers: ReadonlyMap<string, JobHandler>;
  /** How long finished jobs of a kind are kept; kinds not in it are kept for good. */
  retention?: ReadonlyMap<string, Retention>;
  metrics: EngineMetrics;
  logger: Logger;
  channels: Channels;
  defaultTimeoutMs: number;
  /**
   * Called after a completion commits with the ids of jobs (and parents) it finished, and the
   * finished rows of those that {@link WorkerDeps.watched} named (read in the same round trip).
   */
  onFinished?: (ids: number[], jobs: ReadonlyMap<number, Job>) => void;
  /** Of these job ids, the ones someone in this process waits for. */
  watched?: (ids: readonly number[]) => number[];
}

/** What a handler sees of a job row (claimed, or expired for the reaper). */
function contextOf(
  row: Pick<
    ClaimedRow,
    | 'id'
    | 'tenant_id'
    | 'kind'
    | 'lane'
    | 'payload'
    | 'attempts'
    | 'max_attempts'
    | 'parent_id'
    | 'lease_token'
  >,
  signal: AbortSignal,
): JobContext {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    kind: row.kind,
    lane: row.lane,
    payload: row.payload,
    attempt: row.attempts,
    maxAttempts: row.max_attempts,
    parentId: row.parent_id,
    leaseToken: row.lease_token,
    signal,
  };
}

/**
 * How a completion with applies runs (see Worker.#complete): `fused` — one autocommit
 * statement (database-function applies only), the others a transaction.
 */
type CompletionMode = 'fused' | 'fast' | 'checked' | 'isolated';

type Outcome = { ok: true; computed: unknown } | { ok: false; error: Error; release?: boolean };

/**
 * A completion that fails with `unavailable` (a dropped connection, no free pool connection
 * within its wait, too many connections, a transaction that kept deadlocking) is sent again
 * this many times, the first after 0.05–0.1 s and each next after twice as long (0.8–1.6 s
 * before the fifth), before its jobs are left to their leases. Each try may also wait for a
 * connection (5 s at most).
 */
const COMPLETION_RETRIES = 5;
const COMPLETION_BACKOFF = { baseMs: 100, maxMs: 2000 };
/**
 * How long a lane an enqueue of this process found busy (its job queued behind another, or the
 * lane over its limit) gets no early compute, unless an enqueue finds it free again first.
 */
const BUSY_LANE_MEMORY_MS = 10_000;
/** Lanes remembered busy at most (the oldest are forgotten first). */
const BUSY_LANES_KEPT = 10_000;

/** A lane's key among a worker's lanes. */
const laneKey = (tenantId: string, lane: string) => `${tenantId}\u0000${lane}`;

/** A pure compute started while its job was being enqueued ({@link Worker.startEarly}). */
export interface EarlyCompute {
  readonly kind: string;
  /** Its lane's key, if it has a lane. */
  readonly lane: string | undefined;
  readonly controller: AbortController;
  readonly startedAt: number;
  /** @internal */
  readonly outcome: Promise<Outcome>;
}

interface Completed {
  outcomes: Map<number, Outcome>;
  lost: Set<number>;
  moved: Map<number, JobStatus>;
  retryDelays: number[];
  claimed: ClaimedRow[];
  finished: number[];
  /** Finished rows of watched jobs. */
  rows: Map<number, Job>;
  /** Wake-ups left to send after the commit (none when finish_jobs sent them itself). */
  notifications: TransitionOutcome['notifications'];
  /** Lane heads the completion made claimable. */
  promoted: number;
}

/** The refill a completion asks for (see {@link Refill}). */
interface RefillAsk {
  limit: number;
  onlyIfPromoted: boolean;
}

interface Running {
  row: ClaimedRow;
  handler: JobHandler;
  controller: AbortController;
  ctx: JobContext;
  startedAt: number;
  outcome?: Outcome;
  /** The outcome of its compute, started before the job was stored (an early compute). */
  early?: Promise<Outcome>;
  /** Counted in Worker.#held: its slot is freed when its completion ends. */
  holdsSlot?: boolean;
  /** Completions of this run the database could not be reached for (#flush tries again). */
  unreachable?: number;
}

/** Runs jobs: claims into free slots, computes, completes in batched fenced transactions. */
export class Worker {
  readonly id: string;
  readonly #deps: WorkerDeps;
  readonly #concurrency: number;
  readonly #pollMs: number;
  readonly #leaseMs: number;
  readonly #heartbeatMs: number;
  readonly #reapMs: number;
  readonly #sweepMs: number;
  readonly #graceMs: number;
  readonly #maxBatch: number;
  readonly #slots = new Map<number, Running>();
  readonly #toComplete: Running[] = [];
  readonly #wake = new WakeSignal();
  readonly #stopController = new AbortController();
  #flushes = 0;
  #applyFlushes = 0;
  #flushScheduled = false;
  readonly #maxFlushes: number;
  /** Places asked for by claims in flight and by enqueues that may claim (#reserved). */
  #claiming = 0;
  /** Slots reserved by enqueues in flight in this process (see reserve). */
  #reserved = 0;
  #computing = 0;
  /** Jobs whose compute ended and whose one-statement completion still holds their slot. */
  #held = 0;
  /**
   * The last claim found fewer jobs than it asked for, and no new work was announced since
   * it started (#workEpoch): compute ends then need not call the claim loop.
   */
  #drained = false;
  #workEpoch = 0;
  /** Claimed ahead (prefetch), waiting for a slot to compute in. */
  readonly #waiting: Running[] = [];
  readonly #prefetch: number;
  readonly #earlyCompute: boolean;
  /** Lanes with an early compute whose enqueue is in flight, and how many. */
  readonly #earlyLanes = new Map<string, number>();
  /** Lanes an enqueue here found busy, and until when that is believed (performance.now()). */
  readonly #busyLanes = new Map<string, number>();
  #heartbeating: Promise<void> | undefined;
  #reaping: Promise<void> | undefined;
  #sweeping: Promise<number> | undefined;
  readonly #kinds: string[];
  #loop: Promise<void> | undefined;
  #timers: NodeJS.Timeout[] = [];
  #sweepTimer: NodeJS.Timeout | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  #stopping: Promise<void> | undefined;

  constructor(deps: WorkerDeps, options: WorkerOptions = {}) {
    this.#deps = deps;
    this.#concurrency = options.concurrency ?? 10;
    this.#pollMs = options.pollIntervalMs ?? 1000;
    this.#leaseMs = options.leaseMs ?? 30_000;
    this.#heartbeatMs = options.heartbeatMs ?? Math.max(10, Math.floor(this.#leaseMs / 3));
    this.#reapMs = options.reapIntervalMs ?? Math.min(Math.floor(this.#leaseMs / 2), 5000);
    this.#sweepMs = options.sweepIntervalMs ?? 60_000;
    this.#graceMs = options.shutdownGraceMs ?? 10_000;
    this.#maxBatch = options.maxBatch ?? 200;
    this.#prefetch = options.prefetch ?? 2;
    this.#earlyCompute = options.earlyCompute ?? true;
    this.#maxFlushes = options.maxParallelCompletions ?? 4;
    this.id = options.workerId ?? `${hostname()}:${process.pid}:${createId('w').slice(2, 10)}`;
    this.#kinds = [...deps.handlers.keys()];
    if (!Number.isInteger(this.#concurrency) || this.#concurrency < 1) {
      throw new MnemoError(ErrorCode.InvalidConfig, 'worker concurrency must be at least 1');
    }
  }

  /** Starts listening, claiming, heartbeating and reaping. */
  async start(): Promise<void> {
    try {
      this.#unlisten = await this.#deps.store.listen(this.#deps.channels.jobs, () =>
        this.#newWork(),
      );
    } catch (err) {
      // Without notifications the worker still polls.
      this.#deps.logger.warn({ err }, 'worker could not listen for new jobs; polling only');
    }
    if (this.#stopController.signal.aborted) {
      // Stopped while it was subscribing: its stop found nothing to end; start nothing.
      await this.#unlisten?.();
      this.#unlisten = undefined;
      return;
    }
    // At most one heartbeat and one reap in flight: a slow database must not pile them up.
    this.#timers.push(
      setInterval(() => {
        this.#heartbeating ??= this.#heartbeat().finally(() => (this.#heartbeating = undefined));
      }, this.#heartbeatMs),
    );
    if (this.#reapMs > 0) {
      this.#timers.push(
        setInterval(() => {
          this.#reaping ??= this.#reap().finally(() => (this.#reaping = undefined));
        }, this.#reapMs),
      );
    }
    if (this.#sweepMs > 0 && (this.#deps.retention?.size ?? 0) > 0) {
      // sweep() logs a kind's failure itself and goes on with the next.
      this.#sweepTimer = setInterval(() => void this.sweep(), this.#sweepMs);
    }
    this.#loop = this.#claimLoop();
  }

  /**
   * Deletes the finished jobs whose retention is over (see `Engine.retain`), with their
   * children, a bounded number a round; returns how many (children not counted). One sweep
   * at a time in a worker; sweeps of several workers skip each other's rows. A kind whose
   * statement fails is logged and left until the next round; the others are swept.
   */
  sweep(): Promise<number> {
    if (this.#stopController.signal.aborted) {
      return Promise.resolve(0);
    }
    this.#sweeping ??= this.#sweep().finally(() => (this.#sweeping = undefined));
    return this.#sweeping;
  }

  async #sweep(): Promise<number> {
    let total = 0;
    const retention = this.#deps.retention ?? new Map<string, Retention>();
    // Statements of SWEEP_BATCH jobs, each its own transaction, for at most SWEEP_BUDGET_MS a
    // round shared by the kinds (a kind with a backlog must not hold the others back): a
    // larger backlog (the first sweep of an old table) goes over the next rounds, and on
    // PGlite, whose one connection every query shares, other queries run in between.
    const share = SWEEP_BUDGET_MS / Math.max(1, retention.size);
    for (const [kind, kept] of retention) {
      const until = Date.now() + share;
      try {
        for (;;) {
          if (this.#stopController.signal.aborted) {
            return total;
          }
          const n = await deleteFinished(this.#deps.store, kind, kept, SWEEP_BATCH);
          if (n > 0) {
            this.#deps.metrics.swept.inc({ kind }, n);
            total += n;
          }
          if (n < SWEEP_BATCH || Date.now() >= until) {
            break;
          }
        }
      } catch (err) {
        // One kind failing (its beforeDelete, say) holds the others back no longer than
        // its statement took; it is tried again next round.
        this.#deps.logger.warn({ err, kind }, 'deleting finished jobs past their retention failed');
      }
    }
    return total;
  }

  /** Claims at once if a slot is free (a local enqueue committed); NOTIFY does it otherwise. */
  wake(): void {
    this.#newWork();
  }

  /** Work may have appeared (a notification, a local enqueue): claim, drained or not. */
  #newWork(): void {
    this.#workEpoch += 1;
    this.#wake.notify();
  }

  /**
   * Reserves a free slot for a job about to be enqueued in this process (see
   * `enqueue_jobs`' claim): returns the claim to pass, or undefined when no slot is free.
   * Every reservation ends in {@link adopt} or {@link unreserve}.
   */
  reserve(): { workerId: string; leaseMs: number; kinds: readonly string[] } | undefined {
    if (this.#stopController.signal.aborted || this.#loop === undefined || this.#idleSlots() <= 0) {
      return undefined;
    }
    this.#claiming += 1;
    this.#reserved += 1;
    return { workerId: this.id, leaseMs: this.#leaseMs, kinds: this.#kinds };
  }

  /**
   * Starts the `pureCompute` of a job about to be enqueued in a slot just reserved for it,
   * unless early computes are off or, as far as this worker knows, the enqueue will not claim
   * the job: it is not due yet; or its lane is busy: this worker holds a job of it, an
   * enqueue of it with an early compute is in flight, or an enqueue found it busy in the last
   * BUSY_LANE_MEMORY_MS. Called as the enqueue's statement is sent, with the job's payload
   * as the stored JSON gives it. Ends in {@link adopt} (used) or {@link unreserve} (dropped).
   */
  startEarly(spec: JobSpec, payload: unknown): EarlyCompute | undefined {
    const handler = this.#deps.handlers.get(spec.kind);
    const pure = handler?.pureCompute;
    if (
      !this.#earlyCompute ||
      handler === undefined ||
      pure === undefined ||
      !this.#kinds.includes(spec.kind) ||
      (spec.runAt !== undefined && spec.runAt.getTime() > Date.now())
    ) {
      return undefined;
    }
    const tenantId = spec.tenantId ?? 'default';
    const lane = spec.lane ?? null;
    const key = lane === null ? undefined : laneKey(tenantId, lane);
    if (key !== undefined && this.#laneBusy(key)) {
      return undefined;
    }
    const controller = new AbortController();
    const timeoutMs = spec.timeoutMs ?? handler.timeoutMs ?? this.#deps.defaultTimeoutMs;
    if (key !== undefined) {
      this.#earlyLanes.set(key, (this.#earlyLanes.get(key) ?? 0) + 1);
    }
    return {
      kind: spec.kind,
      lane: key,
      controller,
      startedAt: performance.now(),
      outcome: this.#launch(
        () =>
          pure.call(handler, {
            tenantId,
            kind: spec.kind,
            lane,
            payload,
            signal: controller.signal,
          }),
        controller,
        timeoutMs,
      ),
    };
  }

  /**
   * Runs a job claimed for this worker at enqueue, in the slot reserved for it, with the
   * compute started early for it, if any.
   */
  adopt(row: ClaimedRow, early?: EarlyCompute): void {
    this.#claiming -= 1;
    this.#reserved -= 1;
    this.#enqueueDone(early);
    if (row.lane !== null) {
      this.#busyLanes.delete(laneKey(row.tenant_id, row.lane)); // it was free
    }
    this.#run(row, early); // released at once if the worker began to stop meanwhile
  }

  /**
   * Gives back a reserved slot the enqueue did not use, dropping its early compute. `busyLane`:
   * a lane the enqueue found busy (its job queued behind another, or the lane over its
   * limit), of `tenantId` (default 'default').
   */
  unreserve(early?: EarlyCompute, busyLane: string | null = null, tenantId = 'default'): void {
    this.#claiming -= 1;
    this.#reserved -= 1;
    this.#enqueueDone(early);
    if (busyLane !== null) {
      const key = laneKey(tenantId, busyLane);
      this.#busyLanes.delete(key); // to the end of the map's order
      this.#busyLanes.set(key, performance.now() + BUSY_LANE_MEMORY_MS);
      if (this.#busyLanes.size > BUSY_LANES_KEPT) {
        const oldest = this.#busyLanes.keys().next();
        if (oldest.done !== true) {
          this.#busyLanes.delete(oldest.value);
        }
      }
    }
    this.#dropEarly(early);
    // The slot is free again. The enqueue wakes the workers if its job is claimable; the
    // claim loop, if it waited for a slot while work may be pending, claims into this one.
    if (!this.#drained) {
      this.#wake.notify();
    }
  }

  /** An early compute's enqueue has answered: its lane has one fewer in flight. */
  #enqueueDone(early: EarlyCompute | undefined): void {
    if (early?.lane !== undefined) {
      const n = (this.#earlyLanes.get(early.lane) ?? 1) - 1;
      if (n > 0) {
        this.#earlyLanes.set(early.lane, n);
      } else {
        this.#earlyLanes.delete(early.lane);
      }
    }
  }

  #dropEarly(early: EarlyCompute | undefined): void {
    if (early !== undefined) {
      early.controller.abort(
        new MnemoError(ErrorCode.Unavailable, 'early compute dropped: its job was not claimed'),
      );
      this.#deps.metrics.earlyComputes.inc({ kind: early.kind, outcome: 'dropped' });
    }
  }

  /**
   * Whether a job enqueued into the lane now would, as far as this worker knows, queue behind
   * another: it holds a job of the lane (running, waiting or completing), an enqueue into it
   * with an early compute is in flight, or an enqueue found it busy lately.
   */
  #laneBusy(key: string): boolean {
    if (this.#earlyLanes.has(key)) {
      return true;
    }
    const until = this.#busyLanes.get(key);
    if (until !== undefined) {
      if (until > performance.now()) {
        return true;
      }
      this.#busyLanes.delete(key);
    }
    for (const running of this.#slots.values()) {
      if (running.row.lane !== null && laneKey(running.row.tenant_id, running.row.lane) === key) {
        return true;
      }
    }
    return false;
  }

  /** Slots free to compute a job this moment (an enqueue in this process may take one). */
  get idleSlots(): number {
    return Math.max(0, this.#idleSlots());
  }

  /** Whether this worker holds job `id` (running it, or completing it). */
  holds(id: number): boolean {
    return this.#slots.has(id);
  }

  /** Jobs currently held by this worker. */
  get activeCount(): number {
    return this.#slots.size;
  }

  /**
   * Stops claiming; waits up to the grace period for running jobs to finish, then aborts
   * the rest and returns them to `pending` (their attempt is not counted). Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#shutdown();
    return this.#stopping;
  }

  async #shutdown(): Promise<void> {
    this.#stopController.abort();
    clearInterval(this.#sweepTimer);
    this.#wake.notify();
    // Jobs claimed ahead and not started go back at once, without counting the attempt.
    for (const running of this.#waiting.splice(0)) {
      this.#release(running);
    }
    await this.#loop;
    const deadline = Date.now() + this.#graceMs;
    while ((this.#slots.size > 0 || this.#claiming > 0) && Date.now() < deadline) {
      await this.#waitForSlot(Math.min(50, deadline - Date.now()));
    }
    const release = new MnemoError(ErrorCode.Unavailable, 'worker shutting down; job released');
    // Claims and enqueues in flight end by themselves (what they bring is released at once).
    while (this.#slots.size > 0 || this.#claiming > 0) {
      // Again on every pass: a completion in flight may have claimed jobs meanwhile.
      for (const running of this.#slots.values()) {
        if (running.outcome === undefined && !running.controller.signal.aborted) {
          running.controller.abort(release);
        }
      }
      await this.#waitForSlot(50);
    }
    for (const timer of this.#timers) {
      clearInterval(timer); // also clears timeouts
    }
    this.#timers = [];
    await Promise.all([this.#heartbeating, this.#reaping, this.#sweeping?.catch(() => 0)]);
    await this.#unlisten?.();
  }

  readonly #slotFreed = new WakeSignal();

  #waitForSlot(timeoutMs: number): Promise<void> {
    return this.#slotFreed.wait(Math.max(1, timeoutMs));
  }

  /**
   * Jobs to claim now: free slots plus the prefetch, less the jobs claimed and not started
   * and the claims in flight. A job whose compute ended frees its slot while its completion
   * commits, so the next compute overlaps it; at most as many jobs again as there are slots
   * may be waiting for their completion.
   */
  #freeSlots(): number {
    const queued = this.#computing + this.#held + this.#waiting.length + this.#claiming;
    return Math.min(
      this.#concurrency + this.#prefetch - queued,
      2 * this.#concurrency + this.#prefetch - this.#slots.size - this.#claiming,
    );
  }

  /**
   * Slots free to compute a job at once (an enqueue in this process may take one). A claim
   * in flight does not count: it asks for work that may not exist (it usually finds none
   * when nothing queues); what it brings beyond the free slots waits as prefetched, and
   * beyond the prefetch goes back (#run).
   */
  #idleSlots(): number {
    return this.#concurrency - this.#computing - this.#held - this.#waiting.length - this.#reserved;
  }

  /**
   * Claims into free slots when the worker is idle or woken (a notification, the poll, a
   * retry coming due). Under load, claims ride along with completions instead (#flushAll).
   */
  async #claimLoop(): Promise<void> {
    const stopSignal = this.#stopController.signal;
    while (!stopSignal.aborted) {
      const free = this.#freeSlots();
      if (free <= 0 || this.#drained) {
        await this.#wake.wait(this.#pollMs);
        this.#drained = false;
        continue;
      }
      this.#claiming += free;
      const epoch = this.#workEpoch;
      let claimed: ClaimedRow[] = [];
      try {
        claimed = await this.#claim(this.#deps.store, free);
      } catch (err) {
        this.#deps.logger.error({ err }, 'claiming jobs failed; retrying');
      } finally {
        this.#claiming -= free;
      }
      this.#drained = claimed.length < free && epoch === this.#workEpoch;
      for (const row of claimed) {
        this.#run(row);
      }
    }
  }

  #claim(q: Queryable, limit: number): Promise<ClaimedRow[]> {
    return claimJobs(q, limit, this.#leaseMs, this.id, this.#kinds);
  }

  #run(row: ClaimedRow, early?: EarlyCompute): void {
    const handler = this.#deps.handlers.get(row.kind);
    if (handler === undefined) {
      this.#dropEarly(early);
      return; // cannot happen: only registered kinds are claimed
    }
    const startsNow =
      !this.#stopController.signal.aborted && this.#computing + this.#held < this.#concurrency;
    if (early !== undefined && !startsNow) {
      this.#dropEarly(early); // a job waiting for a slot computes when it gets one
      early = undefined;
    }
    const controller = early?.controller ?? new AbortController();
    const ctx = contextOf(row, controller.signal);
    const running: Running = {
      row,
      handler,
      controller,
      ctx,
      startedAt: early?.startedAt ?? performance.now(),
    };
    if (early !== undefined) {
      running.early = early.outcome;
      this.#deps.metrics.earlyComputes.inc({ kind: early.kind, outcome: 'used' });
    }
    const earlier = this.#slots.get(row.id);
    if (earlier !== undefined && earlier.outcome === undefined) {
      // Claimed again after a reaper took it from this very worker: the old attempt is stale.
      earlier.controller.abort(
        new MnemoError(ErrorCode.LeaseLost, 'lease lost: the job was claimed again'),
      );
    }
    this.#slots.set(row.id, running);
    this.#deps.metrics.waitSeconds.observe({ kind: row.kind }, row.waited_s);
    if (this.#stopController.signal.aborted) {
      this.#release(running); // claimed by a call in flight when the worker began to stop
    } else if (startsNow) {
      this.#start(running);
    } else if (this.#waiting.length < this.#prefetch) {
      this.#waiting.push(running);
    } else {
      // More than the slots and the prefetch allow (an enqueue took a slot while a claim was
      // in flight, and the claim found work after all): another worker may run it now.
      this.#release(running, 'no free slot; job released');
    }
  }

  /** Hands a job this worker holds but will not run back to pending (attempt not counted). */
  #release(running: Running, reason = 'worker shutting down; job released'): void {
    running.outcome = {
      ok: false,
      error: new MnemoError(ErrorCode.Unavailable, reason),
      release: true,
    };
    this.#toComplete.push(running);
    this.#flushSoon();
  }

  #start(running: Running): void {
    const { row } = running;
    this.#computing += 1;
    if (running.early === undefined) {
      running.startedAt = performance.now();
    }
    void this.#compute(running).then((outcome) => {
      running.outcome = outcome;
      this.#computing -= 1;
      if (this.#hasApply(running)) {
        // Its completion writes (a transaction, or a statement running its apply function):
        // the slot is free now, for a job claimed ahead or claimed at once, whose compute
        // overlaps that completion.
        this.#startWaiting();
        // A slot left idle claims at once. Places of the prefetch alone are restocked by
        // this job's completion (its refill): one statement instead of two.
        if (!this.#drained && this.#idleSlots() > 0) {
          this.#wake.notify();
        }
      } else {
        // A one-statement completion, batched with others: the slot stays taken until it
        // commits, and is refilled in that same statement.
        running.holdsSlot = true;
        this.#held += 1;
      }
      this.#deps.metrics.runSeconds.observe(
        { kind: row.kind },
        (performance.now() - running.startedAt) / 1000,
      );
      this.#toComplete.push(running);
      this.#flushSoon();
    });
  }

  /** Starts jobs claimed ahead while slots are free. */
  #startWaiting(): void {
    while (this.#waiting.length > 0 && this.#computing + this.#held < this.#concurrency) {
      const next = this.#waiting.shift();
      if (next !== undefined) {
        this.#start(next);
      }
    }
  }

  #compute(running: Running): Promise<Outcome> {
    const { handler, controller, row, ctx } = running;
    if (running.early !== undefined) {
      return running.early;
    }
    if (controller.signal.aborted) {
      // Lost its lease, or the worker is stopping, while it waited for a slot: not run.
      const error = coerceError(controller.signal.reason);
      return Promise.resolve({ ok: false, error, release: this.#stopController.signal.aborted });
    }
    const timeoutMs = row.timeout_ms ?? handler.timeoutMs ?? this.#deps.defaultTimeoutMs;
    return this.#launch(
      () =>
        handler.compute !== undefined
          ? handler.compute(ctx)
          : handler.pureCompute !== undefined
            ? handler.pureCompute(ctx)
            : Promise.resolve(undefined),
      controller,
      timeoutMs,
    );
  }

  /** Runs a compute under its time limit; what it returned, or why it failed. */
  async #launch(
    work: () => Promise<unknown>,
    controller: AbortController,
    timeoutMs: number,
  ): Promise<Outcome> {
    const timer = setTimeout(
      () =>
        controller.abort(
          new MnemoError(ErrorCode.Timeout, `job ran longer than its ${timeoutMs} ms limit`),
        ),
      timeoutMs,
    );
    try {
      const computed = await raceAbort(work(), controller.signal);
      return { ok: true, computed };
    } catch (err) {
      const error = controller.signal.aborted
        ? coerceError(controller.signal.reason)
        : coerceError(err);
      return {
        ok: false,
        error,
        release: isMnemoError(error, ErrorCode.Unavailable) && this.#stopController.signal.aborted,
      };
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Another completion may start while others are in flight only if those are apply
   * transactions (several round trips each); quick autocommit completions batch better one
   * at a time.
   */
  #mayFlush(): boolean {
    return (
      this.#flushes === 0 ||
      (this.#flushes < this.#maxFlushes && this.#flushes === this.#applyFlushes)
    );
  }

  #flushSoon(): void {
    if (this.#flushScheduled || this.#toComplete.length === 0 || !this.#mayFlush()) {
      return; // a flush in flight or about to start picks up what is queued
    }
    // Start on the next turn of the event loop, so that every compute finishing in this
    // turn rides in the same transaction.
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      if (this.#toComplete.length === 0 || !this.#mayFlush()) {
        return;
      }
      const batch = this.#takeBatch();
      const applies = batch.some((r) => this.#hasApply(r));
      this.#flushes += 1;
      this.#applyFlushes += applies ? 1 : 0;
      void this.#flush(batch, applies).finally(() => {
        this.#flushes -= 1;
        this.#applyFlushes -= applies ? 1 : 0;
        this.#flushSoon();
      });
      // Completions of other lanes need not wait for this one to commit.
      this.#flushSoon();
    });
  }

  /**
   * Up to maxBatch queued completions, never two attempts of one job (a job reaped and
   * claimed again while its old attempt computed): finish_jobs moves a job once, so the
   * stale attempt waits for a batch of its own, where its lost lease shows.
   */
  #takeBatch(): Running[] {
    const batch: Running[] = [];
    const ids = new Set<number>();
    const rest: Running[] = [];
    for (const running of this.#toComplete) {
      if (batch.length < this.#maxBatch && !ids.has(running.row.id)) {
        ids.add(running.row.id);
        batch.push(running);
      } else {
        rest.push(running);
      }
    }
    this.#toComplete.splice(0, this.#toComplete.length, ...rest);
    return batch;
  }

  async #flush(batch: Running[], applies: boolean): Promise<void> {
    {
      // Free slots and prefetch places are refilled in the same call, lane heads the batch
      // promotes among the candidates. A slot left idle as a compute ended was claimed for at
      // once (#start); prefetch places are restocked here, without a round trip of their own.
      const freed = batch.filter((r) => r.holdsSlot === true).length;
      const refill = this.#stopController.signal.aborted
        ? 0
        : Math.max(0, this.#freeSlots() + freed);
      this.#claiming += refill;
      const epoch = this.#workEpoch;
      // Drained: nothing was there to claim at the last look, and no work was announced
      // since (a wake-up clears the flag). Then the refill claims only the lane heads this
      // completion hands on, which nobody else has heard of; unannounced work (a run_at
      // coming due) waits for the next poll (docs/engine.md).
      const ask = { limit: refill, onlyIfPromoted: this.#drained };
      let claimed: ClaimedRow[] = [];
      const retried: Running[] = [];
      try {
        // Without applies the whole completion is one autocommit statement; with them, the
        // applies and the completion share one fenced statement or transaction.
        const done = applies
          ? await this.#completeWithApplies(batch, ask)
          : await runTransactionWithRetries(() => this.#complete(this.#deps.store, batch, ask), 5);
        claimed = done.claimed;
        // A refill that was skipped (nothing handed on) looked at nothing: it tells nothing
        // about the backlog, and the flag stays as it is (a poll may have cleared it).
        if (refill > 0 && (!ask.onlyIfPromoted || done.promoted > 0)) {
          this.#drained = claimed.length < refill && epoch === this.#workEpoch;
        }
        // Jobs the refill could not take, of lanes this batch handed on: a worker that has
        // room but found nothing more it could run, or that has no room and no backlog,
        // calls the others; one with a backlog claims them itself shortly.
        const full = refill === 0 ? this.#drained : claimed.length < refill;
        // Jobs handed back (a surplus claim, a shutdown) are ready and pending again, and
        // nothing else announces them: call every worker, this one included.
        const reclaimed = new Set(claimed.map((row) => row.id));
        const handedBack = batch.some(
          (r) =>
            r.outcome?.ok === false &&
            r.outcome.release === true &&
            done.moved.get(r.row.id) === 'pending' &&
            !reclaimed.has(r.row.id), // its own refill took it again
        );
        this.#notifyAfter({
          announce: done.notifications.announce,
          wake: (done.notifications.wake && full) || handedBack,
        });
        this.#record(batch, done.outcomes, done.lost, done.moved);
        this.#wakeAfter(done.retryDelays);
        // Waiters in this process learn at once; others through the `done` notification.
        this.#deps.onFinished?.(done.finished, done.rows);
      } catch (err) {
        // The database refused the whole batch: nothing of it was applied, unless the
        // connection was lost after the commit (sent again, no job moves twice: finish_jobs
        // moves only `running` jobs of the same lease token). On `unavailable`, unless the
        // worker is stopping, the jobs keep their slots, and so their leases while heartbeats
        // get through, and their completion is sent again shortly with what their computes
        // returned (COMPLETION_RETRIES). Otherwise they stay `running` until their leases
        // expire and the reaper runs them again.
        if (isMnemoError(err, ErrorCode.Unavailable) && !this.#stopController.signal.aborted) {
          for (const running of batch) {
            running.unreachable = (running.unreachable ?? 0) + 1;
            if (running.unreachable <= COMPLETION_RETRIES) {
              retried.push(running);
            }
          }
        }
        this.#deps.logger.error(
          { err, jobs: batch.map((r) => r.row.id), retried: retried.map((r) => r.row.id) },
          retried.length > 0 ? 'completing jobs failed; trying again' : 'completing jobs failed',
        );
        this.#retryCompletion(retried);
        this.#newWork();
      } finally {
        this.#claiming -= refill;
      }
      for (const running of batch) {
        if (retried.includes(running)) {
          continue; // still this worker's, and still to complete
        }
        if (running.holdsSlot === true) {
          running.holdsSlot = false;
          this.#held -= 1;
        }
        // The same job may hold a slot again by now (reaped and re-claimed by this worker).
        if (this.#slots.get(running.row.id) === running) {
          this.#slots.delete(running.row.id);
        }
      }
      this.#startWaiting();
      for (const row of claimed) {
        this.#run(row);
      }
      this.#slotFreed.notify();
      if (!this.#drained) {
        this.#wake.notify(); // places held by these completions are free: claim more
      }
    }
  }

  /** Queues `batch` for another completion after a delay (see COMPLETION_RETRIES). */
  #retryCompletion(batch: readonly Running[]): void {
    if (batch.length === 0) {
      return;
    }
    const tries = Math.max(...batch.map((r) => r.unreachable ?? 1));
    const timer = setTimeout(
      () => {
        this.#timers = this.#timers.filter((t) => t !== timer);
        this.#toComplete.push(...batch);
        this.#flushSoon();
      },
      retryDelayMs(tries, COMPLETION_BACKOFF),
    );
    this.#timers.push(timer);
  }

  /**
   * The fast path first: one statement when every apply is a database function and no
   * failure hook runs, else a transaction. A lease lost while applying runs the batch again
   * in a transaction with leases checked first; a failing apply (which aborted the
   * statement or transaction) with each apply in a savepoint of its own.
   */
  async #completeWithApplies(batch: readonly Running[], refill: RefillAsk): Promise<Completed> {
    // A job with a failure hook may still fail (its argument throws, its run timed out):
    // its batch takes a transaction from the start.
    let mode: CompletionMode = batch.some(
      (r) => this.#needsTransaction(r) || r.handler.onFailure !== undefined,
    )
      ? 'fast'
      : 'fused';
    for (;;) {
      const current = mode;
      try {
        return current === 'fused'
          ? await runTransactionWithRetries(
              () => this.#complete(this.#deps.store, batch, refill, current),
              5,
            )
          : await this.#deps.store.transaction((tx) => this.#complete(tx, batch, refill, current));
      } catch (err) {
        const state = databaseStateOf(err);
        if ((current === 'fused' || current === 'fast') && state === LEASE_LOST_SQLSTATE) {
          mode = 'checked';
        } else if (err instanceof ApplyFailed && current !== 'isolated') {
          mode = 'isolated';
        } else if (
          current === 'fused' &&
          state !== undefined &&
          !isMnemoError(err, ErrorCode.Unavailable)
        ) {
          // The statement failed in an apply function, or in finish_jobs itself: the
          // isolated transaction tells which job's apply it was (or fails the same way).
          mode = 'isolated';
        } else {
          throw err;
        }
      }
    }
  }

  /**
   * Completes a batch: the applies first, then every transition and the refill claim in one
   * statement (`finish_jobs`), which moves a job only while its lease token is still the
   * one this worker holds. Fast path: no lease check before the applies; a job that turns
   * out lost makes finish_jobs raise (SQLSTATE MNL01), which rolls the whole transaction
   * back. `checked`: row locks and lease checks before any handler code runs (final failures
   * with a hook always take this path); `isolated`: checked, and each apply in a savepoint.
   * In a transaction, finish_jobs also returns the finished rows local waiters want, and
   * leaves the wake-ups to be sent after the commit.
   */
  async #complete(
    q: Queryable,
    batch: readonly Running[],
    refill: RefillAsk,
    mode: CompletionMode = 'fast',
  ): Promise<Completed> {
    const outcomes = new Map<number, Outcome>(
      batch.map((r) => [r.row.id, r.outcome ?? failedUnknown()]),
    );
    const applying = sortByLockKey(
      batch.filter((r) => r.outcome?.ok === true && this.#hasApply(r)),
    );
    const hooked = batch.filter(
      (r) => r.outcome?.ok === false && r.handler.onFailure !== undefined,
    );
    const lost = new Set<number>();
    const checkFirst = mode === 'checked' || mode === 'isolated' || hooked.length > 0;
    // In one statement, the apply functions run as arguments of finish_jobs.
    const inStatement: AppliedInStatement[] = [];
    if (mode === 'fused') {
      for (const running of applying) {
        const outcome = this.#functionArgument(running);
        if (outcome.ok) {
          inStatement.push(outcome.applied);
        } else {
          outcomes.set(running.row.id, outcome);
        }
      }
    } else if (!checkFirst) {
      for (const running of applying) {
        outcomes.set(running.row.id, await this.#applyOne(q, running, false));
      }
    } else if (applying.length > 0 || hooked.length > 0) {
      // The job rows first, the lane locks only in finish_jobs at the end: a lane lock held
      // through the applies would make every enqueue into those lanes wait for them. The
      // one party taking these locks the other way round is a reaper finishing the same
      // job (its lease expired meanwhile); PostgreSQL detects that deadlock and the
      // transaction is retried.
      const held = await q.query<{ id: number; lease_token: number }>(
        `select id, lease_token from jobs where id = any($1::bigint[]) and status = 'running'
          order by id for update`,
        [[...applying, ...hooked].map((r) => r.row.id)],
      );
      const tokens = new Map(held.map((h) => [h.id, h.lease_token]));
      for (const running of hooked) {
        if (tokens.get(running.row.id) !== running.row.lease_token) {
          lost.add(running.row.id);
        }
      }
      for (const running of applying) {
        if (tokens.get(running.row.id) !== running.row.lease_token) {
          lost.add(running.row.id);
          continue;
        }
        outcomes.set(running.row.id, await this.#applyOne(q, running, mode === 'isolated'));
      }
    }
    const transitions = batch
      .filter((r) => !lost.has(r.row.id))
      .map((r) => this.#transitionFor(r, outcomes.get(r.row.id) ?? failedUnknown()));
    // Failure hooks in lock-key order too (they lock what the applies lock).
    const hookOrder = new Map(
      sortByLockKey(batch.filter((r) => r.handler.onFailure !== undefined)).map((r, i) => [
        r.row.id,
        i,
      ]),
    );
    const byKey =
      hookOrder.size < 2
        ? transitions
        : [...transitions].sort((a, b) => (hookOrder.get(a.id) ?? 0) - (hookOrder.get(b.id) ?? 0));
    for (const t of byKey) {
      const running = batch.find((r) => r.row.id === t.id);
      const outcome = outcomes.get(t.id);
      if (t.to === 'failed' && running?.handler.onFailure !== undefined && outcome?.ok === false) {
        await this.#onFailure(q, running, outcome.error);
      }
    }
    const refillSpec = {
      limit: refill.limit,
      leaseMs: this.#leaseMs,
      workerId: this.id,
      kinds: this.#kinds,
      onlyIfPromoted: refill.onlyIfPromoted,
    };
    // Completions with applies, in a transaction or fused into one statement, defer their
    // wake-ups and hand over the rows of watched jobs; plain ones notify themselves.
    const deferred = q.inTransaction || mode === 'fused';
    let result: TransitionOutcome;
    if (!deferred) {
      result = await applyTransitions(q, this.#deps.channels, transitions, refillSpec);
    } else {
      const ids = new Set(batch.flatMap((r) => [r.row.id, r.row.parent_id ?? r.row.id]));
      const finish = finishStatement(this.#deps.channels, transitions, refillSpec, {
        // Applied on the fast path: the statement fails unless each of them moved.
        mustMove: checkFirst
          ? []
          : mode === 'fused'
            ? inStatement.map((a) => a.id)
            : applying.map((r) => r.row.id),
        // Wake-ups leave after the commit (#notifyAfter): a NOTIFY inside would hold a
        // database-wide lock through this commit's flush.
        deferNotify: true,
        want: this.#deps.watched?.([...ids]) ?? [],
        applied: inStatement,
      });
      const [row] = await q.query<FinishedRow>(finish.sql, finish.params);
      result = parseFinished(row);
    }
    for (const running of batch) {
      if (!result.moved.has(running.row.id)) {
        lost.add(running.row.id);
      }
    }
    const retryDelays = transitions
      .filter((t) => t.to === 'pending' && result.moved.get(t.id) === 'pending')
      .map((t) => t.delayMs ?? 0);
    const finished = finishedIn(result);
    return {
      outcomes,
      lost,
      moved: result.moved,
      retryDelays,
      claimed: result.claimed,
      finished,
      rows: new Map(result.rows.map((job) => [job.id, job])),
      // Otherwise finish_jobs sent them itself.
      notifications: deferred ? result.notifications : { announce: [], wake: false },
      promoted: result.promoted,
    };
  }

  /**
   * Sends the wake-ups of a committed completion, without waiting: a lost one only delays
   * waiters and workers elsewhere until their next poll.
   */
  #notifyAfter(notifications: TransitionOutcome['notifications']): void {
    const statement = notifyStatement(this.#deps.channels, notifications);
    if (statement !== undefined) {
      this.#deps.store.query(statement.sql, statement.params).catch((err: unknown) => {
        this.#deps.logger.warn({ err }, 'sending wake-ups after a completion failed');
      });
    }
  }

  /** Retries become due without a notification: wake the claim loop when the first one is. */
  #wakeAfter(delays: readonly number[]): void {
    if (delays.length === 0 || this.#stopController.signal.aborted) {
      return;
    }
    const timer = setTimeout(
      () => {
        this.#timers = this.#timers.filter((t) => t !== timer);
        this.#newWork();
      },
      Math.min(...delays) + 1,
    );
    timer.unref();
    this.#timers.push(timer);
  }

  /** A completion that runs handler code (an apply, or a final failure's hook). */
  #needsTransaction(r: Running): boolean {
    return r.outcome?.ok === true
      ? r.handler.apply !== undefined
      : r.handler.onFailure !== undefined;
  }

  /** A completion that writes: handler code, or an apply function. */
  #hasApply(r: Running): boolean {
    return (
      this.#needsTransaction(r) || (r.outcome?.ok === true && r.handler.applyFunction !== undefined)
    );
  }

  /** The call of a job's apply function, or why the job fails instead (as an apply would). */
  #functionArgument(
    running: Running,
  ): { ok: true; applied: AppliedInStatement } | (Outcome & { ok: false }) {
    const { handler, controller, row } = running;
    if (controller.signal.aborted) {
      return { ok: false, error: coerceError(controller.signal.reason) };
    }
    const fn = handler.applyFunction;
    if (fn === undefined || running.outcome?.ok !== true) {
      return failedUnknown();
    }
    try {
      return {
        ok: true,
        applied: {
          id: row.id,
          name: this.#functionName(fn.name),
          argument: this.#argumentJson(running, running.outcome.computed),
        },
      };
    } catch (err) {
      // Its argument could not be built or written as JSON: the job's failure, not the batch's.
      return { ok: false, error: coerceError(err) };
    }
  }

  /** An apply function's name, qualified with the store's schema (no built-in shadows it). */
  #functionName(name: string): string {
    return `${quoteIdent(this.#deps.store.schema)}.${quoteIdent(name)}`;
  }

  /** Runs a job's apply: its code, or its function as a statement of its own. */
  async #runApply(tx: Queryable, running: Running, computed: unknown): Promise<unknown> {
    const { handler, ctx } = running;
    const fn = handler.applyFunction;
    if (fn === undefined) {
      return handler.apply?.(tx, computed, ctx);
    }
    const [row] = await tx.query<{ result: unknown }>(
      `select ${this.#functionName(fn.name)}($1::jsonb) as result`,
      [this.#argumentJson(running, computed)],
    );
    return row?.result ?? null;
  }

  /**
   * The JSON text of a job's apply-function argument, the same on every path; throws, not
   * retryable, when JSON cannot hold it (a function, a symbol, a BigInt, a cycle), rather
   * than passing SQL null or retrying what fails the same way each time.
   */
  #argumentJson(running: Running, computed: unknown): string {
    const fn = running.handler.applyFunction;
    const value: unknown = fn?.argument(computed, running.ctx) ?? null;
    let text: string | undefined;
    let cause: unknown;
    try {
      text = JSON.stringify(value);
    } catch (err) {
      cause = err; // a BigInt, a cycle: it would fail the same way at every attempt
    }
    if (text === undefined) {
      throw new MnemoError(
        ErrorCode.Internal,
        `job kind ${running.row.kind}: the argument of its apply function is not JSON`,
        { cause, retryable: false },
      );
    }
    return text;
  }

  async #applyOne(tx: Queryable, running: Running, isolate: boolean): Promise<Outcome> {
    const { controller } = running;
    if (controller.signal.aborted) {
      return { ok: false, error: coerceError(controller.signal.reason) };
    }
    const computed = running.outcome?.ok === true ? running.outcome.computed : undefined;
    if (!isolate) {
      // The common case costs no savepoints; a failing apply aborts the whole transaction
      // and the batch is completed again with each apply isolated (#completeWithApplies).
      try {
        return { ok: true, computed: await this.#runApply(tx, running, computed) };
      } catch (err) {
        // A deadlock or serialization failure is the transaction's, not the job's: the whole
        // completion is retried and no attempt is charged.
        throw isRetryableDatabaseError(err) ? err : new ApplyFailed(err);
      }
    }
    // What the apply asks to run after the commit goes with the savepoint's writes.
    const scope = savepointScope(tx);
    await tx.query('savepoint job_apply');
    try {
      const result = await this.#runApply(scope.handle, running, computed);
      await tx.query('release savepoint job_apply');
      scope.keep();
      return { ok: true, computed: result };
    } catch (err) {
      if (isRetryableDatabaseError(err)) {
        throw err;
      }
      await tx.query('rollback to savepoint job_apply');
      return { ok: false, error: coerceError(err) };
    }
  }

  /** A job's hook for its final failure, in a savepoint: a failing hook is logged only. */
  async #onFailure(
    q: Queryable,
    running: { row: { id: number; kind: string }; handler: JobHandler; ctx: JobContext },
    error: Error,
  ): Promise<void> {
    const scope = savepointScope(q);
    await q.query('savepoint job_on_failure');
    try {
      await running.handler.onFailure?.(scope.handle, error, running.ctx);
      await q.query('release savepoint job_on_failure');
      scope.keep();
    } catch (err) {
      if (isRetryableDatabaseError(err)) {
        throw err;
      }
      await q.query('rollback to savepoint job_on_failure');
      this.#deps.logger.error(
        { err, job: running.row.id, kind: running.row.kind },
        'the failure hook of a job failed',
      );
    }
  }

  #transitionFor(running: Running, outcome: Outcome): Transition {
    const { row, handler } = running;
    const base = {
      id: row.id,
      tenantId: row.tenant_id,
      lane: row.lane,
      from: 'running' as const,
      token: row.lease_token,
    };
    if (outcome.ok) {
      return { ...base, to: 'succeeded', result: outcome.computed ?? null };
    }
    if (outcome.release === true) {
      return { ...base, to: 'pending', delayMs: 0, refund: true };
    }
    const error = describeError(outcome.error, row.attempts);
    if (error.retryable && row.attempts < row.max_attempts) {
      return {
        ...base,
        to: 'pending',
        error,
        delayMs: retryDelayMs(row.attempts, handler.backoff ?? DEFAULT_BACKOFF),
      };
    }
    return { ...base, to: 'failed', error };
  }

  #record(
    batch: readonly Running[],
    outcomes: ReadonlyMap<number, Outcome>,
    lost: ReadonlySet<number>,
    moved: ReadonlyMap<number, JobStatus>,
  ): void {
    const { metrics, logger } = this.#deps;
    for (const running of batch) {
      const { id, kind } = running.row;
      if (lost.has(id)) {
        metrics.leaseLost.inc({ kind });
        logger.warn(
          { job: id, kind },
          'lease lost: another worker owns this job now; result discarded',
        );
        continue;
      }
      const status = moved.get(id);
      const outcome = outcomes.get(id);
      if (status === 'pending') {
        const released = outcome?.ok === false && outcome.release === true;
        metrics.completed.inc({ kind, status: released ? 'released' : 'retried' });
        if (!released) {
          metrics.retried.inc({ kind });
        }
      } else if (status !== undefined) {
        metrics.completed.inc({ kind, status });
      }
      if (outcome?.ok === false && outcome.release !== true) {
        logger.warn({ job: id, kind, err: outcome.error, status }, 'job attempt failed');
      }
    }
  }

  async #heartbeat(): Promise<void> {
    // Every job this worker holds, finished or not: a finished job keeps its lease until its
    // completion commits, or another worker's reaper would run it again.
    const held = [...this.#slots.values()].map((r) => ({ id: r.row.id, token: r.row.lease_token }));
    try {
      const lost = new Set(await extendLeases(this.#deps.store, held, this.#leaseMs));
      for (const { id, token } of held) {
        const running = this.#slots.get(id);
        if (lost.has(id) && running?.row.lease_token === token && running.outcome === undefined) {
          running.controller.abort(
            new MnemoError(ErrorCode.LeaseLost, 'lease lost: another worker owns this job'),
          );
        }
      }
    } catch (err) {
      this.#deps.logger.warn({ err }, 'heartbeat failed');
    }
  }

  async #reap(): Promise<void> {
    try {
      const expired = await findExpired(this.#deps.store, 100);
      if (expired.length === 0) {
        return;
      }
      const transitions: Transition[] = expired.map((row) => {
        const error: JobError = {
          code: 'lease_expired',
          message:
            'the worker running this job stopped heartbeating (crashed, stalled or lost its connection)',
          retryable: true,
          attempt: row.attempts,
        };
        const retry = row.attempts < row.max_attempts;
        return {
          id: row.id,
          tenantId: row.tenant_id,
          lane: row.lane,
          from: 'running',
          to: retry ? 'pending' : 'failed',
          token: row.lease_token,
          error,
          expiredOnly: true,
        };
      });
      // A job failing for good here (its last attempt's worker died) gets its failure hook
      // too, in the transaction that fails it; the rest moves in one autocommit statement.
      const hooked = expired.filter(
        (row) =>
          row.attempts >= row.max_attempts &&
          this.#deps.handlers.get(row.kind)?.onFailure !== undefined,
      );
      const result =
        hooked.length === 0
          ? await applyTransitions(this.#deps.store, this.#deps.channels, transitions)
          : await this.#deps.store.transaction(async (tx) => {
              // Row locks first: a job completed or reaped meanwhile gets no hook.
              const still = await tx.query<{ id: number }>(
                `select id from jobs where id = any($1::bigint[]) and status = 'running'
                   and lease_expires_at < now() order by id for update`,
                [hooked.map((r) => r.id)],
              );
              const ids = new Set(still.map((r) => r.id));
              // In lock-key order, as a completion runs its hooks.
              const hooks = sortByLockKey(
                hooked
                  .filter((r) => ids.has(r.id))
                  .flatMap((row) => {
                    const handler = this.#deps.handlers.get(row.kind);
                    const ctx = contextOf(row, this.#stopController.signal);
                    return handler === undefined
                      ? []
                      : [{ row: { id: row.id, kind: row.kind }, handler, ctx }];
                  }),
              );
              for (const hook of hooks) {
                await this.#onFailure(
                  tx,
                  hook,
                  new MnemoError(ErrorCode.Timeout, 'the worker running this job stopped'),
                );
              }
              return applyTransitions(tx, this.#deps.channels, transitions);
            });
      for (const row of expired) {
        if (result.moved.has(row.id)) {
          this.#deps.metrics.reaped.inc({ kind: row.kind });
          this.#deps.logger.warn(
            { job: row.id, kind: row.kind, status: result.moved.get(row.id) },
            'reaped a job whose lease expired',
          );
        }
      }
      if (result.moved.size > 0) {
        this.#newWork();
        this.#deps.onFinished?.(finishedIn(result), new Map());
      }
    } catch (err) {
      this.#deps.logger.warn({ err }, 'reaping expired jobs failed');
    }
  }
}

/** An apply threw outside a savepoint: the batch is completed again with applies isolated. */
class ApplyFailed extends Error {
  constructor(cause: unknown) {
    super('a job apply failed', { cause });
  }
}

/** Jobs a retention statement deletes at most (with their children). */
const SWEEP_BATCH = 200;
/** How long one retention sweep goes on at most before it leaves the rest to the next. */
const SWEEP_BUDGET_MS = 10_000;

/** Raised by assert_moved (migration 0008): a job applied on the fast path had lost its lease. */
const LEASE_LOST_SQLSTATE = 'MNL01';

/** What {@link sortByLockKey} orders: a job with its handler and context. */
interface Keyed {
  row: { id: number };
  handler: JobHandler;
  ctx: JobContext;
}

/** A job's lock key ('' without one, or when the handler's function throws: order only). */
function lockKeyOf(running: Keyed): string {
  try {
    return running.handler.lockKey?.(running.ctx) ?? '';
  } catch {
    return '';
  }
}

/**
 * The applies of one completion in the order of their handlers' lock keys (then job ids;
 * jobs without a key first), so that completions in flight lock shared keys in one order.
 */
function sortByLockKey<T extends Keyed>(applying: T[]): T[] {
  if (applying.length < 2 || applying.every((r) => r.handler.lockKey === undefined)) {
    return applying;
  }
  const keyed = applying.map((r) => ({ r, key: lockKeyOf(r) }));
  keyed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.r.row.id - b.r.row.id));
  return keyed.map((k) => k.r);
}

function failedUnknown(): Outcome & { ok: false } {
  return {
    ok: false,
    error: new MnemoError(ErrorCode.Internal, 'job finished without an outcome'),
  };
}

/** What is recorded of an error: its code and message; unknown errors count as retryable. */
function describeError(error: Error, attempt: number): JobError {
  if (error instanceof MnemoError) {
    return { code: error.code, message: error.message, retryable: error.retryable, attempt };
  }
  return { code: ErrorCode.Internal, message: error.message, retryable: true, attempt };
}

/** Settles with `work`, or rejects with the signal's reason as soon as it aborts. */
function raceAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(coerceError(err));
      },
    );
  });
}
