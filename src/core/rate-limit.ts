/**
 * A token bucket per API key, in this process: `perSecond` requests a second on average,
 * bursts of up to `burst`. Several processes behind a balancer each enforce it.
 */
export interface RateLimiter {
  /** 0 when the request may go now, else how many milliseconds until it may. */
  take(key: string): number;
}

export function createRateLimiter(perSecond: number, burst: number): RateLimiter {
  const buckets = new Map<string, { tokens: number; at: number }>();
  return {
    take(key) {
      if (perSecond <= 0) {
        return 0; // no limit
      }
      const now = performance.now();
      const bucket = buckets.get(key) ?? { tokens: burst, at: now };
      bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * perSecond);
      bucket.at = now;
      buckets.set(key, bucket);
      if (bucket.tokens >= 1) {
        bucket.tokens -= 1;
        return 0;
      }
      return Math.ceil(((1 - bucket.tokens) / perSecond) * 1000);
    },
  };
}
