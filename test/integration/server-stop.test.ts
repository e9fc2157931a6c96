import { setTimeout as sleep } from 'node:timers/promises';

import { afterEach, describe, expect, it } from 'vitest';

import { createMnemo, type Mnemo } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { rulesExtractor } from '../../src/memory/extractors/rules.ts';
import type { Extractor } from '../../src/memory/types.ts';
import { type RunningServer, startServer } from '../../src/server/node.ts';

/** The rules after `ms`, or never: until the attempt is aborted. */
const delayed = (ms: number): Extractor => ({
  name: 'delayed',
  async extract(turn, signal) {
    await sleep(ms, undefined, { signal });
    return rulesExtractor.extract(turn, signal);
  },
  summarize: (messages, signal) => rulesExtractor.summarize(messages, signal),
});

describe('stopping the HTTP server', () => {
  let server: RunningServer | undefined;
  let mnemo: Mnemo | undefined;

  afterEach(async () => {
    await server?.stop();
    server = undefined;
    mnemo = undefined;
  });

  async function start(extractorMs: number, drainMs: number) {
    mnemo = await createMnemo(loadConfig({ MNEMO_DATA_DIR: 'memory://' }), {
      extractor: delayed(extractorMs),
    });
    await mnemo.startWorker({ shutdownGraceMs: 200 });
    server = await startServer(mnemo, {
      host: '127.0.0.1',
      port: 0,
      logger: silentLogger,
      drainMs,
    });
    return server.url;
  }

  const ingest = (url: string, userQuery: string) =>
    fetch(`${url}/v1/memory/ingest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 'u1', user_query: userQuery, timeout_ms: 60_000 }),
    });

  it('lets a request that finishes within the drain answer with its result', async () => {
    const url = await start(300, 10_000);
    const response = ingest(url, 'My city is Oslo.');
    await sleep(100); // accepted and computing
    const stopped = server!.stop();
    const res = await response;
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: 'succeeded' });
    await stopped;
  });

  it('answers a request still waiting at the end of the drain with its operation as it stands (202), long before its timeout', async () => {
    const url = await start(3_600_000, 300);
    const response = ingest(url, 'My city is Oslo.');
    await sleep(100);
    const began = performance.now();
    const stopped = server!.stop();
    const res = await response;
    expect(res.status).toBe(202);
    const operation = (await res.json()) as { id: string; status: string };
    expect(['pending', 'running']).toContain(operation.status);
    await stopped;
    // Far below the request's 60 s: the drain (0.3 s) and the worker's grace (0.2 s).
    expect(performance.now() - began).toBeLessThan(30_000);
  });
});
