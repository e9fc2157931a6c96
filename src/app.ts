/**
 * createMnemo: wires configuration, store, engine and the memory domain into the one object
 * every surface (HTTP, CLI, MCP) calls. Surfaces translate; they hold no logic of their own.
 */
import { setMaxListeners } from 'node:events';

import type { Config } from './config.ts';
import { ErrorCode, isMnemoError, MnemoError } from './core/errors.ts';
import { operationId } from './core/ids.ts';
import { type Logger, silentLogger } from './core/logger.ts';
import { pageOf } from './core/page.ts';
import {
  type ChildCounts,
  createEngine,
  type Engine,
  type Job,
  type JobStatus,
  type Worker,
  type WorkerOptions,
} from './engine/index.ts';
import { type Authenticator, createAuthenticator } from './keys/keys.ts';
import { createOpenAiExtractor } from './memory/extractors/openai.ts';
import { rulesExtractor } from './memory/extractors/rules.ts';
import { type IngestPayload, MemoryJob, registerMemoryJobs, userLane } from './memory/pipeline.ts';
import {
  listEvents,
  listMemories,
  type Page,
  readProfile,
  searchMemory,
  type SearchType,
} from './memory/read.ts';
import type { Extractor } from './memory/types.ts';
import {
  appendMessages,
  commitSession,
  type MessageInput,
  readSession,
  registerSessionJobs,
  type SessionView,
} from './sessions/sessions.ts';
import { createStore } from './store/index.ts';
import { assertMigrated, migrate, migrationStatus } from './store/migrate.ts';
import type { Store } from './store/types.ts';
import {
  type ConversationView,
  listConversations,
  registerSyncJobs,
  type SegmentInput,
  startSync,
  SyncJob,
} from './sync/sync.ts';
import type { Transcriber } from './sync/transcriber.ts';
import { createOpenAiTranscriber } from './sync/transcriber.ts';

/** An operation as the API shows it. */
export interface OperationView {
  id: string;
  kind: string;
  status: Job['status'];
  attempts: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  result: unknown;
  error: { code: string; message: string } | null;
  children: ChildCounts;
  items?: OperationView[];
}

/** Whether a write finished within its wait. */
export interface WriteOutcome {
  operation: OperationView;
  finished: boolean;
}

/** What a session commit answers. */
export type CommitView =
  | { status: 'nothing_to_commit'; finished: true }
  | {
      status: 'committed';
      archive: { index: number; message_count: number };
      operation: OperationView;
      finished: boolean;
    };

/** A turn to ingest (API fields). */
export type IngestInput = Omit<IngestPayload, 'user_id'>;

