import { Writable } from 'node:stream';

import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';

import { createMnemo, type Mnemo } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createKey, revokeKey } from '../../src/keys/keys.ts';
import { createApp } from '../../src/server/app.ts';
import { type FakeLlm, startFakeLlm } from '../helpers/fake-llm.ts';
import { keySecret } from '../helpers/keys.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests probe response JSON freely
type Json = Record<string, any>;

const LLM_KEY = 'sk-llm-secret-never-logged-0123456789';

describePg('tenants and API keys (PostgreSQL)', () => {
  const schema = testSchemaName('tenants');
  const logLines: string[] = [];
  let mnemo: Mnemo;
  let app: ReturnType<typeof createApp>;
  let llm: FakeLlm;
  const keys: Record<string, string> = {};

  beforeAll(async () => {
    llm = await startFakeLlm();
    const config = loadConfig({
      MNEMO_DATABASE_URL: testDatabaseUrl,
      MNEMO_DATABASE_SCHEMA: schema,
      MNEMO_EXTRACTOR: 'openai',
      MNEMO_LLM_BASE_URL: llm.url,
      MNEMO_LLM_MODEL: 'fake',
      MNEMO_LLM_API_KEY: LLM_KEY,
      MNEMO_RATE_LIMIT_PER_S: '5',
      MNEMO_RATE_LIMIT_BURST: '40',
    });
    // Every log line of the run, at the most verbose level.
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logLines.push(chunk.toString());
        done();
      },
    });
    const logger = pino({ level: 'trace' }, sink);
    mnemo = await createMnemo(config, { logger });
    await mnemo.startWorker({ pollIntervalMs: 200 });
    app = createApp({
      mnemo,
      logger,
      rateLimitPerS: config.rateLimitPerS,
      rateLimitBurst: config.rateLimitBurst,
    });
    for (const tenant of ['acme', 'globex', 'limited']) {
      keys[tenant] = (await mnemo.store.transaction((tx) => createKey(tx, tenant))).key;
    }
  });

  afterAll(async () => {
    await mnemo?.close();
    await llm?.close();
    await dropSchema(schema);
  });

  const call = async (tenant: string | null, method: string, path: string, body?: unknown) => {
    const res = await app.request(path, {
      method,
      headers: {
        'content-type': 'application/json',
        ...(tenant === null ? {} : { authorization: `Bearer ${keys[tenant] ?? tenant}` }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, headers: res.headers, body: (await res.json()) as Json };
  };

  it('keeps two tenants with the same user, session and idempotency key fully apart on every route', async () => {
    // The same ids in both tenants.
    for (const tenant of ['acme', 'globex']) {
      const ingest = await call(tenant, 'POST', '/v1/memory/ingest', {
        user_id: 'u',
        user_query: `My employer is ${tenant}. I like ${tenant} coffee.`,
        idempotency_key: 'same-key',
      });
      expect(ingest.status).toBe(200);
      expect(
        (
          await call(tenant, 'POST', '/v1/sessions/s/messages', {
            user_id: 'u',
            messages: [{ role: 'user', content: `I work at ${tenant}.` }],
          })
        ).status,
      ).toBe(200);
      expect(
        (
          await call(tenant, 'POST', '/v1/sync', {
            user_id: 'u',
            segments: [
              {
                id: 'seg',
                started_at: '2026-01-01T00:00:00Z',
                ended_at: '2026-01-01T00:00:05Z',
                transcript: `Talk at ${tenant}.`,
              },
            ],
            wait: true,
          })
        ).status,
      ).toBe(200);
    }
    const acmeOp = (await call('acme', 'GET', '/v1/operations?user_id=u')).body['items'][0];
    const globexOps = (await call('globex', 'GET', '/v1/operations?user_id=u')).body['items'];
    expect(globexOps.map((o: Json) => o['id'])).not.toContain(acmeOp['id']);
    // Each tenant reads only its own: the other's words never appear.
    const reads = [
      '/v1/users/u/profile',
      '/v1/users/u/memories',
      '/v1/users/u/events',
      '/v1/users/u/conversations',
      '/v1/memory/search?user_id=u&q=coffee',
      '/v1/operations?user_id=u',
      '/v1/sessions/s',
    ];
    for (const path of reads) {
      const res = await call('globex', 'GET', path);
      expect(res.status, path).toBe(200);
      expect(JSON.stringify(res.body), path).not.toContain('acme');
    }
    // Another tenant's operation id is not found, for reading and for cancelling.
    for (const [method, path] of [
      ['GET', `/v1/operations/${acmeOp['id']}`],
      ['GET', `/v1/operations/${acmeOp['id']}?include=children`],
      ['POST', `/v1/operations/${acmeOp['id']}/cancel`],
    ] as const) {
      const res = await call('globex', method, path);
      expect(res.status, path).toBe(404);
      expect(res.body['error'].code).toBe('not_found');
    }
    // Writes with another tenant's ids reach nothing of it: a session only acme has is
    // unknown to globex, and globex's append to that id makes globex's own session.
    expect(
      (
        await call('acme', 'POST', '/v1/sessions/acme-only/messages', {
          user_id: 'u',
          messages: [{ role: 'user', content: 'Acme secret plan.' }],
        })
      ).status,
    ).toBe(200);
    const foreignCommit = await call('globex', 'POST', '/v1/sessions/acme-only/commit');
    expect(foreignCommit.status).toBe(404);
    expect((await call('globex', 'GET', '/v1/sessions/acme-only')).status).toBe(404);
    const ownAppend = await call('globex', 'POST', '/v1/sessions/acme-only/messages', {
      user_id: 'u',
      messages: [{ role: 'user', content: 'Globex note.' }],
    });
    expect(ownAppend.body).toEqual({ live_count: 1 });
    expect((await call('acme', 'GET', '/v1/sessions/acme-only')).body['live_count']).toBe(1);
    // Deleting "u" in globex leaves acme's "u" whole.
    expect((await call('globex', 'DELETE', '/v1/users/u', { wait: true })).status).toBe(200);
    expect((await call('globex', 'GET', '/v1/sessions/s')).status).toBe(404);
    const acmeProfile = await call('acme', 'GET', '/v1/users/u/profile');
    expect(acmeProfile.body['attributes']['employer']['value']).toBe('acme');
    expect((await call('acme', 'GET', '/v1/sessions/s')).body['live_count']).toBe(1);
    expect((await call('acme', 'GET', '/v1/users/u/conversations')).body['items']).toHaveLength(1);
  });

  it('answers 401 on every route without a valid key, except health and readiness', async () => {
    const routes: [string, string][] = [
      ['POST', '/v1/memory/ingest'],
      ['POST', '/v1/memory/batch-ingest'],
      ['GET', '/v1/operations'],
      ['GET', '/v1/operations/op_1'],
      ['POST', '/v1/operations/op_1/cancel'],
      ['GET', '/v1/memory/search?user_id=u&q=x'],
      ['GET', '/v1/users/u/profile'],
      ['GET', '/v1/users/u/memories'],
      ['GET', '/v1/users/u/events'],
      ['GET', '/v1/users/u/conversations'],
      ['DELETE', '/v1/users/u'],
      ['POST', '/v1/sessions/s/messages'],
      ['POST', '/v1/sessions/s/commit'],
      ['GET', '/v1/sessions/s'],
      ['POST', '/v1/sync'],
      ['GET', '/metrics'],
      ['GET', '/openapi.json'],
    ];
    for (const [method, path] of routes) {
      for (const who of [null, 'mnemo_nope_notakey']) {
        const res = await app.request(path, {
          method,
          headers: who === null ? {} : { authorization: `Bearer ${who}` },
        });
        expect(res.status, `${method} ${path}`).toBe(401);
        expect(((await res.json()) as Json)['error'].code).toBe('unauthorized');
      }
    }
    expect((await app.request('/healthz')).status).toBe(200);
    expect((await app.request('/readyz')).status).toBe(200);
    // A revoked key stops working (within the authenticator's cache period).
    const temp = await mnemo.store.transaction((tx) => createKey(tx, 'acme', 'temp'));
    keys['temp'] = temp.key;
    expect((await call('temp', 'GET', '/v1/operations')).status).toBe(200);
    await revokeKey(mnemo.store, temp.id);
    await new Promise((resolve) => setTimeout(resolve, 2100));
    expect((await call('temp', 'GET', '/v1/operations')).status).toBe(401);
  });

  it('rate-limits a key that floods while another tenant is served', async () => {
    const flood = await Promise.all(
      Array.from({ length: 400 }, () => call('limited', 'GET', '/v1/users/u/profile')),
    );
    // 10× its burst: the burst and what refills meanwhile pass, the rest is refused.
    const limited = flood.filter((r) => r.status === 429);
    expect(limited.length).toBeGreaterThanOrEqual(300);
    expect(flood.filter((r) => r.status === 200).length).toBeGreaterThanOrEqual(40);
    expect(limited[0]?.body['error'].code).toBe('rate_limited');
    expect(Number(limited[0]?.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const others = await Promise.all(
      Array.from({ length: 5 }, () => call('acme', 'GET', '/v1/users/u/profile')),
    );
    expect(others.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
  });

  it('logs carry request ids and no key material', () => {
    const text = logLines.join('');
    expect(text.length).toBeGreaterThan(0);
    const requests = logLines
      .map((l) => JSON.parse(l) as Json)
      .filter((l) => l['msg'] === 'request');
    expect(requests.length).toBeGreaterThan(50);
    expect(requests.every((l) => typeof l['request_id'] === 'string')).toBe(true);
    for (const secret of [...Object.values(keys), LLM_KEY, 'Bearer ']) {
      expect(text).not.toContain(secret);
    }
    // The key ids may appear, their secrets never.
    for (const key of Object.values(keys)) {
      expect(text).not.toContain(keySecret(key));
    }
  });
});
