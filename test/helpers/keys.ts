/**
 * The secret part of an API key `mnemo_<12 hex id>_<43 base64url characters>`. The secret may
 * itself contain `_`, so it is cut by position, not at the last `_`.
 */
export function keySecret(key: string): string {
  const secret = key.slice('mnemo_'.length + 12 + 1);
  if (!/^[A-Za-z0-9_-]{43}$/.test(secret)) {
    throw new Error(`not an API key: ${key.slice(0, 18)}…`);
  }
  return secret;
}
