/**
 * The one error class of Mnemo and its code list. Every surface maps these codes once
 * (HTTP status, MCP error text, CLI exit code); the codes are part of the public API.
 */
export const ErrorCode = {
  /** The caller's input is invalid; never retried. */
  InvalidRequest: 'invalid_request',
  Unauthorized: 'unauthorized',
  NotFound: 'not_found',
  /** A unique key already exists (SQLSTATE 23505 translated by the store). */
  Conflict: 'conflict',
  /** An idempotency key was reused with a different payload. */
  IdempotencyConflict: 'idempotency_conflict',
  PayloadTooLarge: 'payload_too_large',
  /** Admission control refused new work; retry later. */
  QueueFull: 'queue_full',
  /** The API key sent more requests than its rate limit allows; retry later. */
  RateLimited: 'rate_limited',
  /** Another worker holds the job now; stop work and do not retry this attempt. */
  LeaseLost: 'lease_lost',
  /** A job's run exceeded its time limit. */
  Timeout: 'timeout',
  /** The database is unreachable or the process is shutting down; safe to retry. */
  Unavailable: 'unavailable',
  /** The database schema does not match this build (edited or unknown migrations). */
  SchemaMismatch: 'schema_mismatch',
  /** Invalid configuration (an environment variable or a flag). */
  InvalidConfig: 'invalid_config',
  Internal: 'internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Options of {@link MnemoError}. */
export interface MnemoErrorOptions {
  /** The underlying error, kept for logs; never shown to API clients. */
  cause?: unknown;
  /** Whether the operation may succeed if tried again. @defaultValue true for `unavailable`, `timeout` and `queue_full` */
  retryable?: boolean;
  /** Structured details safe to show to the caller (validation issues, limits). */
  details?: unknown;
  /** For `queue_full` and `unavailable`: how long to wait before retrying, in milliseconds. */
  retryAfterMs?: number;
}

const RETRYABLE_BY_DEFAULT: ReadonlySet<ErrorCode> = new Set([
  ErrorCode.Unavailable,
  ErrorCode.Timeout,
  ErrorCode.QueueFull,
  ErrorCode.RateLimited,
]);

/** The error every Mnemo layer throws: a code from {@link ErrorCode} and a `retryable` flag. */
export class MnemoError extends Error {
  override readonly name = 'MnemoError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: unknown;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: MnemoErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? RETRYABLE_BY_DEFAULT.has(code);
    this.details = options.details;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** True when `err` is a {@link MnemoError}, optionally with the given code. */
export function isMnemoError(err: unknown, code?: ErrorCode): err is MnemoError {
  return err instanceof MnemoError && (code === undefined || err.code === code);
}

/**
 * Normalises anything thrown into an `Error`. Non-Mnemo errors keep their message and are
 * treated as retryable internal failures by the engine unless they say otherwise.
 */
export function coerceError(err: unknown): Error {
  if (err instanceof Error) {
    return err;
  }
  return new Error(typeof err === 'string' ? err : `non-error thrown: ${safeString(err)}`, {
    cause: err,
  });
}

function safeString(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
