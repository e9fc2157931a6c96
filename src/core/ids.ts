import { randomBytes } from 'node:crypto';

/**
 * A random, URL-safe identifier with a type prefix (`op_…`, `mem_…`).
 * 16 random bytes: collisions are not a practical concern.
 */
export function createId(prefix: string): string {
  return `${prefix}_${randomBytes(16).toString('base64url')}`;
}

/** The public form of a job id: an operation's (`op_<n>`). */
export function operationId(id: number): string {
  return `op_${id}`;
}
