/** Backoff between attempts of a job. */
export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}

/** @defaultValue 1 s doubling up to 5 min */
export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 1000, maxMs: 300_000 };

/**
 * Delay before attempt `attempt + 1` after attempt `attempt` failed: exponential, capped,
 * with "equal jitter" (half fixed, half random) so retries of many jobs spread out but
 * never come back immediately.
 */
export function retryDelayMs(
  attempt: number,
  policy: BackoffPolicy = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
