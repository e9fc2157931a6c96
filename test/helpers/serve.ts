/** Several `mnemo serve` / `mnemo worker` processes on one database, and calls to them. */
import { afterAll, beforeAll } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/types.ts';
import { type JsonProcess, startJsonProcess } from './cli.ts';
import { dropSchema, testDatabaseUrl, testSchemaName } from './pg.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests probe response JSON freely
export type Json = Record<string, any>;

/** The log line of a server that listens. */
export const listening = (l: Record<string, unknown>) =>
  typeof l['url'] === 'string' && String(l['msg']).startsWith('Mnemo listening');

/** Processes started with one environment, and the URLs of those that serve HTTP. */
export function processGroup(env: () => Record<string, string>) {
  const processes: JsonProcess[] = [];
  const urls: string[] = [];
  return {
    processes,
    urls,
    /** Starts `mnemo <args>`; for `serve`, resolves once it listens. */
    async start(args: string[]): Promise<JsonProcess> {
      const p = startJsonProcess('src/cli/main.ts', env(), args);
      processes.push(p);
      if (args[0] === 'serve') {
        urls.push(String((await p.waitFor(listening))['url']));
      } else {
        await p.waitFor((l) => String(l['msg']).startsWith('Mnemo worker running'));
      }
      return p;
    },
    /** Stops every process (SIGTERM) and forgets the URLs. */
    async stopAll(): Promise<void> {
      for (const p of processes.splice(0)) {
        p.kill('SIGTERM');
        await p.exited;
      }
      urls.length = 0;
    },
    /** A JSON call to server `i` (round robin). */
    async call(i: number, method: string, path: string, body?: unknown) {
      const res = await fetch(`${urls[i % urls.length]}${path}`, {
        method,
        headers: { 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return { status: res.status, body: (await res.json()) as Json };
    },
  };
}

/**
 * For the tests of one file (call it inside their `describe`): two `mnemo <args>` server
 * processes on a fresh schema of the test database, with `sql` (test-only triggers, say) run
 * in that schema once they have migrated it; all stopped and dropped afterwards. `store` is a
 * connection of the test's own to that schema.
 */
export function twoServersOnPostgres(label: string, args: string[], sql: string) {
  const schema = testSchemaName(label);
  const env = {
    MNEMO_DATABASE_URL: testDatabaseUrl,
    MNEMO_DATABASE_SCHEMA: schema,
    MNEMO_PORT: '0',
  };
  const group = processGroup(() => env);
  let store: Store | undefined;
  beforeAll(async () => {
    await Promise.all([group.start(args), group.start(args)]);
    store = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 2 });
    await store.exec(sql);
  });
  afterAll(async () => {
    await group.stopAll();
    await store?.close();
    await dropSchema(schema);
  });
  return {
    call: group.call,
    store: (): Store => {
      if (store === undefined) {
        throw new Error('the servers are not started yet');
      }
      return store;
    },
  };
}
