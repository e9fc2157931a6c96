import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createKey } from '../../src/keys/keys.ts';
import { openHttp } from '../helpers/http.ts';
import { describePg } from '../helpers/pg.ts';

type Harness = Awaited<ReturnType<typeof openHttp>>;

// Strings with the characters PostgreSQL refuses (NUL, lone surrogates) mixed in.
const hostileString = fc
  .tuple(
    fc.string({ maxLength: 20 }),
    fc.constantFrom('\u0000', '\ud800', '\udfff', ''),
    fc.string({ maxLength: 20 }),
  )
  .map(([a, b, c]) => `${a}${b}${c}`);
// Values of every JSON type, including the right field names with wrong types.
const anyJson = fc.oneof(fc.jsonValue({ maxDepth: 3 }), hostileString);
const ingestLike = fc.record(
  {
    user_id: fc.oneof(fc.string({ maxLength: 300 }), hostileString, anyJson),
    user_query: fc.oneof(fc.string({ maxLength: 50 }), hostileString, anyJson),
    agent_response: anyJson,
    source: anyJson,
    occurred_at: fc.oneof(
      fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
      anyJson,
    ),
    metadata: anyJson,
    wait: fc.oneof(fc.constant(false), anyJson),
    timeout_ms: anyJson,
    idempotency_key: anyJson,
    items: fc.array(anyJson, { maxLength: 3 }),
  },
  { requiredKeys: [] },
);
const messageLike = fc.record(
  {
    role: fc.oneof(fc.constantFrom('user', 'assistant', 'system', 'tool'), anyJson),
    content: fc.oneof(fc.string({ maxLength: 50 }), hostileString, anyJson),
    created_at: fc.oneof(
      fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
      anyJson,
    ),
  },
  { requiredKeys: [] },
);
const sessionLike = fc.record(
  {
    user_id: fc.oneof(fc.constantFrom('u1', 'u2'), hostileString, anyJson),
    messages: fc.oneof(fc.array(messageLike, { maxLength: 3 }), anyJson),
    idempotency_key: anyJson,
    wait: fc.oneof(fc.constant(false), anyJson),
  },
  { requiredKeys: [] },
);
const segmentLike = fc.record(
  {
    id: fc.oneof(fc.constantFrom('s1', 's2'), hostileString, anyJson),
    started_at: fc.oneof(
      fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
      anyJson,
    ),
    ended_at: fc.oneof(
      fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
      anyJson,
    ),
    transcript: fc.oneof(fc.string({ maxLength: 40 }), hostileString, anyJson),
    audio_wav_base64: fc.oneof(fc.base64String({ maxLength: 60 }), anyJson),
  },
  { requiredKeys: [] },
);
const syncLike = fc.record(
  {
    user_id: fc.oneof(fc.constantFrom('u1'), hostileString, anyJson),
    device_id: anyJson,
    segments: fc.oneof(fc.array(segmentLike, { maxLength: 3 }), anyJson),
    merge_window_s: anyJson,
  },
  { requiredKeys: [] },
);
const body = fc.oneof(
  syncLike.map((v) => JSON.stringify(v)),
  anyJson.map((v) => JSON.stringify(v)),
  ingestLike.map((v) => JSON.stringify({ ...v, wait: false })),
  sessionLike.map((v) => JSON.stringify({ ...v, wait: false })),
  fc.string({ maxLength: 80 }),
);
const queryValue = fc.oneof(
  fc.string({ maxLength: 20 }),
  hostileString,
  fc.integer().map(String),
  fc.constantFrom('memory,event', '2024-01-01', 'op_1', '-1', ''),
);
const query = fc.dictionary(
  fc.constantFrom(
    'user_id',
    'q',
    'limit',
    'types',
    'cursor',
    'status',
    'kind',
    'from',
    'to',
    'include',
    'x',
  ),
  queryValue,
  { maxKeys: 4 },
);
const pathPart = fc.oneof(
  fc.string({ minLength: 1, maxLength: 20 }),
  // encodeURIComponent refuses lone surrogates; NUL and the rest go through.
  hostileString.filter((v) => v !== '' && v.isWellFormed()),
  fc.constantFrom('op_1', 'op_99999999999', 'u1'),
);

