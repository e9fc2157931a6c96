import type { Store } from './types.ts';

/** What {@link createStore} needs to know; `Config` satisfies it. */
export interface StoreConfig {
  /** PostgreSQL connection string; absent means embedded PGlite. */
  databaseUrl?: string | undefined;
  /** PGlite data directory or `memory://`. */
  dataDir: string;
  databaseSchema: string;
  databasePoolSize: number;
}

/**
 * Opens the store the configuration names: PostgreSQL when `databaseUrl` is set, otherwise
 * embedded PGlite in `dataDir`. Each engine's module is loaded only when chosen.
 * @throws MnemoError `unavailable` when the embedded database cannot be opened
 */
export async function createStore(config: StoreConfig): Promise<Store> {
  if (config.databaseUrl !== undefined) {
    const { createPostgresStore } = await import('./postgres.ts');
    return createPostgresStore({
      url: config.databaseUrl,
      schema: config.databaseSchema,
      maxConnections: config.databasePoolSize,
    });
  }
  const { createPgliteStore } = await import('./pglite.ts');
  return createPgliteStore({ dataDir: config.dataDir, schema: config.databaseSchema });
}

export type { NotificationHandler, Queryable, Store, TransactionOptions } from './types.ts';
