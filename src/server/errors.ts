import type { ErrorCode } from '../core/errors.ts';

/** The only place HTTP statuses are chosen for error codes. */
export const httpStatusFor: Record<ErrorCode, 400 | 401 | 404 | 409 | 413 | 429 | 500 | 503> = {
  invalid_request: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  idempotency_conflict: 409,
  payload_too_large: 413,
  queue_full: 429,
  rate_limited: 429,
  lease_lost: 409,
  timeout: 503,
  unavailable: 503,
  schema_mismatch: 503,
  invalid_config: 500,
  internal: 500,
};
