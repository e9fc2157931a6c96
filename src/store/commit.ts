import type { Queryable, QueryOptions } from './types.ts';

/** Callbacks a transaction runs once it has committed ({@link Queryable.afterCommit}). */
export type CommitCallbacks = (() => void)[];

/**
 * `Queryable.afterCommit` over `committed`: the callback is kept for after the COMMIT inside
 * a transaction (`committed` given), and runs at once outside one.
 */
export function afterCommitInto(committed: CommitCallbacks | undefined): (fn: () => void) => void {
  return (fn) => {
    if (committed === undefined) {
      fn();
    } else {
      committed.push(fn);
    }
  };
}

/**
 * Runs the callbacks of a transaction that has committed. The transaction stands whatever
 * they do: one that throws is reported as a process warning and the others still run.
 */
export function runAfterCommit(committed: CommitCallbacks): void {
  for (const fn of committed) {
    try {
      fn();
    } catch (err) {
      process.emitWarning(err instanceof Error ? err : String(err), 'MnemoAfterCommitWarning');
    }
  }
}

/**
 * A handle on `tx` for the work of a savepoint: its afterCommit callbacks are kept aside,
 * handed on to `tx` by `keep()` once the savepoint is released, and dropped with its writes
 * if it is rolled back (by not calling `keep`).
 */
export function savepointScope(tx: Queryable): { handle: Queryable; keep(): void } {
  const pending: CommitCallbacks = [];
  return {
    handle: {
      inTransaction: tx.inTransaction,
      query: <Row extends object>(
        sql: string,
        params?: readonly unknown[],
        options?: QueryOptions,
      ) => tx.query<Row>(sql, params, options),
      exec: (sql) => tx.exec(sql),
      afterCommit: (fn) => pending.push(fn),
    },
    keep: () => {
      for (const fn of pending.splice(0)) {
        tx.afterCommit(fn);
      }
    },
  };
}
