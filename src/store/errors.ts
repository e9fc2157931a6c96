import { ErrorCode, MnemoError } from '../core/errors.ts';

/** SQLSTATEs after which the whole transaction may simply be run again. */
export const RETRYABLE_SQLSTATES: ReadonlySet<string> = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
]);

/**
 * SQLSTATEs of conditions that pass: the statement may succeed later, so a job whose apply
 * met one is retried with its backoff (its attempt counts), not failed for good.
 */
const TRANSIENT_SQLSTATES: ReadonlySet<string> = new Set([
  '57014', // query_canceled (statement_timeout, a cancel request)
  '55P03', // lock_not_available (lock_timeout, NOWAIT)
  '53100', // disk_full
  '53200', // out_of_memory (not 53400 configuration_limit_exceeded: that one repeats)
]);

const UNAVAILABLE_SQLSTATES: ReadonlySet<string> = new Set([
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
  '3D000', // invalid_catalog_name (database does not exist)
  '28000', // invalid_authorization_specification
  '28P01', // invalid_password
]);

const NETWORK_ERRNOS: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/** The SQLSTATE (or Node errno code) of a driver error, if it has one. */
export function sqlStateOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = err.code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

function isConnectionLoss(err: unknown, state: string | undefined): boolean {
  if (state !== undefined && (NETWORK_ERRNOS.has(state) || UNAVAILABLE_SQLSTATES.has(state))) {
    return true;
  }
  if (state?.startsWith('08')) {
    return true; // connection_exception class
  }
  const message = err instanceof Error ? err.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|pool.*(ended|closed)|Cannot use a pool after calling end|PGlite is closed/i.test(
    message,
  );
}

/**
 * Translates a driver error into a {@link MnemoError}: unique violations become `conflict`,
 * connection loss `unavailable`, everything else `internal` with the SQLSTATE in `details`.
 * A `MnemoError` passes through unchanged.
 */
export function translateDatabaseError(err: unknown): MnemoError {
  if (err instanceof MnemoError) {
    return err;
  }
  const state = sqlStateOf(err);
  // Node reports a refused dual-stack connect as an AggregateError with an empty message.
  const message = (err instanceof Error ? err.message : String(err)) || (state ?? 'unknown error');
  if (state === '23505') {
    // unique_violation
    return new MnemoError(ErrorCode.Conflict, `unique constraint violated: ${message}`, {
      cause: err,
      details: { sqlstate: state },
    });
  }
  if (isConnectionLoss(err, state)) {
    return new MnemoError(ErrorCode.Unavailable, `database unavailable: ${message}`, {
      cause: err,
      details: { sqlstate: state },
    });
  }
  return new MnemoError(ErrorCode.Internal, `database error: ${message}`, {
    cause: err,
    details: { sqlstate: state },
    retryable:
      state !== undefined && (RETRYABLE_SQLSTATES.has(state) || TRANSIENT_SQLSTATES.has(state)),
  });
}

/** The SQLSTATE of a database error, raw or translated into a {@link MnemoError}. */
export function databaseStateOf(err: unknown): string | undefined {
  const state =
    err instanceof MnemoError
      ? (err.details as { sqlstate?: unknown } | undefined)?.sqlstate
      : sqlStateOf(err);
  return typeof state === 'string' ? state : undefined;
}

/** A deadlock or serialization failure (raw or translated): the transaction may run again. */
export function isRetryableDatabaseError(err: unknown): boolean {
  const state = databaseStateOf(err);
  return state !== undefined && RETRYABLE_SQLSTATES.has(state);
}
