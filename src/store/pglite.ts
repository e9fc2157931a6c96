import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { PGlite } from '@electric-sql/pglite';

import { ErrorCode, MnemoError } from '../core/errors.ts';
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

function wrap(db: PgliteQueryable, inTransaction = false): Queryable {
  return {
    inTransaction,
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

/** Whether process `pid` is alive (one we may not signal is alive too). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the data directory for this store: a file `<dir>.lock` beside it, created exclusively,
 * holding this process's id. PGlite takes no lock of its own, and a second PGlite on the same
 * directory (another `mnemo serve`, a `mnemo keys` while one runs) corrupts it for good. A lock
 * whose process is gone (killed) is taken over. Returns its release; in-memory and browser
 * databases take none.
 */
export function lockDataDir(dataDir: string): () => void {
  if (dataDir.includes('://') && !dataDir.startsWith('file://')) {
    return () => {};
  }
  const path = `${resolve(dataDir.startsWith('file://') ? fileURLToPath(dataDir) : dataDir)}.lock`;
  const own = `${process.pid}\n`;
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      try {
        writeSync(fd, own);
      } finally {
        closeSync(fd);
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new MnemoError(
          ErrorCode.Unavailable,
          `cannot lock the embedded database: ${(err as Error).message}`,
        );
      }
    }
    let holder = Number.NaN;
    try {
      holder = Number.parseInt(readFileSync(path, 'utf8'), 10);
    } catch {
      // Removed meanwhile: try again.
    }
    if (attempt === 0 && (Number.isNaN(holder) || !alive(holder))) {
      // Left by a process that is gone (or half-written by one): take it over, once.
      try {
        unlinkSync(path);
      } catch {
        // Another process took it over first: the next attempt finds its lock.
      }
      continue;
    }
    throw new MnemoError(
      ErrorCode.Unavailable,
      `the embedded database ${dataDir} is in use by process ${Number.isNaN(holder) ? '(unknown)' : holder} (lock ${path}); ` +
        'stop it first (one process at a time may open it; use PostgreSQL, MNEMO_DATABASE_URL, for several), ' +
        'or delete the lock if no such process is Mnemo',
    );
  }
  return () => {
    try {
      if (readFileSync(path, 'utf8') === own) {
        unlinkSync(path);
      }
    } catch {
      // Gone already.
    }
  };
}

/**
 * Opens (creating if needed) an embedded PGlite database, holding its lock
 * ({@link lockDataDir}) until closed. PGlite has one connection: statements and transactions
 * run one at a time, in the order they are issued.
 */
export async function createPgliteStore(options: PgliteStoreOptions): Promise<Store> {
  const schema = options.schema ?? 'mnemo';
  assertSchemaName(schema);
  const unlock = lockDataDir(options.dataDir);
  let db: PGlite;
  try {
    db = await PGlite.create(options.dataDir);
    await db.exec(`set search_path to ${schema}`);
  } catch (err) {
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
      return runTransactionWithRetries(
        () => db.transaction((tx) => fn(wrap(tx, true))),
        txOptions.maxAttempts ?? 5,
      );
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
