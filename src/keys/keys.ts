/**
 * API keys: `mnemo_<id>_<secret>`, each scoped to one tenant. Only the SHA-256 of the whole
 * key is stored (the secret has 256 random bits: a fast hash is enough, no password hashing
 * needed). Keys are created, listed and revoked with the CLI.
 */
import { createHash, randomBytes } from 'node:crypto';

import { ErrorCode, MnemoError } from '../core/errors.ts';
import { createRateLimiter } from '../core/rate-limit.ts';
import type { Queryable } from '../store/types.ts';

/** A key as listed (never its secret). */
export interface ApiKeyInfo {
  id: string;
  tenant_id: string;
  name: string | null;
  created_at: string;
  revoked_at: string | null;
}

const TENANT = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The stored form of a key. */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/**
 * Creates a key for `tenantId` (creating the tenant if needed) and returns it: the only time
 * the key is ever shown.
 * @throws MnemoError `invalid_request` for a malformed tenant id
 */
export async function createKey(
  tx: Queryable,
  tenantId: string,
  name?: string,
): Promise<{ id: string; key: string; tenant_id: string }> {
  if (!TENANT.test(tenantId)) {
    throw new MnemoError(
      ErrorCode.InvalidRequest,
      'a tenant id is 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
    );
  }
  const id = `key_${randomBytes(6).toString('hex')}`;
  const key = `mnemo_${id.slice(4)}_${randomBytes(32).toString('base64url')}`;
  await tx.query(`insert into tenants (id) values ($1) on conflict do nothing`, [tenantId]);
  await tx.query(
    `insert into api_keys (id, tenant_id, name, secret_hash) values ($1, $2, $3, $4)`,
    [id, tenantId, name ?? null, hashKey(key)],
  );
  return { id, key, tenant_id: tenantId };
}

/** Every key, newest first. */
export async function listKeys(q: Queryable): Promise<ApiKeyInfo[]> {
  const rows = await q.query<{
    id: string;
    tenant_id: string;
    name: string | null;
    created_at: Date;
    revoked_at: Date | null;
  }>(
    `select id, tenant_id, name, created_at, revoked_at from api_keys order by created_at desc, id`,
  );
  return rows.map((r) => ({
    ...r,
    created_at: r.created_at.toISOString(),
    revoked_at: r.revoked_at?.toISOString() ?? null,
  }));
}

/**
 * Revokes a key. @throws MnemoError `not_found`
 */
export async function revokeKey(q: Queryable, id: string): Promise<void> {
  const [row] = await q.query(
    `update api_keys set revoked_at = coalesce(revoked_at, now()) where id = $1 returning id`,
    [id],
  );
  if (row === undefined) {
    throw new MnemoError(ErrorCode.NotFound, `API key ${id} not found`);
  }
}

/** Who a request is: its tenant and key, or anonymous (no keys exist). */
export interface Principal {
  tenantId: string;
  keyId: string | null;
}

/** How many presented keys the cache holds of each kind, known and unknown. */
const CACHE_SIZE = 10_000;

/**
 * Resolves bearer keys to tenants, with a short cache (revocations take effect within
 * `ttlMs`). With no active key at all, every request without a key is tenant `default`
 * (src/server/app.ts). Keys found and keys not found are cached apart, so a flood of random
 * keys cannot push the known ones out; and the lookups of keys never found (or not since
 * they left the cache) share a budget (`lookupsPerS`, bursts of `lookupBurst`), so such a flood
 * costs the database that much at most: past it, such a key is answered `429 rate_limited`
 * until the budget refills, instead of queried. A known key whose entry expired is looked up
 * again outside the budget.
 */
export function createAuthenticator(
  q: Queryable,
  ttlMs = 2000,
  lookupsPerS = 200,
  lookupBurst = lookupsPerS * 2,
) {
  let anyKeys: { value: boolean; at: number } | undefined;
  const known = new Map<string, { principal: Principal; at: number }>();
  const unknown = new Map<string, number>();
  const lookups = createRateLimiter(lookupsPerS, lookupBurst);
  /** Bounded: the oldest entries go first. */
  const remember = <V>(cache: Map<string, V>, hash: string, value: V) => {
    cache.delete(hash);
    cache.set(hash, value);
    for (const oldest of cache.keys()) {
      if (cache.size <= CACHE_SIZE) {
        break;
      }
      cache.delete(oldest);
    }
  };
  return {
    /** Whether any active key exists (cached). */
    async keysExist(): Promise<boolean> {
      const now = performance.now();
      if (anyKeys === undefined || now - anyKeys.at > ttlMs) {
        const [row] = await q.query<{ any: boolean }>(
          `select exists (select 1 from api_keys where revoked_at is null) as any`,
        );
        anyKeys = { value: row?.any ?? false, at: now };
      }
      return anyKeys.value;
    },
    /**
     * The principal of a presented key, or null when it is unknown or revoked.
     * @throws MnemoError `rate_limited` when the key is not cached and the lookup budget is spent
     */
    async resolve(key: string): Promise<Principal | null> {
      const hash = hashKey(key);
      const now = performance.now();
      const hit = known.get(hash);
      if (hit !== undefined && now - hit.at <= ttlMs) {
        return hit.principal;
      }
      const miss = unknown.get(hash);
      if (miss !== undefined && now - miss <= ttlMs) {
        return null;
      }
      // A key found before (its entry expired) is looked up again whatever the budget: its
      // lookups are bounded by the keys that exist, one per key every `ttlMs`.
      const waitMs = hit === undefined ? lookups.take('lookups') : 0;
      if (waitMs > 0) {
        throw new MnemoError(
          ErrorCode.RateLimited,
          'too many requests with API keys not seen lately; send again shortly',
          { retryAfterMs: waitMs },
        );
      }
      const [row] = await q.query<{ id: string; tenant_id: string }>(
        `select id, tenant_id from api_keys where secret_hash = $1 and revoked_at is null`,
        [hash],
      );
      if (row === undefined) {
        known.delete(hash);
        remember(unknown, hash, now);
        return null;
      }
      const principal = { tenantId: row.tenant_id, keyId: row.id };
      unknown.delete(hash);
      remember(known, hash, { principal, at: now });
      return principal;
    },
  };
}

export type Authenticator = ReturnType<typeof createAuthenticator>;
