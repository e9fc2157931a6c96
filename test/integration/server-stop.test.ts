import { setTimeout as sleep } from 'node:timers/promises';

import { afterEach, describe, expect, it } from 'vitest';

import { createMnemo } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { rulesExtractor } from '../../src/memory/extractors/rules.ts';
import type { Extractor } from '../../src/memory/types.ts';
import { type RunningServer, startServer } from '../../src/server/node.ts';

/** The rules after `ms` (or until the attempt is aborted); `started` resolves as it begins. */
function delayed(ms: number): { extractor: Extractor; started: Promise<void> } {
  let begin!: () => void;
  const started = new Promise<void>((resolve) => (begin = resolve));
  return {
    started,
    extractor: {
      name: 'delayed',
      async extract(turn, signal) {
        begin();
        await sleep(ms, undefined, { signal });
        return rulesExtractor.extract(turn, signal);
      },
      summarize: (messages, signal) => rulesExtractor.summarize(messages, signal),
    },
  };
}

describe('stopping the HTTP server', () => {
  let server: RunningServer | undefined;

  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  async function start(extractorMs: number, drainMs: number) {
    const slow = delayed(extractorMs);
    const mnemo = await createMnemo(loadConfig({ MNEMO_DATA_DIR: 'memory://' }), {
      extractor: slow.extractor,
    });
    await mnemo.startWorker({ shutdownGraceMs: 200 });
    server = await startServer(mnemo, {
      host: '127.0.0.1',
      port: 0,
      logger: silentLogger,
      drainMs,
    });
    return { url: server.url, started: slow.started };
  }

  const ingest = (url: string, userQuery: string) =>
    fetch(`${url}/v1/memory/ingest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: 'u1', user_query: userQuery, timeout_ms: 60_000 }),
    });

  it('lets a request that finishes within the drain answer with its result', async () => {
    const { url, started } = await start(300, 10_000);
    const response = ingest(url, 'My city is Oslo.');
    await started; // accepted and computing
    const stopped = server!.stop();
    const res = await response;
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: 'succeeded' });
    await stopped;
  });

  it('answers a request still waiting at the end of the drain with its operation as it stands (202), long before its timeout', async () => {
    const { url, started } = await start(3_600_000, 300);
    const response = ingest(url, 'My city is Oslo.');
    await started;
    const began = performance.now();
    const stopped = server!.stop();
    const res = await response;
    // The answer came at the end of the drain (0.3 s), not of the request's 60 s wait.
    expect(performance.now() - began).toBeLessThan(10_000);
    expect(res.status).toBe(202);
    const operation = (await res.json()) as { status: string };
    expect(['pending', 'running']).toContain(operation.status);
    await stopped;
  });
});
