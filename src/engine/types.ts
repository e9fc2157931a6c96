import type { Queryable } from '../store/types.ts';

/** A job's state. `succeeded`, `failed` and `cancelled` are terminal. */
export type JobStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** The terminal states. */
export const TERMINAL_STATUSES: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];

/** What a caller asks the engine to run. */
export interface JobSpec {
  /** The handler that runs it (registered with {@link Engine.register}). */
  kind: string;
  /** JSON-serialisable input of the handler. @defaultValue {} */
  payload?: unknown;
  /** The tenant the job belongs to. @defaultValue 'default' */
  tenantId?: string;
  /**
   * Jobs of one lane (per tenant) run one at a time, in enqueue order, across every
   * process. `null`/absent: no lane, runs in parallel with everything.
   */
  lane?: string | null;
  /** Not before this time. @defaultValue now */
  runAt?: Date;
  /** Attempts before the job fails for good. @defaultValue the kind's, else 3 */
  maxAttempts?: number;
  /** Run time limit of one attempt. @defaultValue the kind's, else the engine's */
  timeoutMs?: number;
  /**
   * Unique per tenant: enqueueing the same key again with the same kind, lane and payload
   * returns the existing job; with anything different it fails with `idempotency_conflict`.
   */
  idempotencyKey?: string;
  /**
   * Who will wait for the job to finish: `local` — a caller in this process (other
   * processes announce its finish, this one hands it over in memory), `none` — nobody (its
   * finish is never announced). Absent: every process hears of its finish.
   */
  waiter?: 'local' | 'none';
  /**
   * `false`: an enqueue outside a transaction commits without waiting for its write-ahead log
   * to reach disk (`synchronous_commit = off` for that one statement). A crash of the
   * database in the next moments may then lose the job, so the caller must not acknowledge
   * it before a later synchronous commit covers it: the job's completion (the log is written
   * in order), or {@link Engine.makeDurable}. Ignored inside a transaction (its commit
   * decides) and by `enqueueMany`. @defaultValue true
   */
  syncCommit?: boolean;
}

/** The parent of a batch: it has no handler; its status is derived from its children. */
export interface BatchParentSpec {
  kind: string;
  payload?: unknown;
  tenantId?: string;
  idempotencyKey?: string;
  /** As {@link JobSpec.waiter}. */
  waiter?: 'local' | 'none';
}

