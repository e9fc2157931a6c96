/**
 * Writes test/schema.sql: the schema the bundled migrations produce, from `pg_dump
 * --schema-only` of a throw-away schema on the test PostgreSQL. `--check` compares instead
 * and exits 1 when the committed snapshot drifted (a migration changed what it creates).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { migrate } from '../src/store/migrate.ts';
import { createPostgresStore } from '../src/store/postgres.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, 'test', 'schema.sql');
const url = process.env['MNEMO_TEST_DATABASE_URL'] ?? 'postgres://root@127.0.0.1:5432/test';
const schema = `schema_dump_${process.pid}`;

const store = createPostgresStore({ url, schema, maxConnections: 1 });
let dump: string;
try {
  await migrate(store);
  dump = execFileSync(
    'pg_dump',
    ['--schema-only', '--no-owner', '--no-privileges', `--schema=${schema}`, url],
    {
      encoding: 'utf8',
    },
  );
} finally {
  await store.exec(`drop schema if exists ${schema} cascade`);
  await store.close();
}

const normalized = `${dump
  .split('\n')
  .filter(
    (line) =>
      !line.startsWith('--') &&
      !/^SET |^SELECT pg_catalog\.set_config|^\\(un)?restrict /.test(line),
  )
  .join('\n')
  .replaceAll(schema, 'mnemo')
  .replace(/\n{3,}/g, '\n\n')
  .trim()}\n`;

if (process.argv.includes('--check')) {
  let committed = '';
  try {
    committed = readFileSync(target, 'utf8');
  } catch {
    // a missing snapshot counts as drift
  }
  if (committed !== normalized) {
    console.error(
      'test/schema.sql differs from what the migrations create: run npm run db:dump and commit it',
    );
    process.exit(1);
  }
  console.log('schema snapshot up to date');
} else {
  writeFileSync(target, normalized);
  console.log(`wrote ${target}`);
}
