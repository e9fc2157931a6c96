import { createHash } from 'node:crypto';

import pg from 'pg';
import { describe } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';

/** The PostgreSQL the `*.pg.test.ts` files use. */
export const testDatabaseUrl =
  process.env['MNEMO_TEST_DATABASE_URL'] ?? 'postgres://root@127.0.0.1:5432/test';

/** In CI (or with MNEMO_TEST_REQUIRE_PG=1) an unreachable PostgreSQL fails the run. */
const required = process.env['CI'] === 'true' || process.env['MNEMO_TEST_REQUIRE_PG'] === '1';

async function probe(): Promise<string | undefined> {
  const client = new pg.Client({
    connectionString: testDatabaseUrl,
    connectionTimeoutMillis: 3000,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('select 1');
    return undefined;
  } catch (err) {
    return (err as Error).message || String((err as { code?: string }).code);
  } finally {
    await client.end().catch(() => undefined);
  }
}

const unreachable = await probe();
if (unreachable !== undefined && required) {
  throw new Error(
    `PostgreSQL tests are required but ${testDatabaseUrl} is unreachable: ${unreachable}`,
  );
}

/** `describe` for tests that need PostgreSQL: skipped locally when it is down, fatal in CI. */
export const describePg = unreachable === undefined ? describe : describe.skip;

/** A schema name unique to `label` (a file + test title) and this run. */
export function testSchemaName(label: string): string {
  const digest = createHash('sha1').update(
    `${label}:${process.pid}:${Date.now()}:${Math.random()}`,
  );
  return `t_${digest.digest('hex').slice(0, 16)}`;
}

/** Drops a test schema and everything in it. */
export async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: testDatabaseUrl });
  await client.connect();
  try {
    await client.query(`drop schema if exists ${schema} cascade`);
  } finally {
    await client.end();
  }
}

/** A plain connection to the test database working in `schema` (to hold locks beside a store). */
export async function connectToSchema(schema: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: testDatabaseUrl,
    options: `-c search_path=${schema}`,
  });
  await client.connect();
  return client;
}

/** A store on its own fresh schema of the test database; `dispose` closes it and drops the schema. */
export function createPgTestStore(
  label: string,
  maxConnections = 10,
): {
  store: Store;
  schema: string;
  dispose: () => Promise<void>;
} {
  const schema = testSchemaName(label);
  const store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections });
  return {
    store,
    schema,
    dispose: async () => {
      await store.close();
      await dropSchema(schema);
    },
  };
}

/**
 * Resolves once a statement whose text matches one of `like` (SQL LIKE patterns) sleeps in
 * `pg_sleep` (a test's trigger holding a transaction open), in any session of the database.
 */
export async function sleepingIn(
  store: { query: Store['query'] },
  like: readonly string[],
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await store.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity
        where wait_event = 'PgSleep' and query like any($1::text[])`,
      [like],
    );
    if ((row?.n ?? 0) > 0) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`no statement like ${like.join(' or ')} slept within ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
