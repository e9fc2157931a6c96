import { PGlite } from '@electric-sql/pglite';

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

/**
 * Opens (creating if needed) an embedded PGlite database. PGlite has one connection:
 * statements and transactions run one at a time, in the order they are issued.
 */
export async function createPgliteStore(options: PgliteStoreOptions): Promise<Store> {
  const schema = options.schema ?? 'mnemo';
  assertSchemaName(schema);
  let db: PGlite;
  try {
    db = await PGlite.create(options.dataDir);
    await db.exec(`set search_path to ${schema}`);
  } catch (err) {
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
      await db.close();
    },
  };
}
