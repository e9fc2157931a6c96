import { createEngine, type Engine, type EngineOptions } from '../../src/engine/index.ts';
import { migrate } from '../../src/store/migrate.ts';
import { createPgliteStore } from '../../src/store/pglite.ts';
import type { Store } from '../../src/store/types.ts';
import { createPgTestStore } from './pg.ts';

/** A migrated store of one engine kind, with a way to throw it away. */
export interface StoreHarness {
  store: Store;
  dispose: () => Promise<void>;
}

/** Opens a fresh migrated store: PGlite in memory, or a new schema on the test PostgreSQL. */
export async function openStore(kind: 'pglite' | 'postgres', label: string): Promise<StoreHarness> {
  if (kind === 'pglite') {
    const store = await createPgliteStore({ dataDir: 'memory://' });
    await migrate(store);
    return { store, dispose: () => store.close() };
  }
  const harness = createPgTestStore(label);
  await migrate(harness.store);
  return harness;
}

/** An engine on a fresh store; `dispose` stops it and drops the store. */
export async function openEngine(
  kind: 'pglite' | 'postgres',
  label: string,
  options: EngineOptions = {},
): Promise<{ engine: Engine; store: Store; dispose: () => Promise<void> }> {
  const harness = await openStore(kind, label);
  const engine = createEngine({
    store: harness.store,
    options: { waitPollIntervalMs: 200, ...options },
  });
  return {
    engine,
    store: harness.store,
    dispose: async () => {
      await engine.stop();
      await harness.dispose();
    },
  };
}

/** Polls `check` until it returns true (no fixed sleeps for correctness). */
export async function eventually(
  check: () => Promise<boolean> | boolean,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error('condition not met in time');
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
