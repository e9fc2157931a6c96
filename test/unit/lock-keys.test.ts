import { describe, expect, it } from 'vitest';

import { userDeletionLockKey, userLockKey } from '../../src/memory/pipeline.ts';

describe('user lock keys', () => {
  it('order a user’s deletion before the user’s other jobs, and users apart', () => {
    const of = (tenantId: string, userId: string) => ({ tenantId, payload: { user_id: userId } });
    const keys = [
      ['other u2', userLockKey(of('t', 'u2'))],
      ['other u', userLockKey(of('t', 'u'))],
      ['deletion u2', userDeletionLockKey(of('t', 'u2'))],
      ['deletion u', userDeletionLockKey(of('t', 'u'))],
      ['other t2/u', userLockKey(of('t2', 'u'))],
      ['deletion u!', userDeletionLockKey(of('t', 'u!'))],
      ['other u!', userLockKey(of('t', 'u!'))],
    ] as const;
    const sorted = [...keys].sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    expect(sorted.map(([name]) => name)).toEqual([
      'deletion u',
      'other u',
      'deletion u!',
      'other u!',
      'deletion u2',
      'other u2',
      'other t2/u',
    ]);
  });
});
