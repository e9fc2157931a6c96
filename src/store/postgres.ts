import { createHash } from 'node:crypto';

import pg from 'pg';

import { ErrorCode, isMnemoError, MnemoError } from '../core/errors.ts';
import { afterCommitInto, type CommitCallbacks, runAfterCommit } from './commit.ts';
import { translateDatabaseError } from './errors.ts';
import { quoteIdent } from './quote.ts';
import { assertSchemaName, backoffDelay, runTransactionWithRetries } from './retry.ts';
import type {
  NotificationHandler,
  Queryable,
  QueryOptions,
  Store,
  TransactionOptions,
} from './types.ts';

/** Options of {@link createPostgresStore}. */
export interface PostgresStoreOptions {
  /** A `postgres://` connection string. */
  url: string;
  /** The schema Mnemo's tables live in. @defaultValue 'mnemo' */
  schema?: string;
  /** Pool size. @defaultValue 10 */
  maxConnections?: number;
  /** How long to wait for a new connection before failing with `unavailable`. @defaultValue 5000 */
  connectTimeoutMs?: number;
  /** Name shown in `pg_stat_activity`. @defaultValue 'mnemo' */
  applicationName?: string;
}

const INT8_OID = 20;

// int8 as a JavaScript number, like PGlite: Mnemo's ids and counters stay far below 2^53.
const typeParsers = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8_OID) {
      return (value: string) => Number(value);
    }
    return pg.types.getTypeParser(oid, format ?? 'text') as (value: string) => unknown;
  },
};

/**
 * Parameterised statements are sent as named prepared statements: each connection parses
 * and plans them once and reuses the plan (PostgreSQL's plan cache), which matters for the
 * engine's few, large, hot statements. The name is derived from the text, so it is stable.
 */
const statementNames = new Map<string, string>();
function statementName(sql: string): string {
  let name = statementNames.get(sql);
  if (name === undefined) {
    name = `mnemo_${createHash('sha1').update(sql).digest('hex').slice(0, 20)}`;
    statementNames.set(sql, name);
  }
  return name;
}

/**
 * A handle on `client`. `committed` collects the handle's afterCommit callbacks inside a
 * transaction (run by `transaction` after COMMIT); without it they run at once.
 */
function wrap(client: pg.Pool | pg.PoolClient, committed?: CommitCallbacks): Queryable {
  return {
    inTransaction: committed !== undefined,
    afterCommit: afterCommitInto(committed),
    async query<Row extends object>(
      sql: string,
      params: readonly unknown[] = [],
      options: QueryOptions = {},
    ) {
      try {
        const result =
          params.length === 0
            ? await client.query<Row>(sql)
            : options.planEachCall === true
              ? await client.query<Row>(sql, params as unknown[])
              : await client.query<Row>({
                  name: statementName(sql),
                  text: sql,
                  values: params as unknown[],
                });
        return result.rows;
      } catch (err) {
        throw translateDatabaseError(err);
      }
    },
    async exec(sql: string) {
      try {
        await client.query(sql);
      } catch (err) {
        throw translateDatabaseError(err);
      }
    },
  };
}

/**
 * Takes the `options` parameter (server settings, `-c name=value ...`) out of a connection
 * URL. pg lets every parameter of the URL override the pool's own, so a URL's `options`
 * would replace the `search_path` that puts Mnemo in its schema, and Mnemo would create and
 * use its tables in another schema (`public`) without a word. The caller passes them on
 * with its own setting last, which PostgreSQL applies last.
 * @throws MnemoError `invalid_config` if the URL has `options` but cannot be rewritten
 */
export function splitServerOptions(url: string): { url: string; options: string | undefined } {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  // pg keeps the last of repeated parameters.
  const options = parsed?.searchParams.getAll('options').at(-1);
  if (parsed === undefined || options === undefined) {
    if (parsed === undefined && /[?&]options=/.test(url)) {
      throw new MnemoError(
        ErrorCode.InvalidConfig,
        'the database URL has an options parameter but could not be read as a URL; set server options another way (e.g. ALTER ROLE ... SET)',
      );
    }
    return { url, options: undefined };
  }
  parsed.searchParams.delete('options');
  return { url: parsed.toString(), options };
}