const NO_CHILDREN = { total: 0, pending: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

/**
 * Jobs Mnemo runs for itself, not operations a client started: not listed, not found, not
 * cancellable through the operation routes (a cancelled audio deletion would keep the audio).
 */
const INTERNAL_KINDS: readonly string[] = [SyncJob.DeleteAudio];

/** What an operation id looks like (`op_<n>`); the OpenAPI document quotes it. */
export const OPERATION_ID_PATTERN = /^op_(\d{1,15})$/;

/** Parses `op_<n>`; anything else is simply not found. */
export function parseOperationId(id: string): number {
  const m = OPERATION_ID_PATTERN.exec(id);
  if (m === null) {
    throw new MnemoError(ErrorCode.NotFound, `operation ${id} not found`);
  }
  return Number(m[1]);
}

/** Maps a job to the API's operation. */
export function toOperation(job: Job): OperationView {
  return {
    id: operationId(job.id),
    kind: job.kind,
    status: job.status,
    attempts: job.attempts,
    created_at: job.createdAt.toISOString(),
    started_at: job.startedAt?.toISOString() ?? null,
    finished_at: job.finishedAt?.toISOString() ?? null,
    result: job.result ?? null,
    error: job.error === null ? null : { code: job.error.code, message: job.error.message },
    children: job.children ?? NO_CHILDREN,
  };
}

/** What `createMnemo` needs besides the configuration. */
export interface MnemoOptions {
  logger?: Logger;
  /** An extractor to use instead of the configured one (tests, embedding). */
  extractor?: Extractor;
  /** A transcriber to use instead of the configured one (tests, embedding). */
  transcriber?: Transcriber;
  /** Apply pending migrations at start. @defaultValue true */
  migrate?: boolean;
}

/** The application: every use case of Mnemo. */
export interface Mnemo {
  readonly config: Config;
  readonly store: Store;
  readonly engine: Engine;
  /** Resolves API keys to tenants. */
  readonly auth: Authenticator;
  ingest(
    tenantId: string,
    userId: string,
    input: IngestInput,
    opts: WriteOptions,
  ): Promise<WriteOutcome>;
  batchIngest(
    tenantId: string,
    userId: string,
    items: readonly IngestInput[],
    opts: WriteOptions,
  ): Promise<WriteOutcome>;
  deleteUser(tenantId: string, userId: string, opts: WriteOptions): Promise<WriteOutcome>;
  appendMessages(
    tenantId: string,
    sessionId: string,
    userId: string,
    messages: readonly MessageInput[],
    idempotencyKey?: string,
  ): Promise<{ live_count: number }>;
  commitSession(tenantId: string, sessionId: string, opts: WriteOptions): Promise<CommitView>;
  session(tenantId: string, sessionId: string): Promise<SessionView>;
  sync(
    tenantId: string,
    userId: string,
    segments: readonly SegmentInput[],
    options: { mergeWindowS: number; deviceId?: string | undefined },
    opts: WriteOptions,
  ): Promise<WriteOutcome>;
  /** A page of the user's conversations overlapping [from, to], in time order. */
  conversations(
    tenantId: string,
    userId: string,
    page: Page,
  ): Promise<{ items: ConversationView[]; next_cursor: string | null }>;
  getOperation(tenantId: string, id: string, includeChildren: boolean): Promise<OperationView>;
  cancelOperation(tenantId: string, id: string): Promise<OperationView>;
  listOperations(
    tenantId: string,
    filter: OperationFilter,
  ): Promise<{ items: OperationView[]; next_cursor: string | null }>;
  search(
    tenantId: string,
    userId: string,
    q: string,
    types: readonly SearchType[],
    limit: number,
  ): ReturnType<typeof searchMemory>;
  profile(tenantId: string, userId: string): ReturnType<typeof readProfile>;
  memories(
    tenantId: string,
    userId: string,
    limit: number,
    cursor?: number,
  ): ReturnType<typeof listMemories>;
  events(tenantId: string, userId: string, page: Page): ReturnType<typeof listEvents>;
  /** Database reachable and every migration applied. */
  ready(): Promise<boolean>;
  startWorker(options?: WorkerOptions): Promise<Worker>;
  /**
   * Ends every wait for an operation now, and every later one at once: the writes answer
   * with their operation as it stands (202 while it is unfinished; it stays durable and goes
   * on). For a shutdown whose drain must not last as long as the longest `timeout_ms`.
   */
  endWaits(): void;
  close(): Promise<void>;
}

/** How long a write waits for its operation, and its idempotency key. */
export interface WriteOptions {
  wait: boolean;
  timeoutMs: number;
  idempotencyKey?: string | undefined;
}

export interface OperationFilter {
  userId?: string | undefined;
  status?: JobStatus | undefined;
  kind?: string | undefined;
  limit: number;
  cursor?: number | undefined;
}

function chooseExtractor(config: Config): Extractor {
  if (
    config.extractor === 'openai' &&
    config.llmBaseUrl !== undefined &&
    config.llmModel !== undefined
  ) {
    return createOpenAiExtractor({
      baseUrl: config.llmBaseUrl,
      model: config.llmModel,
      apiKey: config.llmApiKey,
      timeoutMs: config.llmTimeoutMs,
      maxInputChars: config.llmMaxInputChars,
    });
  }
  return rulesExtractor;
}

/**
 * Opens the store, applies migrations (unless told not to), and registers the memory jobs.
 * @throws MnemoError `unavailable`, `schema_mismatch`
 */
export async function createMnemo(config: Config, options: MnemoOptions = {}): Promise<Mnemo> {
  const logger = options.logger ?? silentLogger;
  const store = await createStore(config);
  try {
    if (options.migrate === false) {
      // The caller's business.
    } else if (config.autoMigrate) {
      await migrate(store);
    } else {
      await assertMigrated(store); // MNEMO_AUTO_MIGRATE=false: `mnemo migrate` applies them
    }
  } catch (err) {
    await store.close();
    throw err;
  }
  const engine = createEngine({ store, logger: logger.child({ component: 'engine' }) });
  const waitsEnded = new AbortController();
  // Every waiting request listens on it for as long as it waits: no limit to warn about.
  setMaxListeners(0, waitsEnded.signal);
  const extractor = options.extractor ?? chooseExtractor(config);
  // Every kind of operation the API starts is kept this long once finished, or for good.
  const retainMs =
    config.operationRetentionHours > 0 ? config.operationRetentionHours * 3_600_000 : undefined;
  registerMemoryJobs(engine, extractor, { timeoutMs: config.llmTimeoutMs * 2, retainMs });
  registerSessionJobs(engine, store, extractor, {
    timeoutMs: config.llmTimeoutMs * 2,
    retainMs,
  });
  const transcriber =
    options.transcriber ??
    (config.sttBaseUrl === undefined
      ? undefined
      : createOpenAiTranscriber({
          baseUrl: config.sttBaseUrl,
          model: config.sttModel,
          apiKey: config.sttApiKey,
          timeoutMs: config.sttTimeoutMs,
        }));
  const syncSettings = {
    audioRetentionMs: config.audioRetentionS * 1000,
    timeoutMs: Math.max(config.sttTimeoutMs, config.llmTimeoutMs) * 2,
    retainMs,
  };
  registerSyncJobs(engine, store, extractor, transcriber, syncSettings);

  /**
   * Before a write that will wait: listening for finished jobs first lets `finish` skip
   * its first read of the job.
   */
  async function prepare(opts: WriteOptions): Promise<void> {
    if (opts.wait) {
      await engine.prepareWait();
    }
  }

  /** Whether this request waits for its job (in this process) or answers at once. */
  const waiterOf = (opts: WriteOptions) => (opts.wait ? ('local' as const) : ('none' as const));

  /**
   * After a write's enqueue (which ran after `prepare`): waits for its job if asked to.
   * `durable: false` — the job may not be on disk yet (an enqueue with `syncCommit: false`,
   * or a replay of one): answered unfinished, it is made durable first; answered finished,
   * the synchronous commit that finished it covered it already.
   */
  async function finish(
    tenantId: string,
    job: Job,
    opts: WriteOptions,
    durable = true,
    woken = false,
  ): Promise<WriteOutcome> {
    if (job.status === 'pending' && !woken) {
      engine.wakeWorkers(); // a claimed job runs already; a finished one needs nobody
    }
    let current = job;
    try {
      if (opts.wait && !TERMINAL.has(job.status)) {
        current = await engine.waitFor(tenantId, job.id, {
          timeoutMs: opts.timeoutMs,
          enqueued: job,
          signal: waitsEnded.signal,
        });
      }
      if (!durable && !TERMINAL.has(current.status)) {
        await engine.makeDurable(job);
      }
    } catch (err) {
      if (!durable && isMnemoError(err, ErrorCode.NotFound)) {
        // Gone before anything made it durable: the database restarted. Nothing was
        // acknowledged; the client may send it again.
        throw new MnemoError(
          ErrorCode.Unavailable,
          `operation ${job.id} was lost by a database restart before it was accepted; send it again`,
        );
      }
      throw err;
    }
    return { operation: toOperation(current), finished: TERMINAL.has(current.status) };
  }

  // Client keys live in their own namespace: jobs the application keys itself (a session
  // archive's) can never collide with them.
  const clientKey = (key: string | undefined) => (key === undefined ? undefined : `api:${key}`);

  return {
    config,
    store,
    engine,
    auth: createAuthenticator(store),
    async ingest(tenantId, userId, input, opts) {
      await prepare(opts);
      const payload: IngestPayload = { user_id: userId, ...input };
      // One statement in autocommit: no transaction round trips around it. A caller who
      // waits is answered after the job's completion, whose synchronous commit makes the
      // enqueue durable too: the enqueue need not wait for the disk itself (decision 0007).
      const { job, created } = await engine.enqueue(store, {
        kind: MemoryJob.Ingest,
        tenantId,
        lane: userLane(userId),
        payload,
        idempotencyKey: clientKey(opts.idempotencyKey),
        waiter: waiterOf(opts),
        syncCommit: !opts.wait,
      });
      // A replay may find a job another request enqueued without waiting for the disk.
      // The enqueue, in autocommit, woke this process's workers if its job was claimable.
      return finish(tenantId, job, opts, created && !opts.wait, true);
    },
    async batchIngest(tenantId, userId, items, opts) {
      if (items.length > config.batchMaxItems) {
        throw new MnemoError(
          ErrorCode.InvalidRequest,
          `a batch carries at most ${config.batchMaxItems} items (MNEMO_BATCH_MAX_ITEMS)`,
        );
      }
      await prepare(opts);
      const { parent } = await store.transaction((tx) =>
        engine.enqueueBatch(
          tx,
          {
            kind: MemoryJob.BatchIngest,
            tenantId,
            payload: { user_id: userId },
            idempotencyKey: clientKey(opts.idempotencyKey),
            waiter: waiterOf(opts),
          },
          items.map((item) => ({
            kind: MemoryJob.Ingest,
            tenantId,
            lane: userLane(userId),
            payload: { user_id: userId, ...item },
            waiter: 'none' as const, // callers wait for the batch, not its items
          })),
        ),
      );
      return finish(tenantId, parent, opts);
    },
    async deleteUser(tenantId, userId, opts) {
      await prepare(opts);
      const { job } = await engine.enqueue(store, {
        kind: MemoryJob.DeleteUser,
        tenantId,
        lane: userLane(userId),
        payload: { user_id: userId },
        idempotencyKey: clientKey(opts.idempotencyKey),
        waiter: waiterOf(opts),
      });
      return finish(tenantId, job, opts, true, true);
    },
    appendMessages: (tenantId, sessionId, userId, messages, idempotencyKey) =>
      appendMessages(store, tenantId, sessionId, userId, messages, idempotencyKey),
    async commitSession(tenantId, sessionId, opts) {
      await prepare(opts);
      const out = await commitSession(store, engine, tenantId, sessionId, opts.idempotencyKey);
      if (out.status === 'nothing_to_commit') {
        return { status: out.status, finished: true };
      }
      const { operation, finished } = await finish(tenantId, out.job, opts);
      return { status: out.status, archive: out.archive, operation, finished };
    },
    session: (tenantId, sessionId) => readSession(store, tenantId, sessionId),
    async sync(tenantId, userId, segments, syncOptions, opts) {
      if (segments.length > config.syncMaxSegments) {
        throw new MnemoError(
          ErrorCode.InvalidRequest,
          `a sync carries at most ${config.syncMaxSegments} segments (MNEMO_SYNC_MAX_SEGMENTS)`,
        );
      }
      await prepare(opts);
      const parent = await startSync(store, engine, syncSettings, tenantId, userId, segments, {
        ...syncOptions,
        idempotencyKey: clientKey(opts.idempotencyKey),
      });
      return finish(tenantId, parent, opts);
    },
    conversations: (tenantId, userId, page) => listConversations(store, tenantId, userId, page),
    async getOperation(tenantId, id, includeChildren) {
      const job = await engine.getJob(tenantId, parseOperationId(id));
      if (job === undefined || INTERNAL_KINDS.includes(job.kind)) {
        throw new MnemoError(ErrorCode.NotFound, `operation ${id} not found`);
      }
      const view = toOperation(job);
      if (includeChildren && job.isParent) {
        view.items = (await engine.getChildren(tenantId, job.id)).map(toOperation);
      }
      return view;
    },
    async cancelOperation(tenantId, id) {
      const jobId = parseOperationId(id);
      // A job's kind never changes: read first, then cancel.
      const job = await engine.getJob(tenantId, jobId);
      if (job === undefined || INTERNAL_KINDS.includes(job.kind)) {
        throw new MnemoError(ErrorCode.NotFound, `operation ${id} not found`);
      }
      return toOperation(await engine.cancel(tenantId, jobId));
    },
    async listOperations(tenantId, filter) {
      if (filter.kind !== undefined && INTERNAL_KINDS.includes(filter.kind)) {
        return { items: [], next_cursor: null };
      }
      const jobs = await engine.listJobs(tenantId, {
        userId: filter.userId,
        status: filter.status,
        kind: filter.kind,
        excludeKinds: filter.kind === undefined ? INTERNAL_KINDS : undefined,
        beforeId: filter.cursor,
        limit: filter.limit + 1,
      });
      const page = pageOf(jobs, filter.limit, (last) => String(last.id));
      return { items: page.rows.map(toOperation), next_cursor: page.next_cursor };
    },
    search: (tenantId, userId, q, types, limit) =>
      searchMemory(store, tenantId, userId, q, types, limit),
    profile: (tenantId, userId) => readProfile(store, tenantId, userId),
    memories: (tenantId, userId, limit, cursor) =>
      listMemories(store, tenantId, userId, limit, cursor),
    events: (tenantId, userId, page) => listEvents(store, tenantId, userId, page),
    async ready() {
      try {
        return (await migrationStatus(store)).pending.length === 0;
      } catch {
        return false;
      }
    },
    startWorker: (workerOptions) =>
      engine.startWorker({
        concurrency: config.workerConcurrency,
        prefetch: config.workerPrefetch,
        earlyCompute: config.workerEarlyCompute,
        leaseMs: config.workerLeaseMs,
        ...workerOptions,
      }),
    endWaits() {
      waitsEnded.abort();
    },
    async close() {
      await engine.stop();
      await store.close();
    },
  };
}
