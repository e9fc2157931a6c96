/**
 * A Mnemo worker process for the engine benchmark. Messages (JSON lines): parent → `go`,
 * `measure`, `stop`; child → `ready`, `heap`, `records`.
 */
import { createEngine } from '../src/engine/index.ts';
import { createPostgresStore } from '../src/store/postgres.ts';
import {
  onParentMessage,
  recordingNoop,
  type RunRecord,
  sendRecordsAndExit,
  toParent,
} from './lib.ts';

const url = process.env['BENCH_URL'] ?? '';
const schema = process.env['BENCH_SCHEMA'] ?? '';
const slots = Number(process.env['BENCH_SLOTS'] ?? '10');

const store = createPostgresStore({ url, schema, maxConnections: 4 });
const engine = createEngine({ store });
const records: RunRecord[] = [];
engine.register<{ lane: string; n: number }, void>('noop', recordingNoop(records));

function heapUsed(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3; i++) {
    gc?.();
  }
  return process.memoryUsage().heapUsed;
}

await store.query('select 1');
await toParent({ type: 'ready', pid: process.pid });
onParentMessage((message) => {
  void (async () => {
    switch (message['type']) {
      case 'go':
        await engine.startWorker({ concurrency: slots });
        await toParent({ type: 'started', heap: heapUsed() });
        break;
      case 'measure':
        records.length = 0;
        await toParent({ type: 'heap', heap: heapUsed() });
        break;
      case 'stop':
        await engine.stop();
        await store.close();
        await sendRecordsAndExit(records);
    }
  })();
});