const routes = fc.oneof(
  fc.tuple(
    fc.constant('POST'),
    fc.constantFrom('/v1/memory/ingest', '/v1/memory/batch-ingest', '/v1/sync'),
    body,
  ),
  fc.tuple(
    fc.constant('DELETE'),
    pathPart.map((p) => `/v1/users/${encodeURIComponent(p)}`),
    body,
  ),
  fc.tuple(
    fc.constant('POST'),
    pathPart.map((p) => `/v1/operations/${encodeURIComponent(p)}/cancel`),
    body,
  ),
  fc.tuple(
    fc.constant('POST'),
    fc
      .tuple(pathPart, fc.constantFrom('messages', 'commit'))
      .map(([p, action]) => `/v1/sessions/${encodeURIComponent(p)}/${action}`),
    body,
  ),
  fc.tuple(
    fc.constant('GET'),
    pathPart.map((p) => `/v1/sessions/${encodeURIComponent(p)}`),
    fc.constant(undefined),
  ),
  fc.tuple(
    fc.constant('GET'),
    fc
      .tuple(
        fc.oneof(
          fc.constantFrom('/v1/memory/search', '/v1/operations'),
          pathPart.map((p) => `/v1/operations/${encodeURIComponent(p)}`),
          fc
            .tuple(pathPart, fc.constantFrom('profile', 'memories', 'events', 'conversations'))
            .map(([p, what]) => `/v1/users/${encodeURIComponent(p)}/${what}`),
        ),
        query,
      )
      .map(([p, q]) => `${p}?${new URLSearchParams(q).toString()}`),
    fc.constant(undefined),
  ),
);

function fuzzSuite(kind: 'pglite' | 'postgres'): void {
  describe(`HTTP API under random input (fast-check, ${kind})`, () => {
    let h: Harness;

    beforeAll(async () => {
      h = await openHttp(kind, `fuzz-${kind}`, { worker: false });
    });

    afterAll(async () => {
      await h.dispose();
    });

    // Rows a refused request must not have written.
    const jobs = async () =>
      (
        await h.mnemo.store.query<{ n: number }>(
          `select ((select count(*) from jobs) + (select count(*) from sessions)
           + (select count(*) from session_messages) + (select count(*) from sync_segments)
           + (select count(*) from sync_batches) + (select count(*) from sync_audio))::int as n`,
        )
      )[0]?.n ?? -1;

    it('never answers 500, always with an error body on 4xx, and writes nothing when it refuses', async () => {
      await fc.assert(
        fc.asyncProperty(routes, async ([method, path, payload]) => {
          const before = await jobs();
          const res = await h.call(method, path, payload);
          expect(res.status).toBeLessThan(500);
          expect(res.headers.get('x-request-id')).toBeTruthy();
          if (res.status >= 400) {
            expect(res.body).toMatchObject({
              error: { code: expect.any(String), message: expect.any(String) },
            });
            expect(await jobs()).toBe(before);
          }
        }),
        { numRuns: Number(process.env['MNEMO_FUZZ_RUNS'] ?? '2000') },
      );
    });

    // Values random input does not reach: a nesting deep enough to overflow a recursive walk,
    // and instants outside the years 0001-9999 in UTC, which PostgreSQL would store as BC or
    // five-digit years that JavaScript dates cannot read back.
    it('refuses values nested too deep and instants outside years 1-9999 in UTC with 400, writing nothing', async () => {
      // Sent as text: serialising it here would overflow this stack first.
      const deep = `${'['.repeat(200_000)}${']'.repeat(200_000)}`;
      const before = await jobs();
      const segment = { id: 's', started_at: '2026-01-01T00:00:00Z', transcript: 'Hi there.' };
      const refused: [string, string, unknown][] = [
        ['POST', '/v1/memory/ingest', `{"user_id":"u","user_query":"hi","metadata":{"k":${deep}}}`],
        [
          'POST',
          '/v1/memory/batch-ingest',
          `{"user_id":"u","items":[{"user_query":"hi","metadata":{"k":${deep}}}]}`,
        ],
        [
          'POST',
          '/v1/memory/ingest',
          { user_id: 'u', user_query: 'hi', occurred_at: '0001-01-01T00:00:00+01:00' },
        ],
        [
          'POST',
          '/v1/memory/ingest',
          { user_id: 'u', user_query: 'hi', occurred_at: '9999-12-31T23:30:00-01:00' },
        ],
        [
          'POST',
          '/v1/sessions/s1/messages',
          {
            user_id: 'u',
            messages: [{ role: 'user', content: 'hi', created_at: '0001-01-01T00:30:00+00:45' }],
          },
        ],
        [
          'POST',
          '/v1/sync',
          { user_id: 'u', segments: [{ ...segment, ended_at: '9999-12-31T23:59:00-00:01' }] },
        ],
      ];
      for (const [i, [method, path, body]] of refused.entries()) {
        const res = await h.call(method, path, body);
        expect(res.status, `case ${i}: ${method} ${path}`).toBe(400);
        expect(res.body).toMatchObject({ error: { code: 'invalid_request' } });
      }
      expect(await jobs()).toBe(before);
      // The edges themselves are accepted.
      const edge = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'u',
        user_query: 'hi',
        occurred_at: '0001-01-01T00:00:00Z',
        wait: false,
      });
      expect(edge.status).toBe(202);
    });

    it('refuses a body over its limit on every route that takes one with 413 and the error body, writing nothing', async () => {
      const body = (mb: number) =>
        JSON.stringify({ user_id: 'u1', user_query: 'x'.repeat(mb * 1024 * 1024) });
      const huge = body(11);
      const before = await jobs();
      // Audio uploads have a limit of their own (MNEMO_SYNC_MAX_BODY_BYTES, 64 MiB).
      const sync = await h.call('POST', '/v1/sync', body(65));
      expect(sync.status).toBe(413);
      expect(sync.body).toMatchObject({ error: { code: 'payload_too_large' } });
      for (const [method, path] of [
        ['POST', '/v1/memory/ingest'],
        ['POST', '/v1/memory/batch-ingest'],
        ['POST', '/v1/sessions/s1/messages'],
        ['POST', '/v1/sessions/s1/commit'],
        ['POST', '/v1/operations/op_1/cancel'],
        ['DELETE', '/v1/users/u1'],
      ] as const) {
        const res = await h.call(method, path, huge);
        expect(res.status, `${method} ${path}`).toBe(413);
        expect(res.body).toMatchObject({ error: { code: 'payload_too_large' } });
      }
      expect(await jobs()).toBe(before);
    });
  });
}

