import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { silentLogger } from '../../src/core/logger.ts';
import type { Job } from '../../src/engine/types.ts';
import { CompletionWaiter } from '../../src/engine/waiter.ts';
import { createPgliteStore } from '../../src/store/pglite.ts';
import type { Store } from '../../src/store/types.ts';

describe('the completion waiter’s memory (PGlite)', () => {
  let store: Store;
  beforeAll(async () => {
    store = await createPgliteStore({ dataDir: 'memory://', schema: 'mnemo' });
  });
  afterAll(async () => {
    await store.close();
  });

  const row = (id: number) =>
    ({ id, payload: { user_query: 'x'.repeat(100_000) } }) as unknown as Job;

  it('keeps a handed-over row only while its job is watched, and the news after', async () => {
    const waiter = new CompletionWaiter(store, 'waiter_test_done', silentLogger);
    try {
      const watch = await waiter.watch(1);
      waiter.wake(
        [1, 2],
        new Map([
          [1, row(1)],
          [2, row(2)],
        ]),
      );
      expect(waiter.finished(1)).toMatchObject({ id: 1 }); // for its waiter
      expect(waiter.finished(2)).toBeNull(); // nobody watches it: the news only
      watch.close();
      expect(waiter.finished(1)).toBeNull(); // its last waiter gone: the row goes too
    } finally {
      await waiter.close();
    }
  });
});
