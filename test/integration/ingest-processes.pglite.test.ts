import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ingestSuite } from './ingest-processes.suite.ts';

// PGlite has one connection in one process: this proves the embedded store's pipeline (lanes,
// dedup, turn counts, order), not races between processes, which the PostgreSQL run of the
// same suite does (test/concurrency/ingest.pg.test.ts).
const dir = mkdtempSync(join(tmpdir(), 'mnemo-ingest-'));
ingestSuite({
  name: 'PGlite',
  servers: 1,
  env: () => ({ MNEMO_DATA_DIR: join(dir, 'data') }),
  cleanup: () => Promise.resolve(rmSync(dir, { recursive: true, force: true })),
});
