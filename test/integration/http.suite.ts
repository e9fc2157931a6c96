import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import type { Extractor } from '../../src/memory/types.ts';
import { eventually } from '../helpers/engine.ts';
import { openHttp } from '../helpers/http.ts';

type Harness = Awaited<ReturnType<typeof openHttp>>;

/** The HTTP API over one store engine, one process. */
export function httpSuite(kind: 'pglite' | 'postgres'): void {
  describe(`HTTP API (${kind})`, () => {
    let h: Harness;

    beforeEach(async (ctx) => {
      h = await openHttp(kind, `http:${ctx.task.name}`);
    });

    afterEach(async () => {
      await h.dispose();
    });

    const countRows = async (table: string) =>
      (await h.mnemo.store.query<{ n: number }>(`select count(*)::int as n from ${table}`))[0]?.n;

    it('ingests a turn, answers 200 with the finished operation, and serves profile, memories, events and search', async () => {
      const res = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'u1',
        user_query:
          'My favorite color is blue. I love hiking in the Alps. On 2024-05-01 I ran a marathon.',
        agent_response: 'Noted!',
        source: 'sdk',
      });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-request-id')).toBeTruthy();
      expect(res.body).toMatchObject({
        id: expect.stringMatching(/^op_\d+$/),
        kind: 'memory.ingest',
        status: 'succeeded',
        attempts: 1,
        error: null,
        result: {
          memories: {
            added: [{ id: expect.any(String), text: 'I love hiking in the Alps' }],
            duplicates: 0,
          },
          profile: { set: { favorite_color: 'blue' }, unset: [] },
          events: {
            added: [
              { id: expect.any(String), date: '2024-05-01', description: 'I ran a marathon' },
            ],
            duplicates: 0,
          },
          summary: { turn_count: 1 },
        },
      });
      const profile = await h.call('GET', '/v1/users/u1/profile');
      expect(profile.body).toMatchObject({
        attributes: { favorite_color: { value: 'blue', operation_id: res.body['id'] } },
        summary: { turn_count: 1, text: expect.stringContaining('favorite_color = blue') },
      });
      expect((await h.call('GET', '/v1/users/u1/memories')).body['items']).toHaveLength(1);
      expect(
        (await h.call('GET', '/v1/users/u1/events?from=2024-01-01&to=2024-12-31')).body['items'],
      ).toHaveLength(1);
      expect((await h.call('GET', '/v1/users/u1/events?to=2023-12-31')).body['items']).toHaveLength(
        0,
      );
      const search = await h.call('GET', '/v1/memory/search?user_id=u1&q=hiking&types=memory');
      expect(search.body['items']).toEqual([
        expect.objectContaining({
          type: 'memory',
          text: 'I love hiking in the Alps',
          score: expect.any(Number),
        }),
      ]);
    });

    it('lists events page by page in date order, several on one date included', async () => {
      await h.call('POST', '/v1/memory/ingest', {
        user_id: 'ev',
        user_query:
          'On 2024-03-01 I moved house. On 2024-01-05 I met Ana. On 2024-03-01 I bought a lamp. On 2024-02-10 I ran. On 2024-03-01 I painted.',
      });
      const pages = (await h.pages<{ date: string }>('/v1/users/ev/events?limit=2')).map((page) =>
        page.map((e) => e.date),
      );
      expect(pages).toEqual([
        ['2024-01-05', '2024-02-10'],
        ['2024-03-01', '2024-03-01'],
        ['2024-03-01'],
      ]);
      const march = await h.call('GET', '/v1/users/ev/events?from=2024-03-01&limit=2');
      const rest = await h.call(
        'GET',
        `/v1/users/ev/events?from=2024-03-01&limit=2&cursor=${march.body['next_cursor']}`,
      );
      expect(
        [...march.body['items'], ...rest.body['items']].map(
          (e: { description: string }) => e.description,
        ),
      ).toEqual(['I moved house', 'I bought a lamp', 'I painted']);
      expect(rest.body['next_cursor']).toBeNull();
      for (const bad of [
        'cursor=2024-03-01',
        'cursor=x_1',
        'cursor=2024-02-30_1', // the shape of a cursor, not a date
        'cursor=0000-01-01_1',
        'limit=0',
        'limit=1001',
      ]) {
        const res = await h.call('GET', `/v1/users/ev/events?${bad}`);
        expect(res.status).toBe(400);
        expect(res.body).toMatchObject({ error: { code: 'invalid_request' } });
      }
    });

    it('deduplicates facts and events per user and counts every turn', async () => {
      const body = { user_id: 'u2', user_query: 'I prefer tea. On 2024-01-02 I met Ana.' };
      await h.call('POST', '/v1/memory/ingest', body);
      const second = await h.call('POST', '/v1/memory/ingest', {
        ...body,
        user_query: 'i prefer  TEA! On 2024-01-02, I met Ana.',
      });
      expect(second.body['result']).toMatchObject({
        memories: { added: [], duplicates: 0 },
        events: { added: [], duplicates: 1 },
        summary: { turn_count: 2 },
      });
      const third = await h.call('POST', '/v1/memory/ingest', {
        ...body,
        user_query: 'I prefer tea.',
      });
      expect(third.body['result']).toMatchObject({
        memories: { added: [], duplicates: 1 },
        summary: { turn_count: 3 },
      });
    });

    it('replays an idempotency key to the same operation and refuses it with another body', async () => {
      const body = { user_id: 'u3', user_query: 'I like chess.', idempotency_key: 'k-1' };
      const first = await h.call('POST', '/v1/memory/ingest', body);
      const again = await h.call('POST', '/v1/memory/ingest', { ...body, wait: false });
      expect(again.body['id']).toBe(first.body['id']);
      const header = await h.call(
        'POST',
        '/v1/memory/ingest',
        { user_id: 'u3', user_query: 'I like chess.' },
        { 'idempotency-key': 'k-1' },
      );
      expect(header.body['id']).toBe(first.body['id']);
      const other = await h.call('POST', '/v1/memory/ingest', {
        ...body,
        user_query: 'I like go.',
      });
      expect(other.status).toBe(409);
      expect(other.body).toMatchObject({
        error: { code: 'idempotency_conflict' },
        request_id: expect.any(String),
      });
      expect(await countRows('turns')).toBe(1);
    });

    it('replays a batch by its idempotency key to the same parent and refuses the key with other items', async () => {
      const body = {
        user_id: 'u3b',
        items: [{ user_query: 'My city is Oslo.' }, { user_query: 'I like skiing.' }],
        idempotency_key: 'batch-1',
      };
      const first = await h.call('POST', '/v1/memory/batch-ingest', body);
      expect([200, 202]).toContain(first.status);
      const again = await h.call('POST', '/v1/memory/batch-ingest', body);
      expect(again.body['id']).toBe(first.body['id']);
      const other = await h.call('POST', '/v1/memory/batch-ingest', {
        ...body,
        items: [{ user_query: 'My city is Bergen.' }, { user_query: 'I like skiing.' }],
      });
      expect(other.status).toBe(409);
      expect(other.body).toMatchObject({ error: { code: 'idempotency_conflict' } });
      // One parent and its two children, nothing from the refused or replayed calls.
      expect(await countRows('jobs')).toBe(3);
    });

    it('runs a batch in order as one parent with children, and rejects a batch with one invalid item whole', async () => {
      const bad = await h.call('POST', '/v1/memory/batch-ingest', {
        user_id: 'u4',
        items: [{ user_query: 'My city is Oslo.' }, { user_query: '' }],
      });
      expect(bad.status).toBe(400);
      expect(bad.body['error']).toMatchObject({
        code: 'invalid_request',
        details: [expect.objectContaining({ path: 'items.1.user_query' })],
      });
      expect(await countRows('jobs')).toBe(0);

      const ok = await h.call('POST', '/v1/memory/batch-ingest', {
        user_id: 'u4',
        items: [
          { user_query: 'My city is Oslo.' },
          { user_query: 'My city is Bergen.' },
          { user_query: 'I ski.' },
        ],
      });
      expect(ok.status).toBe(202);
      expect(ok.body).toMatchObject({ kind: 'memory.batch_ingest', children: { total: 3 } });
      const id = ok.body['id'] as string;
      let op = await h.call('GET', `/v1/operations/${id}?include=children`);
      for (let i = 0; i < 200 && op.body['status'] !== 'succeeded'; i++) {
        await new Promise((r) => setTimeout(r, 25));
        op = await h.call('GET', `/v1/operations/${id}?include=children`);
      }
      expect(op.body).toMatchObject({ status: 'succeeded', children: { total: 3, succeeded: 3 } });
      expect((op.body['items'] as { status: string }[]).map((c) => c.status)).toEqual([
        'succeeded',
        'succeeded',
        'succeeded',
      ]);
      expect(
        (await h.call('GET', '/v1/users/u4/profile')).body['attributes']['city']['value'],
      ).toBe('Bergen');
      expect((await h.call('GET', '/v1/users/u4/profile')).body['summary']['turn_count']).toBe(3);
    });

    it('lists operations by user and status, cancels pending work, and answers 404 for unknown ids', async () => {
      await h.call('POST', '/v1/memory/ingest', { user_id: 'u5', user_query: 'I code.' });
      const list = await h.call('GET', '/v1/operations?user_id=u5&status=succeeded');
      expect(list.body).toMatchObject({
        items: [expect.objectContaining({ kind: 'memory.ingest' })],
        next_cursor: null,
      });
      expect((await h.call('GET', '/v1/operations/op_999999')).status).toBe(404);
      expect((await h.call('GET', '/v1/operations/nonsense')).status).toBe(404);
      expect((await h.call('POST', '/v1/operations/op_999999/cancel')).status).toBe(404);
      const done = list.body['items'][0]['id'] as string;
      expect((await h.call('POST', `/v1/operations/${done}/cancel`)).body['status']).toBe(
        'succeeded',
      );
    });

    it('deletes a user in the user lane: every read is empty afterwards', async () => {
      const first = {
        user_id: 'u6',
        user_query: 'My name is Zed. I like jazz. On 2024-03-03 I moved.',
        idempotency_key: 'zed-1',
      };
      const ingest = await h.call('POST', '/v1/memory/ingest', first);
      const batch = await h.call('POST', '/v1/memory/batch-ingest', {
        user_id: 'u6',
        wait: true,
        items: [{ user_query: 'I like blues.' }, { user_query: 'My city is Oslo.' }],
      });
      expect(batch.body['status']).toBe('succeeded');
      const del = await h.call('DELETE', '/v1/users/u6');
      expect([200, 202]).toContain(del.status);
      expect(del.body['kind']).toBe('memory.delete_user');
      let op = del.body;
      for (let i = 0; i < 200 && op['status'] !== 'succeeded'; i++) {
        await new Promise((r) => setTimeout(r, 25));
        op = (await h.call('GET', `/v1/operations/${op['id'] as string}`)).body;
      }
      expect(op['status']).toBe('succeeded');
      expect((await h.call('GET', '/v1/users/u6/profile')).body).toEqual({
        attributes: {},
        summary: { turn_count: 0, last_ingested_at: null, text: '' },
      });
      expect((await h.call('GET', '/v1/users/u6/memories')).body['items']).toEqual([]);
      expect((await h.call('GET', '/v1/users/u6/events')).body['items']).toEqual([]);
      expect((await h.call('GET', '/v1/memory/search?user_id=u6&q=jazz')).body['items']).toEqual(
        [],
      );
      // Its earlier operations, a batch's items included, keep no copy of its words.
      const before = await h.call('GET', `/v1/operations/${ingest.body['id'] as string}`);
      expect(before.body).toMatchObject({ status: 'succeeded', result: null });
      const items = await h.call(
        'GET',
        `/v1/operations/${batch.body['id'] as string}?include=children`,
      );
      expect(items.body['items']).toHaveLength(2);
      for (const item of items.body['items'] as { result: unknown }[]) {
        expect(item.result).toBeNull();
      }
      const [words] = await h.mnemo.store.query<{ n: number }>(
        `select count(*)::int as n from jobs where payload ->> 'user_id' = 'u6'
            and payload ? 'user_query'`,
      );
      expect(words?.n).toBe(0);
      // Nor are they the user's any more: listing the user's operations finds the deletion
      // alone, and a key of theirs is free again (a re-import after the deletion is written).
      const listed = await h.call('GET', '/v1/operations?user_id=u6');
      expect(listed.body['items'].map((o: { id: string }) => o.id)).toEqual([op['id']]);
      const again = await h.call('POST', '/v1/memory/ingest', first);
      expect(again.body).toMatchObject({ status: 'succeeded' });
      expect(again.body['id']).not.toBe(ingest.body['id']);
      expect((await h.call('GET', '/v1/users/u6/profile')).body['summary']).toMatchObject({
        turn_count: 1,
      });
    });

    it('answers bad input with a 4xx error body and writes nothing', async () => {
      const cases: [string, string, unknown, number][] = [
        ['POST', '/v1/memory/ingest', '{not json', 400],
        ['POST', '/v1/memory/ingest', '', 400],
        ['POST', '/v1/memory/ingest', { user_id: 'u', user_query: 5 }, 400],
        ['POST', '/v1/memory/ingest', { user_id: '', user_query: 'x' }, 400],
        // Unreachable through a path afterwards (/v1/users/%2E%2E is /v1/).
        ['POST', '/v1/memory/ingest', { user_id: '..', user_query: 'x' }, 400],
        [
          'POST',
          '/v1/sessions/s/messages',
          { user_id: '.', messages: [{ role: 'user', content: 'Hi.' }] },
          400,
        ],
        ['POST', '/v1/memory/ingest', { user_id: 'u', user_query: 'x', unknown_field: 1 }, 400],
        [
          'POST',
          '/v1/memory/ingest',
          { user_id: 'u', user_query: 'x', occurred_at: 'yesterday' },
          400,
        ],
        ['POST', '/v1/memory/ingest', { user_id: 'u', user_query: 'x', timeout_ms: 999999 }, 400],
        ['POST', '/v1/memory/ingest', [1, 2], 400],
        ['POST', '/v1/memory/ingest', { user_id: 'u', user_query: 'a\u0000b' }, 400],
        ['POST', '/v1/memory/ingest', { user_id: 'u\u0000', user_query: 'ab' }, 400],
        [
          'POST',
          '/v1/memory/ingest',
          { user_id: 'u', user_query: 'ab', metadata: { k: 'x\u0000' } },
          400,
        ],
        [
          'POST',
          '/v1/memory/ingest',
          { user_id: 'u', user_query: 'ab', occurred_at: '0000-01-01T00:00:00Z' },
          400,
        ],
        ['POST', '/v1/memory/ingest', { user_id: 'x'.repeat(257), user_query: 'x' }, 400],
        ['POST', '/v1/memory/batch-ingest', { user_id: 'u', items: [] }, 400],
        ['GET', '/v1/memory/search?user_id=u&q=x&types=memory,nope', undefined, 400],
        ['GET', '/v1/memory/search?q=x', undefined, 400],
        ['GET', '/v1/operations?status=weird', undefined, 400],
        ['GET', '/v1/users/u/memories?limit=0', undefined, 400],
        ['GET', '/v1/users/u/events?from=2024-13-01', undefined, 400],
        ['GET', '/v1/nowhere', undefined, 404],
      ];
      for (const [method, path, body, status] of cases) {
        const res = await h.call(method, path, body);
        expect({ path, body, status: res.status }).toEqual({ path, body, status });
        expect(res.body).toMatchObject({
          error: { code: expect.any(String), message: expect.any(String) },
          request_id: expect.any(String),
        });
      }
      const huge = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'u',
        user_query: 'x'.repeat(10 * 1024 * 1024),
      });
      expect(huge.status).toBe(413);
      expect(huge.body['error']['code']).toBe('payload_too_large');
      // A declared length past the limit is refused before the body is read.
      const declared = await h.call(
        'POST',
        '/v1/memory/ingest',
        { user_id: 'u', user_query: 'hi' },
        { 'content-length': String(10 * 1024 * 1024) },
      );
      expect(declared.status).toBe(413);
      expect(declared.body['error']['code']).toBe('payload_too_large');
      expect(await countRows('jobs')).toBe(0);
    });

    it('remembers a very long sentence and deduplicates it like any other', async () => {
      const sentence = `I keep ${'a very long note '.repeat(1500)}`.trim();
      const first = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'long',
        user_query: `${sentence}.`,
      });
      expect(first.body['result']['memories']['added']).toHaveLength(1);
      const again = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'long',
        user_query: `${sentence}.`,
      });
      expect(again.body['result']['memories']).toEqual({ added: [], duplicates: 1 });
    });

    it('serves health, readiness, metrics and the OpenAPI document', async () => {
      expect((await h.call('GET', '/healthz')).status).toBe(200);
      expect((await h.call('GET', '/readyz')).body).toEqual({ status: 'ready' });
      const metrics = await h.call('GET', '/metrics');
      expect(metrics.status).toBe(200);
      expect(String(metrics.body)).toContain('mnemo_jobs_enqueued_total');
      const doc = await h.call('GET', '/openapi.json');
      expect(doc.body['openapi']).toBe('3.1.0');
      expect(Object.keys(doc.body['paths'] as object)).toEqual(
        expect.arrayContaining([
          '/v1/memory/ingest',
          '/v1/memory/batch-ingest',
          '/v1/operations/{id}',
          '/v1/users/{user_id}',
        ]),
      );
      // The server's own limits, bodies required where a route needs one, and the bearer key.
      const paths = doc.body['paths'];
      const bodyOf = (path: string, method: string) => paths[path][method]['requestBody'];
      const schemaOf = (path: string) =>
        bodyOf(path, 'post')['content']['application/json']['schema'];
      expect(schemaOf('/v1/memory/batch-ingest')['properties']['items']['maxItems']).toBe(100);
      expect(schemaOf('/v1/sync')['properties']['segments']['maxItems']).toBe(1000);
      for (const path of ['/v1/memory/ingest', '/v1/sync', '/v1/sessions/{session_id}/messages']) {
        expect(bodyOf(path, 'post')['required'], path).toBe(true);
      }
      expect(bodyOf('/v1/sessions/{session_id}/commit', 'post')['required']).toBe(false);
      expect(doc.body['components']['securitySchemes']['apiKey']).toMatchObject({
        type: 'http',
        scheme: 'bearer',
      });
      // GET routes carry their query parameters from the same zod schemas that validate them.
      const search = doc.body['paths']['/v1/memory/search']['get'];
      expect(search['parameters']).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ name: 'user_id', in: 'query', required: true }),
          expect.objectContaining({ name: 'q', in: 'query', required: true }),
          expect.objectContaining({ name: 'limit', in: 'query', required: false }),
        ]),
      );
      // Every templated path names each of its parameters.
      for (const [path, methods] of Object.entries(doc.body['paths'] as object)) {
        const templated = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
        for (const operation of Object.values(methods as Record<string, { parameters?: [] }>)) {
          const inPath = (operation.parameters ?? [])
            .filter((p: { in: string }) => p.in === 'path')
            .map((p: { name: string }) => p.name);
          expect(inPath.sort(), path).toEqual([...templated].sort());
        }
      }
      // Every error status the API can answer with is listed.
      expect(Object.keys(search['responses'])).toEqual(
        expect.arrayContaining(['400', '401', '404', '409', '413', '429', '500', '503']),
      );
    });
  });

  describe(`HTTP API with a slow extractor (${kind})`, () => {
    it('answers 202 when the wait runs out, and a run past its timeout writes nothing and fails truthfully', async () => {
      const stuck = (signal: AbortSignal) =>
        new Promise<never>((_resolve, reject) =>
          signal.addEventListener('abort', () => reject(signal.reason as Error)),
        );
      const never: Extractor = {
        name: 'stuck',
        extract: (_turn, signal) => stuck(signal),
        summarize: (_messages, signal) => stuck(signal),
      };
      const h = await openHttp(kind, 'http:slow', {
        extractor: never,
        env: { MNEMO_LLM_TIMEOUT_MS: '100' },
      });
      // Its enqueue did not wait for the disk: the 202 must wait for makeDurable.
      const durable: number[] = [];
      const makeDurable = h.mnemo.engine.makeDurable.bind(h.mnemo.engine);
      h.mnemo.engine.makeDurable = (job) => {
        durable.push(job.id);
        return makeDurable(job);
      };
      try {
        const res = await h.call('POST', '/v1/memory/ingest', {
          user_id: 'u',
          user_query: 'I wait.',
          timeout_ms: 50,
        });
        expect(res.status).toBe(202);
        expect(['pending', 'running']).toContain(res.body['status']);
        expect(durable).toHaveLength(1);
        const id = res.body['id'] as string;
        let op = res.body;
        for (let i = 0; i < 400 && op['status'] !== 'failed'; i++) {
          await new Promise((r) => setTimeout(r, 25));
          op = (await h.call('GET', `/v1/operations/${id}`)).body;
        }
        expect(op).toMatchObject({ status: 'failed', attempts: 3, error: { code: 'timeout' } });
        const [turns] = await h.mnemo.store.query<{ n: number }>(
          'select count(*)::int as n from turns',
        );
        expect(turns?.n).toBe(0);
      } finally {
        await h.dispose();
      }
    });

    // A waiting ingest's enqueue does not wait for the disk: a database crash right after it
    // can lose the job, and the id sequence's advance with it, so a later job may get the same
    // id (decision 0007). Deleting the row, or putting another job under its id, stands in.
    it.each(['vanishes', 'is replaced by a later job under its id'])(
      'answers 503, not 404 or another operation, when a waited-for ingest %s before it was durable',
      async (how) => {
        let release: () => void = () => undefined;
        const gate = new Promise<void>((resolve) => (release = resolve));
        const gated: Extractor = {
          name: 'gated',
          extract: async () => {
            await gate;
            return { set: {}, unset: [], memories: ['x'], events: [] };
          },
          summarize: () => Promise.resolve(''),
        };
        const h = await openHttp(kind, 'http:lost', { extractor: gated });
        try {
          const answer = h.call('POST', '/v1/memory/ingest', { user_id: 'u', user_query: 'Hi.' });
          let jobs: { id: number }[] = [];
          for (let i = 0; i < 200 && jobs.length === 0; i++) {
            await new Promise((r) => setTimeout(r, 10));
            jobs = await h.mnemo.store.query<{ id: number }>('select id::int as id from jobs');
          }
          const id = jobs[0]?.id;
          await h.mnemo.store.transaction(async (tx) => {
            const [old] = await tx.query<{ j: unknown }>(
              'delete from jobs where id = $1 returning to_jsonb(jobs) as j',
              [id],
            );
            if (how !== 'vanishes') {
              // Another request's job, a minute younger, with the same id, claimed by a
              // worker elsewhere with a first claim's token.
              await tx.query(
                `insert into jobs overriding system value
                 select (jsonb_populate_record(null::jobs, $1::jsonb || jsonb_build_object(
                   'attempts', 1, 'lease_token', 1, 'locked_by', 'elsewhere',
                   'lease_expires_at', now() + interval '1 minute', 'lane', 'user:v',
                   'created_at', now() + interval '1 minute',
                   'payload', '{"user_id": "v", "user_query": "Replacement."}'::jsonb))).*`,
                [JSON.stringify(old?.j)],
              );
            }
          });
          release();
          const res = await answer;
          expect(res.status).toBe(503);
          expect(res.body).toMatchObject({ error: { code: 'unavailable' } });
          // The lost attempt wrote nothing, and did not complete the job that took its id.
          await new Promise((r) => setTimeout(r, 200));
          expect(await h.mnemo.store.query('select user_query from turns')).toEqual([]);
          const rest = await h.mnemo.store.query('select status, result from jobs');
          expect(rest).toEqual(how === 'vanishes' ? [] : [{ status: 'running', result: null }]);
        } finally {
          await h.dispose();
        }
      },
    );
  });

  describe(`HTTP API while a user's deletion waits (${kind})`, () => {
    it('refuses session and sync writes for that user with 409 until it has run; ingests queue behind it', async () => {
      const h = await openHttp(kind, 'http:deleting', { worker: false });
      try {
        const del = await h.call('DELETE', '/v1/users/d1', { wait: false });
        expect(del.status).toBe(202);
        const append = () =>
          h.call('POST', '/v1/sessions/ds/messages', {
            user_id: 'd1',
            messages: [{ role: 'user', content: 'I like figs.' }],
          });
        const upload = () =>
          h.call('POST', '/v1/sync', {
            user_id: 'd1',
            segments: [
              {
                id: 'x',
                started_at: '2026-06-01T10:00:00Z',
                ended_at: '2026-06-01T10:00:05Z',
                transcript: 'I like dates.',
              },
            ],
          });
        for (const res of [await append(), await upload()]) {
          expect(res.status).toBe(409);
          expect(res.body['error']).toMatchObject({
            code: 'conflict',
            details: { operation_id: del.body['id'] },
          });
        }
        // Another user is not held up; an ingest of this one waits in the lane, after it.
        expect(
          (
            await h.call('POST', '/v1/sessions/other/messages', {
              user_id: 'd2',
              messages: [{ role: 'user', content: 'Hi.' }],
            })
          ).status,
        ).toBe(200);
        const ingest = await h.call('POST', '/v1/memory/ingest', {
          user_id: 'd1',
          user_query: 'I like plums.',
          wait: false,
        });
        expect(ingest.status).toBe(202);
        // A batch too: its items are in the lane, after the deletion; it stays, key and all.
        const batchBody = {
          user_id: 'd1',
          items: [{ user_query: 'I like pears.' }],
          idempotency_key: 'after-the-deletion',
          wait: false,
        };
        const batch = await h.call('POST', '/v1/memory/batch-ingest', batchBody);
        expect(batch.status).toBe(202);
        await h.mnemo.startWorker({ pollIntervalMs: 50 });
        for (const op of [ingest, batch]) {
          await eventually(
            async () =>
              (await h.call('GET', `/v1/operations/${op.body['id']}`)).body['status'] ===
              'succeeded',
          );
        }
        expect((await append()).status).toBe(200);
        expect((await upload()).status).toBe(202);
        expect((await h.call('GET', '/v1/users/d1/profile')).body['summary']).toMatchObject({
          turn_count: 2,
        });
        const listed = await h.call('GET', '/v1/operations?user_id=d1&kind=memory.batch_ingest');
        expect(listed.body['items'].map((o: { id: string }) => o.id)).toEqual([batch.body['id']]);
        const replay = await h.call('POST', '/v1/memory/batch-ingest', batchBody);
        expect(replay.body['id']).toBe(batch.body['id']);
      } finally {
        await h.dispose();
      }
    });
  });

  describe(`HTTP API with operation retention (${kind})`, () => {
    it('deletes operations of every kind past MNEMO_OPERATION_RETENTION_HOURS, with their children, and keeps what they wrote', async () => {
      const h = await openHttp(kind, 'http:retention', {
        env: { MNEMO_OPERATION_RETENTION_HOURS: '1' },
        worker: false,
      });
      try {
        const worker = await h.mnemo.startWorker({ pollIntervalMs: 200, sweepIntervalMs: 0 });
        const body = { user_id: 'r1', user_query: 'I like tea.', idempotency_key: 'day-1' };
        const first = await h.call('POST', '/v1/memory/ingest', body);
        const batch = await h.call('POST', '/v1/memory/batch-ingest', {
          user_id: 'r1',
          items: [{ user_query: 'I like rain.' }, { user_query: 'I like snow.' }],
          wait: true,
        });
        await h.call('POST', '/v1/sessions/s1/messages', {
          user_id: 'r1',
          messages: [{ role: 'user', content: 'I like hail.' }],
        });
        const commitBody = { idempotency_key: 'commit-1' };
        const commit = await h.call('POST', '/v1/sessions/s1/commit', commitBody);
        const segment = {
          id: 'seg-1',
          started_at: '2026-06-01T10:00:00.000Z',
          ended_at: '2026-06-01T10:00:05.000Z',
          transcript: 'I like sleet.',
        };
        const upload = await h.call('POST', '/v1/sync', {
          user_id: 'r1',
          segments: [segment],
          wait: true,
        });
        expect([
          first.body['status'],
          batch.body['status'],
          commit.body['operation']['status'],
          upload.body['status'],
        ]).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
        const recent = await h.call('POST', '/v1/memory/ingest', {
          user_id: 'r1',
          user_query: 'I like fog.',
        });
        expect(await worker.sweep()).toBe(0); // all within the hour
        // All but the last finished two hours ago.
        await h.mnemo.store.query(
          `update jobs set finished_at = finished_at - interval '2 hours' where id <> $1`,
          [Number((recent.body['id'] as string).slice(3))],
        );
        expect(await worker.sweep()).toBe(4);
        const commitId = commit.body['operation']['id'];
        for (const id of [first.body['id'], batch.body['id'], commitId, upload.body['id']]) {
          const gone = await h.call('GET', `/v1/operations/${id}`);
          expect(gone.status).toBe(404);
          expect(gone.body).toMatchObject({ error: { code: 'not_found' } });
        }
        expect((await h.call('GET', `/v1/operations/${recent.body['id']}`)).status).toBe(200);
        // The batch's items and the upload's segment jobs went with their parents.
        expect(
          (await h.mnemo.store.query<{ n: number }>('select count(*)::int as n from jobs'))[0]?.n,
        ).toBe(1);
        // What the operations wrote stays: memories, the archive with its status, the
        // conversation.
        expect((await h.call('GET', '/v1/users/r1/profile')).body['summary']).toMatchObject({
          turn_count: 5,
        });
        expect((await h.call('GET', '/v1/sessions/s1')).body).toMatchObject({
          live_count: 0,
          archives: [{ index: 1, message_count: 1, status: 'succeeded' }],
        });
        expect((await h.call('GET', '/v1/users/r1/conversations')).body['items']).toEqual([
          expect.objectContaining({ segment_ids: ['seg-1'] }),
        ]);
        // Their idempotency keys are free again; a segment stays processed for its user.
        const again = await h.call('POST', '/v1/memory/ingest', body);
        expect(again.body['id']).not.toBe(first.body['id']);
        expect((await h.call('POST', '/v1/sessions/s1/commit', commitBody)).body).toEqual({
          status: 'nothing_to_commit',
        });
        const resent = await h.call('POST', '/v1/sync', {
          user_id: 'r1',
          segments: [segment],
          wait: true,
        });
        expect(resent.body['result']).toMatchObject({
          segments: { assigned: 0, duplicate: 1 },
        });
        const metrics = await h.call('GET', '/metrics');
        for (const swept of [
          'memory.ingest',
          'memory.batch_ingest',
          'session.commit',
          'sync.batch',
        ]) {
          expect(metrics.body).toContain(`mnemo_jobs_swept_total{kind="${swept}"} 1`);
        }
      } finally {
        await h.dispose();
      }
    });
  });
}
