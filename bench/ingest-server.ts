/**
 * A Mnemo process for the ingest benchmark: the configuration of the environment, as
 * `mnemo serve` / `mnemo worker` would read it, with the rules extractor behind a fixed
 * delay of BENCH_EXTRACTOR_MS standing in for an LLM. BENCH_ROLE: `serve` (HTTP and
 * workers), `http` (HTTP only) or `worker`. Prints one JSON line `{ type: 'ready', url }`,
 * answers `{ type: 'extractor_stats' }` with how late the fake's timer fired since the last
 * such question, stops on SIGTERM.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { createMnemo } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { rulesExtractor } from '../src/memory/extractors/rules.ts';
import type { Extractor } from '../src/memory/types.ts';
import { startServer } from '../src/server/node.ts';
import { onParentMessage, percentile, toParent } from './lib.ts';

const delayMs = Number(process.env['BENCH_EXTRACTOR_MS'] ?? '50');
const role = process.env['BENCH_ROLE'] ?? 'serve';

// How late the fake's timer fired (ms past BENCH_EXTRACTOR_MS): the part of a request's
// overhead that is this process's event loop, not Mnemo's coordination.
let late: number[] = [];
onParentMessage((message) => {
  if (message['type'] === 'extractor_stats') {
    const sorted = late.sort((a, b) => a - b);
    late = [];
    void toParent({
      type: 'extractor_stats',
      calls: sorted.length,
      late_p50_ms: Number(percentile(sorted, 50).toFixed(2)),
      late_p99_ms: Number(percentile(sorted, 99).toFixed(2)),
    });
  }
});

const delayed: Extractor = {
  name: 'bench-delayed-rules',
  async extract(turn, signal) {
    const start = performance.now();
    await sleep(delayMs, undefined, { signal });
    late.push(performance.now() - start - delayMs);
    return rulesExtractor.extract(turn, signal);
  },
  async summarize(messages, signal) {
    await sleep(delayMs, undefined, { signal });
    return rulesExtractor.summarize(messages, signal);
  },
};

const config = loadConfig(process.env);
const mnemo = await createMnemo(config, { extractor: delayed });
if (role !== 'http') {
  await mnemo.startWorker();
}
let stop: () => Promise<void> = () => mnemo.close();
let url: string | null = null;
if (role !== 'worker') {
  const { silentLogger } = await import('../src/core/logger.ts');
  const server = await startServer(mnemo, { host: '127.0.0.1', port: 0, logger: silentLogger });
  url = server.url;
  stop = () => server.stop();
}
process.stdout.write(`${JSON.stringify({ type: 'ready', url, pid: process.pid })}\n`);
process.once('SIGTERM', () => {
  void stop().then(() => process.exit(0));
});
