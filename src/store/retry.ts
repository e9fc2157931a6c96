import { ErrorCode, MnemoError } from '../core/errors.ts';
import { RETRYABLE_SQLSTATES, sqlStateOf, translateDatabaseError } from './errors.ts';

const BASE_DELAY_MS = 5;
const MAX_DELAY_MS = 500;

/** Full-jitter exponential backoff: a random delay in [0, min(max, base·2^attempt)). */
export function backoffDelay(
  attempt: number,
  baseMs = BASE_DELAY_MS,
  maxMs = MAX_DELAY_MS,
): number {
  return Math.random() * Math.min(maxMs, baseMs * 2 ** attempt);
}

/**
 * Runs `attempt` until it succeeds, retrying serialization failures and deadlocks with
 * jittered backoff. Every error that escapes is a translated {@link MnemoError}.
 */
export async function runTransactionWithRetries<T>(
  attempt: () => Promise<T>,
  maxAttempts: number,
): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (err) {
      const state =
        err instanceof MnemoError
          ? (err.details as { sqlstate?: string } | undefined)?.sqlstate
          : sqlStateOf(err);
      if (state === undefined || !RETRYABLE_SQLSTATES.has(state)) {
        // The callback's own errors pass through untouched; driver errors get a code.
        throw sqlStateOf(err) === undefined ? err : translateDatabaseError(err);
      }
      if (n >= maxAttempts) {
        throw new MnemoError(
          ErrorCode.Unavailable,
          `transaction gave up after ${n} attempts: ${(err as Error).message}`,
          { cause: err, details: { sqlstate: state } },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, backoffDelay(n)));
    }
  }
}

/** Rejects schema names that could not be used safely as a bare identifier. */
export function assertSchemaName(schema: string): void {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    throw new MnemoError(
      ErrorCode.InvalidConfig,
      `invalid schema name ${JSON.stringify(schema)}: use lower-case letters, digits and _`,
    );
  }
}
