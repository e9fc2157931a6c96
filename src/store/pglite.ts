import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { PGlite } from '@electric-sql/pglite';

import { ErrorCode, MnemoError } from '../core/errors.ts';
import { afterCommitInto, type CommitCallbacks, runAfterCommit } from './commit.ts';
import { translateDatabaseError } from './errors.ts';
import { quoteIdent } from './quote.ts';
import { assertSchemaName, runTransactionWithRetries } from './retry.ts';
import type { NotificationHandler, Queryable, Store, TransactionOptions } from './types.ts';

/** Options of {@link createPgliteStore}. */
export interface PgliteStoreOptions {
  /**
   * Where the database lives: a directory path, or `memory://` for an in-memory database.
   * PGlite never calls fsync: acknowledged writes survive a process crash but not an OS
   * crash or power loss.
   */
  dataDir: string;
  /** The schema Mnemo's tables live in. @defaultValue 'mnemo' */
  schema?: string;
}

/** The part of a PGlite instance or transaction the store uses. */
interface PgliteQueryable {
  query<T>(sql: string, params?: unknown[]): Promise<{ rows: T[] }>;
  exec(sql: string): Promise<unknown>;
}

/**
 * A handle on `db`. `committed` collects the handle's afterCommit callbacks inside a
 * transaction (run by `transaction` after COMMIT); without it they run at once.
 */
function wrap(db: PgliteQueryable, committed?: CommitCallbacks): Queryable {
  return {
    inTransaction: committed !== undefined,
    afterCommit: afterCommitInto(committed),
    async query<Row extends object>(sql: string, params: readonly unknown[] = []) {
      try {
        const result = await db.query<Row>(sql, params as unknown[]);
        return result.rows;
      } catch (err) {
        throw translateDatabaseError(err);
      }
    },
    async exec(sql: string) {
      try {
        await db.exec(sql);
      } catch (err) {
        throw translateDatabaseError(err);
      }
    },
  };
}

/** Lock files this process holds: a lock naming this pid but not here is a dead namesake's. */
const held = new Set<string>();

/** When process `pid` started (Linux: clock ticks since boot), or undefined where unknown. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name (in parentheses, which may hold spaces): field 3 onwards.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** What this process writes in a lock: its pid, host and start time, a line each. */
const ownLock = () => `${process.pid}\n${hostname()}\n${startTimeOf(process.pid) ?? ''}\n`;

/**
 * Whether the holder a lock file names (its text: pid, host, start time) may still be alive.
 * On another host (another container sharing the volume) there is no telling: alive. On this
 * one: this process holding it, or another process that exists (one we may not signal exists
 * too) and started when the lock says (a pid reused since by another process is not it).
 * Anything else (no number, 0 or below, this pid without the lock: a restart that reused it)
 * is a holder that is gone.
 */
function holderAlive(text: string, path: string): boolean {
  const [pidText = '', host = '', started = ''] = text.split('\n');
  const pid = Number(pidText.trim());
  if (!Number.isSafeInteger(pid) || pid <= 0) {
    return false;
  }
  if (host !== '' && host !== hostname()) {
    return true;
  }
  if (pid === process.pid) {
    return held.has(path);
  }
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  const now = started === '' ? undefined : startTimeOf(pid);
  return now === undefined || now === started;
}

/** Who a lock names, for a message. */
const holderOf = (text: string) => {
  const [pid = '', host = ''] = text.split('\n');
  return host === '' ? pid.trim() : `${pid.trim()} on ${host}`;
};

/** Creates `path` holding `text`, atomically (content and all), unless it exists. */
function createWith(path: string, text: string): boolean {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, text, { flag: 'wx' });
  try {
    linkSync(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      return false;
    }
    throw err;
  } finally {
    unlinkSync(tmp);
  }
}

const readIfThere = (path: string): string | undefined => {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return undefined;
    }
    throw err;
  }
};

/**
 * Takes the data directory for this store: a file `mnemo.lock` inside it (so that every
 * process that mounts the directory sees it) naming this process (pid, host, start time),
 * created atomically. PGlite takes no lock of its own, and a second PGlite on the same
 * directory (another `mnemo serve`, a `mnemo keys` while one runs) corrupts it for good. A
 * lock whose holder is gone (killed) is taken over, by one process at a time: the taker
 * holds `mnemo.lock.takeover` beside it while it checks and replaces it (one left by a taker
 * that died is broken after 10 s). Returns its release; in-memory and browser databases take
 * none.
 */
