/**
 * Benchmarks: `npm run bench -- <name> [parts]`. Each prints JSON lines to stdout and writes
 * them to bench/results/. Bounded in count and time; loopback services only.
 */
import { runAbuseBench } from './abuse.ts';
import { runEngineBench } from './engine.ts';
import { runIngestBench } from './ingest.ts';
import { runSyncBench } from './sync.ts';
import { runTraceBench } from './trace.ts';

const [name, parts] = process.argv.slice(2);
switch (name) {
  case 'engine':
    await runEngineBench(parts);
    break;
  case 'ingest':
    await runIngestBench(parts);
    break;
  case 'abuse':
    await runAbuseBench();
    break;
  case 'sync':
    await runSyncBench();
    break;
  case 'trace':
    await runTraceBench();
    break;
  default:
    process.stderr.write(
      'usage: npm run bench -- engine [throughput,latency,memory] | ingest [postgres,floor,postgres-split,pglite] | sync | trace | abuse\n',
    );
    process.exitCode = 2;
}
