import { ErrorCode, MnemoError } from '../core/errors.ts';
import type { Queryable, Statement, Transaction } from './types.ts';

/**
 * A transaction's handle over `base`, whose `queryAndCommit` runs `commit`. From that call
 * on (`committed`), the handle refuses statements.
 */
export function transactionHandle(
  base: Queryable,
  commit: (statements: readonly Statement[]) => Promise<unknown[][]>,
): Transaction & { readonly committed: boolean } {
  let committed = false;
  const refused = () =>
    committed
      ? Promise.reject(new MnemoError(ErrorCode.Internal, 'the transaction has already committed'))
      : undefined;
  return {
    inTransaction: true,
    get committed() {
      return committed;
    },
    query<Row extends object>(sql: string, params?: readonly unknown[]) {
      return (refused() as Promise<Row[]> | undefined) ?? base.query<Row>(sql, params);
    },
    exec(sql) {
      return refused() ?? base.exec(sql);
    },
    async queryAndCommit(statements) {
      await refused();
      committed = true;
      return commit(statements);
    },
  };
}
