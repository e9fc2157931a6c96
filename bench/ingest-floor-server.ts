/**
 * The floor of the ingest benchmark: the least a durable HTTP ingest that waits for its
 * result can do on this machine, with no framework and no Mnemo code on the request path.
 * Per request: `node:http` reads the JSON body; one autocommit INSERT records the operation
 * (committed asynchronously, as Mnemo's waited enqueue is: decision 0007) while the same fake
 * extractor as `ingest-server.ts` (the rules behind a fixed delay of BENCH_EXTRACTOR_MS) runs
 * (as Mnemo's early compute does: docs/engine.md); one autocommit statement writes the turn
 * and the result and finishes the operation (committed synchronously); the answer is the
 * finished operation.
 *
 * It has none of what Mnemo is for — no lanes (two requests of one user run at once), no
 * leases or fences, no dedup, no retries, no idempotency, no validation beyond JSON — so it
 * is a lower bound to compare the overhead phases against in the same run, not a peer.
 * Speaks the protocol of `ingest-server.ts`: one JSON line `{ type: 'ready', url }`,
 * `{ type: 'extractor_stats' }` answered, stops on SIGTERM. PostgreSQL only
 * (MNEMO_DATABASE_URL, MNEMO_DATABASE_SCHEMA).
 */
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';

import { defaultPoolSize } from '../src/config.ts';
import { rulesExtractor } from '../src/memory/extractors/rules.ts';
import { quoteIdent } from '../src/store/quote.ts';
import { onParentMessage, percentile, toParent } from './lib.ts';

const url = process.env['MNEMO_DATABASE_URL'];
const schema = process.env['MNEMO_DATABASE_SCHEMA'];
if (url === undefined || schema === undefined) {
  throw new Error('MNEMO_DATABASE_URL and MNEMO_DATABASE_SCHEMA are required');
}
const delayMs = Number(process.env['BENCH_EXTRACTOR_MS'] ?? '50');

const late: number[] = [];
onParentMessage((message) => {
  if (message['type'] === 'extractor_stats') {
    const sorted = late.splice(0).sort((a, b) => a - b);
    void toParent({
      type: 'extractor_stats',
      calls: sorted.length,
      late_p50_ms: Number(percentile(sorted, 50).toFixed(2)),
      late_p99_ms: Number(percentile(sorted, 99).toFixed(2)),
    });
  }
});

const s = quoteIdent(schema);
const pool = new pg.Pool({
  connectionString: url,
  max: Number(process.env['MNEMO_DATABASE_POOL_SIZE'] ?? defaultPoolSize()), // as Mnemo's
});
// An idle connection dropping must not end the process mid-run: the next query reconnects.
pool.on('error', () => undefined);
await pool.query(`create schema if not exists ${s}`);
await pool.query(`create table if not exists ${s}.operations (
  id bigserial primary key, user_id text not null, payload jsonb not null,
  status text not null default 'running', result jsonb,
  created_at timestamptz not null default now(), finished_at timestamptz)`);
await pool.query(`create table if not exists ${s}.turns (
  id bigserial primary key, operation_id bigint not null, user_id text not null,
  user_query text not null)`);

const begin = {
  name: 'floor_begin',
  text: `with op as (insert into ${s}.operations (user_id, payload) values ($1, $2) returning id)
         select id, set_config('synchronous_commit', 'off', true) from op`,
};
const finish = {
  name: 'floor_finish',
  text: `with turn as (insert into ${s}.turns (operation_id, user_id, user_query)
                       values ($1, $2, $3))
         update ${s}.operations set status = 'succeeded', result = $4, finished_at = now()
          where id = $1 returning id, status, result, created_at, finished_at`,
};

async function ingest(raw: string): Promise<string> {
  const body = JSON.parse(raw) as { user_id: string; user_query: string };
  const extract = async () => {
    const t = performance.now();
    await sleep(delayMs);
    late.push(performance.now() - t - delayMs);
    // The extractor's signature takes an abort signal; the rules never wait on it.
    return rulesExtractor.extract({ userQuery: body.user_query }, AbortSignal.timeout(60_000));
  };
  const [started, found] = await Promise.all([
    pool.query<{ id: string }>({ ...begin, values: [body.user_id, raw] }),
    extract(),
  ]);
  const id = started.rows[0]!.id;
  const done = await pool.query({
    ...finish,
    values: [id, body.user_id, body.user_query, JSON.stringify(found)],
  });
  return JSON.stringify(done.rows[0]);
}

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    ingest(Buffer.concat(chunks).toString('utf8')).then(
      (out) => {
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(out),
        });
        res.end(out);
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(err));
      },
    );
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  const address = server.address() as { port: number };
  process.stdout.write(
    `${JSON.stringify({ type: 'ready', url: `http://127.0.0.1:${address.port}`, pid: process.pid })}\n`,
  );
});
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void pool.end().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