/** A job as stored. */
export interface Job {
  id: number;
  tenantId: string;
  kind: string;
  payload: unknown;
  lane: string | null;
  status: JobStatus;
  isParent: boolean;
  parentId: number | null;
  attempts: number;
  maxAttempts: number;
  runAt: Date;
  leaseToken: number;
  leaseExpiresAt: Date | null;
  result: unknown;
  error: JobError | null;
  children: ChildCounts | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

/** Counts of a batch parent's children by state. */
export interface ChildCounts {
  total: number;
  pending: number;
  running: number;
  succeeded: number;
  failed: number;
  cancelled: number;
}

/** What is recorded of a failed attempt. */
export interface JobError {
  code: string;
  message: string;
  retryable: boolean;
  attempt: number;
}

/** Result of an enqueue: the job, and whether this call created it (false: idempotent replay). */
export interface Enqueued {
  job: Job;
  created: boolean;
}

/** Result of a batch enqueue. */
export interface EnqueuedBatch {
  parent: Job;
  children: Job[];
  created: boolean;
}

/** What a handler sees of its job. */
export interface JobContext<P = unknown> {
  id: number;
  tenantId: string;
  kind: string;
  lane: string | null;
  payload: P;
  /** 1 for the first attempt. */
  attempt: number;
  maxAttempts: number;
  parentId: number | null;
  leaseToken: number;
  /** Aborted on run timeout, lease loss and shutdown; `signal.reason` is a MnemoError. */
  signal: AbortSignal;
}

/**
 * What a {@link JobHandler.pureCompute} sees: the job's input, not the job (which may not be
 * stored yet).
 */
export type InputContext<P = unknown> = Pick<
  JobContext<P>,
  'tenantId' | 'kind' | 'lane' | 'payload' | 'signal'
>;

/**
 * A job kind's code, in two phases. `compute` may be slow and holds no transaction;
 * `apply` runs in the transaction that completes the job, which commits only if the
 * worker's lease still holds, so its writes commit exactly when the job succeeds and never
 * from a stale worker.
 */
export interface JobHandler<P = unknown, C = unknown> {
  /** Slow work (LLM, transcription). No database transaction may be held across it. */
  compute?: (ctx: JobContext<P>) => Promise<C>;
  /**
   * `compute` for work whose result depends on the job's input alone (an extractor's): not
   * with `compute`. Such a compute may start before its job is stored. When an enqueue
   * outside a transaction reserves a slot of this process's worker (to claim the job in the
   * same statement), the compute starts as that statement is sent, and the job runs with its
   * result if the statement claimed it; otherwise it is aborted and dropped
   * (`mnemo_jobs_early_computes_total`; the worker starts none for a lane it knows busy). A
   * waited job's latency then loses the enqueue's round trip. The compute may thus begin
   * while the lane's previous job is still finishing (by up to the statement's duration): it
   * reads nothing, so it cannot see that job's writes half done; the applies still run one
   * at a time in lane order. Otherwise like `compute` (attempt, abort; its time limit counts
   * from the early start). See docs/engine.md, "Early computes".
   */
  pureCompute?: (ctx: InputContext<P>) => Promise<C>;
  /**
   * Short, transactional: re-read what it needs and write. Its return value is the job's
   * result (JSON). Without `apply` (or `applyFunction`) the result is what `compute`
   * returned.
   */
  apply?: (tx: Queryable, computed: C, ctx: JobContext<P>) => Promise<unknown>;
  /**
   * The apply as a database function instead of code (not with `apply`): `name` is a
   * function of the store's schema taking one `jsonb` and returning the job's result as
   * `jsonb`; `argument` builds that argument (JSON) from what `compute` returned. The engine
   * calls the function inside the very statement that completes the job, so apply and
   * completion cost one round trip, with no transaction around them; it gives the same
   * guarantees as `apply` (the writes commit exactly when the job succeeds).
   */
  applyFunction?: { name: string; argument: (computed: C, ctx: JobContext<P>) => unknown };
  /**
   * What the apply locks, as a sort key (e.g. the user whose rows it writes). The applies and
   * failure hooks of one completion run in the order of this key (then of job id; jobs
   * without a key first; in a statement of apply functions, within each function),
   * so that two completions in flight take the locks of the same keys in one order instead
   * of each waiting for the other (a deadlock, which PostgreSQL breaks only after
   * `deadlock_timeout`). Needed when jobs of one key can complete in different completions
   * at once: jobs of one lane never do.
   */
  lockKey?: (ctx: JobContext<P>) => string;
  /**
   * Runs in the transaction that fails the job for good — its completion (the last attempt
   * failed, or its error is final), or the reaper's (its worker stopped on the last attempt):
   * the place to release what the job held. Not run when a pending job is cancelled
   * (see `onCancel`).
   */
  onFailure?: (tx: Queryable, error: Error, ctx: JobContext<P>) => Promise<void>;
  /**
   * Runs in the transaction that cancels the job while it is still pending
   * (`Engine.cancel`): the place to undo what its enqueue set aside for it. It runs with the
   * job's row locked and still `pending`, before the row moves to `cancelled` (and before the
   * cancel takes the lane's and the parent's locks, as a completion runs its applies before
   * it takes them). Not run for a job that was claimed first (it is not cancelled). A hook
   * that throws rolls the cancel back (the caller gets the error).
   */
  onCancel?: (tx: Queryable, ctx: JobContext<P>) => Promise<void>;
  /** Run time limit of one attempt (compute + apply). @defaultValue the engine's `defaultTimeoutMs` */
  timeoutMs?: number;
  /** @defaultValue 3 */
  maxAttempts?: number;
  /** Backoff between attempts. @defaultValue { baseMs: 1000, maxMs: 300000 } */
  backoff?: { baseMs: number; maxMs: number };
}

/** Which jobs `Engine.listJobs` returns. */
export interface JobFilter {
  /**
   * Jobs whose payload's `user_id` is this (the convention of every per-user job): read by
   * index (`jobs_user_idx`, which holds jobs without a parent), not by filtering the
   * tenant's jobs.
   */
  userId?: string | undefined;
  status?: JobStatus | undefined;
  kind?: string | undefined;
  /** Jobs of none of these kinds (a caller's internal ones). */
  excludeKinds?: readonly string[] | undefined;
  /** Only jobs with a lower id (a page's cursor). */
  beforeId?: number | undefined;
  limit: number;
}

/** How long finished jobs of a kind are kept, and what outlives them ({@link Engine.retain}). */
export interface Retention {
  /** Kept this long (ms) after they finish. */
  ms: number;
  /**
   * Runs in the transaction that deletes them, after it has locked them and before they (and
   * their children) go, with their ids: what another table reads from them is copied here.
   * If it throws, they stay for the next sweep.
   */
  beforeDelete?: ((tx: Queryable, ids: readonly number[]) => Promise<void>) | undefined;
}