/** Opens a pool on a PostgreSQL server. Connections are made lazily. */
export function createPostgresStore(options: PostgresStoreOptions): Store {
  const schema = options.schema ?? 'mnemo';
  assertSchemaName(schema);
  const server = splitServerOptions(options.url);
  const max = options.maxConnections ?? 10;
  const connectionConfig: pg.PoolConfig = {
    connectionString: server.url,
    max,
    // Two connections are kept however long they sit idle, the rest of a burst's for a
    // minute (pg-pool closes every idle one after 10 s by default). A new connection
    // compiles the PL/pgSQL functions again and plans each of their statements afresh for
    // its first five calls: an ingest after a quiet spell of 12 s took 29–30 ms more than
    // one right after another (`npm run bench -- trace`).
    min: Math.min(2, max),
    idleTimeoutMillis: 60_000,
    connectionTimeoutMillis: options.connectTimeoutMs ?? 5000,
    // TCP keepalives from 30 s of silence on: a connection a NAT or proxy dropped silently
    // (the LISTEN one is idle for long) is noticed within minutes, and made again, instead of
    // waited on for good (the system's default waits two hours before its first probe).
    keepAlive: true,
    keepAliveInitialDelayMillis: 30_000,
    application_name: options.applicationName ?? 'mnemo',
    // After the URL's own options, so that these win: Mnemo's tables, and ISO dates
    // (`date::text` in write_turn's answer, `timestamptz` read back) whatever the URL sets.
    options: `${server.options === undefined ? '' : `${server.options} `}-c search_path=${schema} -c DateStyle=ISO,MDY`,
    types: typeParsers,
  };
  const pool = new pg.Pool(connectionConfig);
  // An idle client losing its connection must not crash the process; the next query
  // gets a fresh connection or an `unavailable` error.
  pool.on('error', () => undefined);
  const base = wrap(pool);
  const listeners = new Set<pg.Client>();
  let closed = false;

  return {
    kind: 'postgres',
    schema,
    ...base,
    transaction<T>(fn: (tx: Queryable) => Promise<T>, txOptions: TransactionOptions = {}) {
      return runTransactionWithRetries(async () => {
        let client: pg.PoolClient | undefined;
        let broken = false;
        // A borrowed connection that drops (a server restart, a terminated backend) emits
        // `error` whether or not a query is running, and the pool listens only to idle ones:
        // unheard, it would crash the process. The transaction's next statement fails and it
        // is rolled back (or given up) as unavailable.
        const onError = () => {
          broken = true;
        };
        try {
          client = await pool.connect();
          client.on('error', onError);
          // Explicit: the lane protocol of the engine relies on READ COMMITTED snapshots,
          // whatever the server's default_transaction_isolation says.
          await client.query('begin isolation level read committed');
        } catch (err) {
          client?.removeListener('error', onError);
          client?.release(true);
          throw translateDatabaseError(err);
        }
        try {
          const committed: CommitCallbacks = [];
          const result = await fn(wrap(client, committed));
          const commit = await client.query('commit').catch((err: unknown) => {
            throw translateDatabaseError(err);
          });
          // A statement of `fn` failed and `fn` went on (it caught the error): PostgreSQL
          // answers the COMMIT of the aborted transaction by rolling it back. Nothing of it
          // was written, and the caller must not be told otherwise (PGlite rejects too).
          if (commit.command === 'ROLLBACK') {
            throw new MnemoError(
              ErrorCode.Internal,
              'the transaction was rolled back: one of its statements failed',
            );
          }
          runAfterCommit(committed);
          return result;
        } catch (err) {
          try {
            await client.query('rollback');
          } catch {
            broken = true;
          }
          throw err;
        } finally {
          client.removeListener('error', onError);
          client.release(broken);
        }
      }, txOptions.maxAttempts ?? 5);
    },
    async listen(channel: string, handler: NotificationHandler) {
      const subscription = { active: true, client: undefined as pg.Client | undefined };
      // Opens a dedicated connection; when it drops, reconnects with backoff until
      // unsubscribed. Callers must not rely on notifications alone (they poll too).
      const connect = async (): Promise<void> => {
        const client = new pg.Client({ ...connectionConfig });
        client.on('notification', (msg) => {
          if (msg.channel === channel) {
            handler(msg.payload ?? '');
          }
        });
        client.on('error', () => undefined);
        client.on('end', () => {
          listeners.delete(client);
          // Only a connection that was up reconnects; a failed connect is retried below.
          if (subscription.client === client && subscription.active && !closed) {
            subscription.client = undefined;
            setTimeout(() => void reconnect(1), backoffDelay(3, 100, 2000)).unref();
          }
        });
        try {
          await client.connect();
          await client.query(`listen ${quoteIdent(channel)}`);
        } catch (err) {
          await client.end().catch(() => undefined);
          throw translateDatabaseError(err);
        }
        if (!subscription.active || closed) {
          // Unsubscribed or closed while connecting: nobody would end this one.
          await client.end().catch(() => undefined);
          return;
        }
        subscription.client = client;
        listeners.add(client);
      };
      const reconnect = async (attempt: number): Promise<void> => {
        if (!subscription.active || closed) {
          return;
        }
        try {
          await connect();
        } catch {
          setTimeout(() => void reconnect(attempt + 1), backoffDelay(attempt, 100, 5000)).unref();
        }
      };
      try {
        await connect();
      } catch (err) {
        if (!isMnemoError(err, ErrorCode.Unavailable)) {
          throw err;
        }
        // The server is not reachable now (or has no connection to spare): keep trying, as
        // after a drop. Until then the caller's polling is all it has.
        setTimeout(() => void reconnect(1), backoffDelay(1, 100, 5000)).unref();
      }
      return async () => {
        subscription.active = false;
        const client = subscription.client;
        if (client !== undefined) {
          listeners.delete(client);
          await client.end().catch(() => undefined);
        }
      };
    },
    async close() {
      if (closed) {
        return;
      }
      closed = true;
      await Promise.all([...listeners].map((c) => c.end().catch(() => undefined)));
      listeners.clear();
      await pool.end();
    },
  };
}
