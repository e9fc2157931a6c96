/** A graphile-worker process for the engine benchmark, speaking the same messages. */
import { Logger, run, type Runner } from 'graphile-worker';

import { epochMs, onParentMessage, type RunRecord, sendRecordsAndExit, toParent } from './lib.ts';

const url = process.env['BENCH_URL'] ?? '';
const schema = process.env['BENCH_SCHEMA'] ?? '';
const slots = Number(process.env['BENCH_SLOTS'] ?? '10');
const records: RunRecord[] = [];
let runner: Runner | undefined;

await toParent({ type: 'ready', pid: process.pid });
onParentMessage((message) => {
  void (async () => {
    switch (message['type']) {
      case 'go':
        runner = await run({
          connectionString: url,
          schema,
          concurrency: slots,
          noHandleSignals: true,
          pollInterval: 1000,
          logger: new Logger(() => () => undefined),
          taskList: {
            noop: (payload) => {
              const start = epochMs();
              const p = payload as { lane: string; n: number };
              records.push([p.lane, p.n, start, epochMs()]);
              return Promise.resolve();
            },
          },
        });
        await toParent({ type: 'started' });
        break;
      case 'stop':
        await runner?.stop();
        await sendRecordsAndExit(records);
    }
  })();
});
