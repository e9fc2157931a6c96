import { createMnemo, type Mnemo, type MnemoOptions } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createApp } from '../../src/server/app.ts';
import { dropSchema, testDatabaseUrl, testSchemaName } from './pg.ts';

/** A Mnemo with its HTTP app (no port) on a fresh store of the given kind. */
export async function openHttp(
  kind: 'pglite' | 'postgres',
  label: string,
  options: MnemoOptions & { env?: Record<string, string>; worker?: boolean } = {},
) {
  const schema = testSchemaName(label);
  const env: Record<string, string> =
    kind === 'pglite'
      ? { MNEMO_DATA_DIR: 'memory://', ...options.env }
      : { MNEMO_DATABASE_URL: testDatabaseUrl, MNEMO_DATABASE_SCHEMA: schema, ...options.env };
  const mnemo: Mnemo = await createMnemo(loadConfig(env), options);
  if (options.worker !== false) {
    await mnemo.startWorker({ pollIntervalMs: 200 });
  }
  const app = createApp({
    mnemo,
    maxBodyBytes: mnemo.config.maxBodyBytes,
    syncMaxBodyBytes: mnemo.config.syncMaxBodyBytes,
    rateLimitPerS: mnemo.config.rateLimitPerS,
    rateLimitBurst: mnemo.config.rateLimitBurst,
    metricsToken: mnemo.config.metricsToken,
  });
  const call = async (
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ) => {
    const res = await app.request(path, {
      method,
      headers: { 'content-type': 'application/json', ...headers },
      ...(body === undefined
        ? {}
        : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON (metrics)
    }
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests probe response JSON freely
    return { status: res.status, headers: res.headers, body: json as Record<string, any> };
  };
  /** Every page of a paged list (`limit`, `cursor`, `next_cursor`), first to last (at most 50). */
  const pages = async <Item>(path: string): Promise<Item[][]> => {
    const out: Item[][] = [];
    let cursor: string | null = null;
    do {
      const page = await call('GET', cursor === null ? path : `${path}&cursor=${cursor}`);
      if (page.status !== 200) {
        throw new Error(`GET ${path} answered ${page.status}: ${JSON.stringify(page.body)}`);
      }
      out.push(page.body['items'] as Item[]);
      cursor = page.body['next_cursor'] as string | null;
    } while (cursor !== null && out.length < 50);
    return out;
  };
  return {
    mnemo,
    app,
    call,
    pages,
    dispose: async () => {
      await mnemo.close();
      if (kind === 'postgres') {
        await dropSchema(schema);
      }
    },
  };
}
