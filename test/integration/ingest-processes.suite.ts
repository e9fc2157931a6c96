/**
 * Issue 4's proofs of memory ingestion under concurrency, through `mnemo serve` processes and
 * their HTTP API only: on PostgreSQL with 2 processes sharing the database, and on PGlite with
 * one. Every observation is read back over HTTP (profile, events, operations), so the same
 * assertions hold on both stores.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { eventually } from '../helpers/engine.ts';
import { type FakeLlm, startFakeLlm } from '../helpers/fake-llm.ts';
import { type Json, processGroup } from '../helpers/serve.ts';

const LLM_LATENCY_MS = 50;

/** Where the processes keep their data, and how many of them serve. */
export interface IngestSetup {
  name: string;
  servers: number;
  /** The store's environment (MNEMO_DATABASE_URL … or MNEMO_DATA_DIR). */
  env: () => Record<string, string>;
  /** After the processes stopped. */
  cleanup?: () => Promise<void>;
}

export function ingestSuite(setup: IngestSetup): void {
  // Each test may wait up to 2 minutes for its operations (a loaded CI machine, PGlite).
  describe(
    `memory ingestion through ${setup.servers} server process(es) on ${setup.name}`,
    { timeout: 180_000 },
    () => {
      let llm: FakeLlm;
      let env: Record<string, string> = {};
      const group = processGroup(() => env);
      const post = (i: number, path: string, body: unknown) => group.call(i, 'POST', path, body);
      const get = (path: string) => group.call(0, 'GET', path);

      /** Every operation of a user, oldest first, read through the paged listing. */
      async function operationsOf(userId: string): Promise<Json[]> {
        const items: Json[] = [];
        let cursor: string | null = null;
        do {
          const page: Json = (
            await get(
              `/v1/operations?user_id=${userId}&limit=200${cursor === null ? '' : `&cursor=${cursor}`}`,
            )
          ).body;
          items.push(...(page['items'] as Json[]));
          cursor = page['next_cursor'] as string | null;
        } while (cursor !== null);
        // Ids are `op_<n>`, n in the order of acceptance.
        const seq = (op: Json) => Number(String(op['id']).slice('op_'.length));
        return items.sort((a, b) => seq(a) - seq(b));
      }

      beforeAll(async () => {
        llm = await startFakeLlm(LLM_LATENCY_MS);
        env = {
          ...setup.env(),
          MNEMO_PORT: '0',
          MNEMO_EXTRACTOR: 'openai',
          MNEMO_LLM_BASE_URL: llm.url,
          MNEMO_LLM_MODEL: 'fake',
          MNEMO_WORKER_CONCURRENCY: '10',
          // Far above the fake's 50 ms, so that only the test that stalls it times out.
          MNEMO_LLM_TIMEOUT_MS: '3000',
        };
        await Promise.all(Array.from({ length: setup.servers }, () => group.start(['serve'])));
      });

      afterAll(async () => {
        await group.stopAll();
        await llm?.close();
        await setup.cleanup?.();
      });

      it('keeps every attribute of 90 concurrent ingests from 3 sources, counts 90 turns, lets the last one win, and never overlaps them', async () => {
        const sources = ['mcp', 'sdk', 'extension'];
        const requests = sources.flatMap((source) =>
          Array.from({ length: 30 }, (_, i) => ({
            user_id: 'shared-user',
            source,
            user_query: `My ${source} attribute ${i} is value ${i}. My last source is ${source}-${i}.`,
            timeout_ms: 60_000,
          })),
        );
        const responses = await Promise.all(
          requests.map((body, i) => post(i, '/v1/memory/ingest', body)),
        );
        expect(responses.every((r) => r.status === 200 && r.body['status'] === 'succeeded')).toBe(
          true,
        );

        const profile = (await get('/v1/users/shared-user/profile')).body;
        const attributes = profile['attributes'] as Record<
          string,
          { value: string; operation_id: string }
        >;
        for (const source of sources) {
          for (let i = 0; i < 30; i++) {
            expect(attributes[`${source}_attribute_${i}`]?.value).toBe(`value ${i}`);
          }
        }
        expect(profile['summary']['turn_count']).toBe(90);

        const ops = responses
          .map((r) => r.body)
          .sort(
            (a, b) => Date.parse(a['started_at'] as string) - Date.parse(b['started_at'] as string),
          );
        for (let i = 1; i < ops.length; i++) {
          expect(Date.parse(ops[i]!['started_at'] as string)).toBeGreaterThanOrEqual(
            Date.parse(ops[i - 1]!['finished_at'] as string),
          );
        }
        const lastFinished = ops.at(-1)!;
        expect(attributes['last_source']?.operation_id).toBe(lastFinished['id']);
        // The value too: the one the last operation's own text set.
        const lastBody = requests[responses.findIndex((r) => r.body['id'] === lastFinished['id'])]!;
        expect(attributes['last_source']?.value).toBe(
          /My last source is ([a-z]+-\d+)\./.exec(lastBody.user_query)![1],
        );
        // Turn counts follow the order the operations ran in.
        expect(ops.map((o) => o['result']['summary']['turn_count'])).toEqual(
          Array.from({ length: 90 }, (_, i) => i + 1),
        );
        // Extractions started early and dropped (the user's lane busy in another process)
        // are the only model calls beyond one per ingest, and few: each process starts one
        // per lane at a time and none for 10 s after it found the lane busy.
        let dropped = 0;
        for (const url of group.urls) {
          const text = await (await fetch(`${url}/metrics`)).text();
          const line = /mnemo_jobs_early_computes_total\{[^}]*outcome="dropped"\} (\d+)/.exec(text);
          dropped += Number(line?.[1] ?? 0);
        }
        expect(llm.requests.length).toBeGreaterThanOrEqual(90);
        expect(llm.requests.length).toBeLessThanOrEqual(90 + dropped);
        expect(dropped).toBeLessThanOrEqual(3 * setup.servers);
      });

      it('stores an event sent by two sources at once once, reporting it added to one and duplicate to the other', async () => {
        const body = {
          user_id: 'event-user',
          user_query: 'On 2024-06-01 I adopted a cat.',
          timeout_ms: 60_000,
        };
        const [a, b] = await Promise.all([
          post(0, '/v1/memory/ingest', { ...body, source: 'mcp' }),
          post(1, '/v1/memory/ingest', { ...body, source: 'extension' }),
        ]);
        const results = [a!, b!].map(
          (r) => r.body['result']['events'] as { added: unknown[]; duplicates: number },
        );
        // One response reports it added and not duplicate, the other the reverse.
        expect(results.map((r) => [r.added.length, r.duplicates]).sort()).toEqual([
          [0, 1],
          [1, 0],
        ]);
        const events = (await get('/v1/users/event-user/events')).body['items'] as unknown[];
        expect(events).toHaveLength(1);
      });

      it('gives one operation to one idempotency key sent to every process at once, and 409 to another body', async () => {
        const body = {
          user_id: 'key-user',
          user_query: 'My pet is a parrot.',
          idempotency_key: 'same-key',
          timeout_ms: 60_000,
        };
        const responses = await Promise.all(
          Array.from({ length: 10 }, (_, i) => post(i, '/v1/memory/ingest', body)),
        );
        expect(responses.every((r) => r.status === 200 && r.body['status'] === 'succeeded')).toBe(
          true,
        );
        expect(new Set(responses.map((r) => r.body['id'])).size).toBe(1);
        const other = await post(1, '/v1/memory/ingest', {
          ...body,
          user_query: 'My pet is a cat.',
        });
        expect(other.status).toBe(409);
        expect(await operationsOf('key-user')).toHaveLength(1);
        const profile = (await get('/v1/users/key-user/profile')).body;
        expect(profile['summary']['turn_count']).toBe(1);
        expect(profile['attributes']['pet']['value']).toBe('a parrot');
      });

      it('fails a run past its timeout after its attempts, truthfully, and writes nothing from it', async () => {
        llm.latencyMs = 10_000; // beyond MNEMO_LLM_TIMEOUT_MS: every attempt times out
        let op: Json;
        try {
          const res = await post(0, '/v1/memory/ingest', {
            user_id: 'slow-user',
            user_query: 'My mood is patient.',
            timeout_ms: 50,
          });
          expect(res.status).toBe(202);
          expect(['pending', 'running']).toContain(res.body['status']);
          op = res.body;
          await eventually(async () => {
            op = (await group.call(1, 'GET', `/v1/operations/${op['id']}`)).body;
            return op['status'] === 'failed';
          }, 60_000);
        } finally {
          llm.latencyMs = LLM_LATENCY_MS;
        }
        expect(op).toMatchObject({
          status: 'failed',
          attempts: 3,
          error: { code: 'timeout' },
        });
        const profile = (await get('/v1/users/slow-user/profile')).body;
        expect(profile['attributes']).toEqual({});
        expect(profile['summary']['turn_count']).toBe(0);
      });

      it('runs 50 users × 20 ingests in parallel across users and in order within each user', async () => {
        const USERS = 50;
        const PER_USER = 20;
        llm.resetPeak();
        for (let n = 0; n < PER_USER; n++) {
          const batch = await Promise.all(
            Array.from({ length: USERS }, (_, user) =>
              post(user + n, '/v1/memory/ingest', {
                user_id: `load-${user}`,
                user_query: `My counter is ${n}.`,
                wait: false,
              }),
            ),
          );
          expect(batch.every((r) => r.status === 202 || r.status === 200)).toBe(true);
        }
        const byUser = new Map<number, Json[]>();
        await eventually(async () => {
          for (let user = 0; user < USERS; user++) {
            if (byUser.has(user)) {
              continue;
            }
            const ops = await operationsOf(`load-${user}`);
            if (ops.length !== PER_USER || ops.some((o) => o['status'] !== 'succeeded')) {
              return false;
            }
            byUser.set(user, ops);
          }
          return true;
        }, 120_000);

        // In order within each user: the n-th accepted operation counted the n-th turn and set
        // the counter the n-th request sent; the last one's value stays.
        for (const [user, ops] of byUser) {
          expect(ops.map((o) => o['result']['summary']['turn_count'])).toEqual(
            Array.from({ length: PER_USER }, (_, n) => n + 1),
          );
          expect(ops.map((o) => o['result']['profile']['set']['counter'])).toEqual(
            Array.from({ length: PER_USER }, (_, n) => String(n)),
          );
          const profile = (await get(`/v1/users/load-${user}/profile`)).body;
          expect(profile['attributes']['counter']['value']).toBe(String(PER_USER - 1));
          expect(profile['summary']['turn_count']).toBe(PER_USER);
        }

        // In parallel across users: at the busiest moment many users' operations were running,
        // by the operations' own times (a user's run one at a time, so these are distinct users).
        const runs = [...byUser.values()]
          .flat()
          .map((o) => [
            Date.parse(o['started_at'] as string),
            Date.parse(o['finished_at'] as string),
          ]);
        const busiest = Math.max(
          ...runs.map(([start]) => runs.filter(([s, f]) => s! <= start! && f! > start!).length),
        );
        expect(busiest).toBeGreaterThanOrEqual(4);
        // And the extractor really worked on many at once, not one after another: the fake LLM
        // saw at least 8 requests in flight (2 × 10 slots on PostgreSQL, 10 on PGlite allow
        // more). One at a time, the 1,000 runs would take 1,000 × 50 ms in a row.
        expect(llm.peakInFlight()).toBeGreaterThanOrEqual(8);
      });
    },
  );
}