export async function lockDataDir(dataDir: string): Promise<() => void> {
  if (dataDir.includes('://') && !dataDir.startsWith('file://')) {
    return () => {};
  }
  // As PGlite reads it: `file://` is cut off, the rest is a path.
  const dir = resolve(dataDir.startsWith('file://') ? dataDir.slice(7) : dataDir);
  const path = join(dir, 'mnemo.lock');
  const takeover = `${path}.takeover`;
  const own = ownLock();
  const inUse = (holder: string, lock: string) =>
    new MnemoError(
      ErrorCode.Unavailable,
      `the embedded database ${dataDir} is in use by process ${holderOf(holder)} (lock ${lock}); ` +
        'stop it first (one process at a time may open it; use PostgreSQL, MNEMO_DATABASE_URL, for several), ' +
        'or delete the lock if no such process is Mnemo',
    );
  const unavailable = (message: string) =>
    new MnemoError(
      ErrorCode.Unavailable,
      `cannot lock the embedded database ${dataDir}: ${message}`,
    );
  try {
    mkdirSync(dir, { recursive: true });
    // The lock of Mnemo before 2026-12-03, beside the directory: a live holder of it is
    // running an older Mnemo on it.
    const legacy = readIfThere(`${dir}.lock`);
    if (legacy !== undefined && holderAlive(legacy, `${dir}.lock`)) {
      throw inUse(legacy, `${dir}.lock`);
    }
    for (let attempt = 0; attempt < 200; attempt++) {
      if (createWith(path, own)) {
        held.add(path);
        return () => {
          held.delete(path);
          try {
            if (readIfThere(path) === own) {
              unlinkSync(path);
            }
          } catch {
            // Gone already, or not ours to remove.
          }
        };
      }
      const holder = readIfThere(path);
      if (holder === undefined) {
        continue; // released meanwhile: try again at once
      }
      if (holderAlive(holder, path)) {
        throw inUse(holder, path);
      }
      if (createWith(takeover, own)) {
        try {
          // Still the same dead holder's (no other taker replaced it meanwhile): remove it.
          if (readIfThere(path) === holder) {
            unlinkSync(path);
          }
        } finally {
          unlinkSync(takeover);
        }
        continue;
      }
      try {
        if (Date.now() - statSync(takeover).mtimeMs > 10_000) {
          unlinkSync(takeover); // its taker died
        }
      } catch {
        // Gone meanwhile.
      }
      await sleep(100);
    }
  } catch (err) {
    if (err instanceof MnemoError) {
      throw err;
    }
    throw unavailable(
      `${(err as Error).message} (the directory that holds it must be writable: the lock is ${path})`,
    );
  }
  throw unavailable(`another process kept taking it over (lock ${path})`);
}

/**
 * Opens (creating if needed) an embedded PGlite database, holding its lock
 * ({@link lockDataDir}) until closed. PGlite has one connection: statements and transactions
 * run one at a time, in the order they are issued.
 */
export async function createPgliteStore(options: PgliteStoreOptions): Promise<Store> {
  const schema = options.schema ?? 'mnemo';
  assertSchemaName(schema);
  const unlock = await lockDataDir(options.dataDir);
  let db: PGlite | undefined;
  try {
    db = await PGlite.create(options.dataDir);
    await db.exec(`set search_path to ${schema}`);
  } catch (err) {
    await db?.close().catch(() => {});
    unlock();
    throw translateDatabaseError(err);
  }
  const base = wrap(db);
  let closed = false;

  return {
    kind: 'pglite',
    schema,
    ...base,
    transaction<T>(fn: (tx: Queryable) => Promise<T>, txOptions: TransactionOptions = {}) {
      // PGlite's transaction() issues BEGIN/COMMIT and ROLLBACK on failure, so a failed
      // statement never leaves the single connection in an aborted transaction.
      return runTransactionWithRetries(async () => {
        const committed: CommitCallbacks = [];
        const result = await db.transaction((tx) => fn(wrap(tx, committed)));
        runAfterCommit(committed);
        return result;
      }, txOptions.maxAttempts ?? 5);
    },
    async listen(channel: string, handler: NotificationHandler) {
      try {
        const unlisten = await db.listen(quoteIdent(channel), handler);
        return async () => {
          if (!db.closed) {
            await unlisten();
          }
        };
      } catch (err) {
        throw translateDatabaseError(err);
      }
    },
    async close() {
      if (closed) {
        return;
      }
      closed = true;
      try {
        await db.close();
      } finally {
        unlock();
      }
    },
  };
}
