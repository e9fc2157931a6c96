/**
 * Something SQL can be sent to: the store itself or a transaction handle. Repository
 * functions take a `Queryable` first so the same code runs inside and outside a transaction.
 */
export interface Queryable {
  /** True for the handle `Store.transaction` passes to its callback. */
  readonly inTransaction: boolean;
  /**
   * Runs one statement with bind parameters (`$1`, `$2`, …) and returns its rows.
   * Values are never interpolated into `sql`. `int8` columns come back as numbers,
   * `timestamptz` as `Date`, `json`/`jsonb` parsed, `numeric` as strings.
   * @throws MnemoError `conflict` (unique violation), `unavailable` (database unreachable),
   *   `internal` (any other database error; the SQLSTATE is in `details`)
   */
  query<Row extends object = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<Row[]>;
  /** Runs several statements without parameters (migrations, DDL). */
  exec(sql: string): Promise<void>;
  /**
   * Runs `fn` once the transaction of this handle has committed, or at once outside a
   * transaction; never if it rolls back (nor for an attempt retried after a serialization
   * failure). For what must not count work that did not happen, such as a metric.
   */
  afterCommit(fn: () => void): void;
}

/** Options of {@link Queryable.query}. */
export interface QueryOptions {
  /**
   * Plan the statement for these parameters at every call. On PostgreSQL a statement with
   * parameters is otherwise prepared once per connection, and after five calls PostgreSQL may
   * keep one plan for every value, chosen for a typical one: wrong where values differ widely
   * in how many rows they match (a rare status among millions of jobs). PGlite always plans
   * for the values.
   */
  planEachCall?: boolean;
}

/** Options of {@link Store.transaction}. */
export interface TransactionOptions {
  /**
   * How many times to run `fn` in all when PostgreSQL reports a serialization failure or a
   * deadlock. `fn` must therefore be safe to run again.
   * @defaultValue 5
   */
  maxAttempts?: number;
}

/** A callback receiving notifications of one channel. */
export type NotificationHandler = (payload: string) => void;

/** The database behind Mnemo: embedded PGlite or a PostgreSQL server. */
export interface Store extends Queryable {
  readonly kind: 'postgres' | 'pglite';
  /** The schema every Mnemo table lives in (set as the connection's `search_path`). */
  readonly schema: string;
  /**
   * Runs `fn` in one transaction (READ COMMITTED), retrying the whole of it on
   * serialization_failure / deadlock_detected with jittered backoff.
   * Use only `tx` inside `fn`: on PGlite the outer store waits until `fn` settles.
   * @throws MnemoError `unavailable` when retries are exhausted or the database is gone
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /**
   * Subscribes to `channel` (PostgreSQL `LISTEN`); notifications sent with `pg_notify`
   * arrive after the sending transaction commits. Returns a function that unsubscribes.
   * Best effort: a subscription whose connection drops, or cannot be made yet (the server
   * is unavailable), is made again in the background; notifications sent meanwhile are
   * lost, so callers poll too.
   */
  listen(channel: string, handler: NotificationHandler): Promise<() => Promise<void>>;
  /** Closes every connection. Safe to call twice. */
  close(): Promise<void>;
}
