import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createMnemo, type Mnemo } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createAuthenticator, createKey } from '../../src/keys/keys.ts';
import { createApp } from '../../src/server/app.ts';

const TOKEN = 'metrics-token-0123456789';

describe('who may call, with and without keys (PGlite)', () => {
  let mnemo: Mnemo;
  let keyOfAcme = '';

  beforeAll(async () => {
    mnemo = await createMnemo(loadConfig({ MNEMO_DATA_DIR: 'memory://' }));
  });

  afterAll(async () => {
    await mnemo.close();
  });

  const ingest = (
    app: ReturnType<typeof createApp>,
    url: string,
    headers: Record<string, string>,
  ) =>
    app.request(url, {
      method: 'POST',
      headers,
      body: JSON.stringify({ user_id: 'u', user_query: 'I like tea.', wait: false }),
    });

  it('serves anonymous requests for localhost only, and none beyond loopback', async () => {
    const local = createApp({ mnemo });
    const json = { 'content-type': 'application/json' };
    expect((await ingest(local, 'http://localhost/v1/memory/ingest', json)).status).toBe(202);
    expect((await ingest(local, 'http://127.0.0.1/v1/memory/ingest', json)).status).toBe(202);
    // A key nobody created is unknown, not a way into tenant `default`.
    const stray = await ingest(local, 'http://localhost/v1/memory/ingest', {
      ...json,
      authorization: 'Bearer sk-not-a-mnemo-key',
    });
    expect(stray.status).toBe(401);
    expect(await stray.json()).toMatchObject({ error: { code: 'unauthorized' } });
    for (const authorization of ['Basic dTpw', 'Bearer', '']) {
      const odd = await ingest(local, 'http://localhost/v1/memory/ingest', {
        ...json,
        authorization,
      });
      expect(odd.status, JSON.stringify(authorization)).toBe(401);
    }
    // A rebinding DNS name reaches loopback with its own Host.
    const rebound = await ingest(local, 'http://attacker.example/v1/memory/ingest', json);
    expect(rebound.status).toBe(401);
    // A cross-site form or text/plain body is refused before anything is parsed.
    const plain = await ingest(local, 'http://localhost/v1/memory/ingest', {
      'content-type': 'text/plain',
    });
    expect(plain.status).toBe(400);
    // A page of another site in this machine's browser: its bodyless POST needs no preflight,
    // but it carries the page's Origin.
    const cancel = (origin: string) =>
      local.request('http://localhost/v1/operations/op_1/cancel', {
        method: 'POST',
        headers: { origin, 'content-type': 'text/plain' },
      });
    for (const origin of ['http://attacker.example', 'null']) {
      const res = await cancel(origin);
      expect(res.status, origin).toBe(401);
    }
    expect((await mnemo.engine.getJob('default', 1))?.status).toBe('pending');
    // A page served from this machine (a local tool) may call it, and so may an extension.
    expect((await cancel('chrome-extension://abcdefghijklmnop')).status).toBe(200);
    expect((await cancel('http://localhost:5173')).status).toBe(200);
    const exposed = createApp({ mnemo, allowAnonymous: false });
    expect((await ingest(exposed, 'http://localhost/v1/memory/ingest', json)).status).toBe(401);
    expect((await exposed.request('http://localhost/healthz')).status).toBe(200);
  });

  it('answers /metrics to the metrics token alone when one is configured', async () => {
    const app = createApp({ mnemo, metricsToken: TOKEN });
    expect((await app.request('/metrics')).status).toBe(401);
    const key = (await mnemo.store.transaction((tx) => createKey(tx, 'acme'))).key;
    keyOfAcme = key;
    const withKey = await app.request('/metrics', { headers: { authorization: `Bearer ${key}` } });
    expect(withKey.status).toBe(401);
    const withToken = await app.request('/metrics', {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(withToken.status).toBe(200);
    expect(await withToken.text()).toContain('mnemo_jobs');
    // The key serves its tenant's routes.
    const ops = await app.request('/v1/operations', {
      headers: { authorization: `Bearer ${key}` },
    });
    expect(ops.status).toBe(200);
  });

  it('holds a batch to MNEMO_BATCH_MAX_ITEMS (default 100) and writes nothing past it', async () => {
    const app = createApp({ mnemo });
    const items = Array.from({ length: 101 }, (_, i) => ({ user_query: `Item ${i} here.` }));
    const res = await app.request('http://localhost/v1/memory/batch-ingest', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keyOfAcme}` },
      body: JSON.stringify({ user_id: 'batcher', items }),
    });
    expect(res.status).toBe(400);
    expect(JSON.stringify(await res.json())).toContain('MNEMO_BATCH_MAX_ITEMS');
    const [row] = await mnemo.store.query<{ n: number }>(
      `select count(*)::int as n from jobs where payload->>'user_id' = 'batcher'`,
    );
    expect(row?.n).toBe(0);
  });

  it('bounds the database lookups a flood of unknown keys costs, and keeps serving known keys', async () => {
    const { key } = await mnemo.store.transaction((tx) => createKey(tx, 'flood'));
    let queries = 0;
    const counted = {
      ...mnemo.store,
      query: ((sql: string, params?: unknown[]) => {
        queries += 1;
        return mnemo.store.query(sql, params);
      }) as typeof mnemo.store.query,
    };
    // Bursts of 10, and a refill too slow to matter however slow the machine is.
    const auth = createAuthenticator(counted, 2000, 0.001, 10);
    expect(await auth.resolve(key)).toMatchObject({ tenantId: 'flood' });
    const outcomes: string[] = [];
    for (let i = 0; i < 200; i++) {
      outcomes.push(
        await auth.resolve(`mnemo_bogus_${i}`).then(
          (p) => (p === null ? 'unknown' : 'known'),
          (err: { code?: string }) => String(err.code),
        ),
      );
    }
    // The burst is looked up; the rest is refused unread, to be sent again.
    expect(outcomes.filter((o) => o === 'unknown')).toHaveLength(9); // the key took one
    expect(outcomes.filter((o) => o === 'rate_limited')).toHaveLength(191);
    expect(queries).toBe(10);
    // An unknown key seen lately costs nothing more; the known key is still served.
    expect(await auth.resolve('mnemo_bogus_0')).toBeNull();
    expect(await auth.resolve(key)).toMatchObject({ tenantId: 'flood' });
    expect(queries).toBe(10);
    // Even once its entry has expired (looked up again, outside the spent budget).
    const brief = createAuthenticator(counted, 50, 0.001, 1);
    expect(await brief.resolve(key)).toMatchObject({ tenantId: 'flood' });
    for (let i = 0; i < 5; i++) {
      await brief.resolve(`mnemo_other_${i}`).catch(() => null);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await brief.resolve(key)).toMatchObject({ tenantId: 'flood' });
  });

  it('answers /metrics with the process counters while the database does not answer', async () => {
    const lonely = await createMnemo(loadConfig({ MNEMO_DATA_DIR: 'memory://' }));
    // With a metrics token the scrape needs no key lookup (the database) to be let in.
    const app = createApp({ mnemo: lonely, metricsToken: TOKEN });
    await lonely.store.close(); // every query fails from here on
    const res = await app.request('http://localhost/metrics', {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('mnemo_jobs_enqueued_total');
    expect(text).not.toMatch(/^mnemo_jobs\{/m); // the backlog gauge, read from the database
    await lonely.close().catch(() => undefined);
  });
});