fuzzSuite('pglite');
describePg('postgres', () => {
  fuzzSuite('postgres');
});

describe('HTTP API under random input with API keys (fast-check, pglite)', () => {
  it('with API keys: anything without a valid key is 401 and writes nothing', async () => {
    const keyed = await openHttp('pglite', 'fuzz-keys', { worker: false });
    try {
      const key = (await keyed.mnemo.store.transaction((tx) => createKey(tx, 'acme'))).key;
      const count = async () =>
        (
          await keyed.mnemo.store.query<{ n: number }>(
            `select ((select count(*) from jobs) + (select count(*) from sessions)
               + (select count(*) from sync_segments))::int as n`,
          )
        )[0]?.n ?? -1;
      const authorization = fc.oneof(
        fc.constant(`Bearer ${key}`),
        fc.constant(undefined),
        fc.string({ maxLength: 30 }).map((v) => `Bearer ${v}`),
        fc.constant(`Bearer ${key.slice(0, -1)}`),
        fc.constant(`Basic ${Buffer.from(`x:${key}`).toString('base64')}`),
        fc.string({ maxLength: 30 }),
      );
      await fc.assert(
        fc.asyncProperty(routes, authorization, async ([method, path, payload], auth) => {
          const before = await count();
          const res = await keyed.call(
            method,
            path,
            payload,
            auth === undefined ? {} : { authorization: auth },
          );
          expect(res.status).toBeLessThan(500);
          if (auth !== `Bearer ${key}`) {
            expect(res.status).toBe(401);
          }
          if (res.status >= 400) {
            expect(await count()).toBe(before);
          }
        }),
        { numRuns: Math.ceil(Number(process.env['MNEMO_FUZZ_RUNS'] ?? '2000') / 2) },
      );
    } finally {
      await keyed.dispose();
    }
  });
});
