/**
 * `npm run bench -- abuse`: one API key floods `mnemo serve` (PostgreSQL, its own process)
 * at 10× its rate limit while another tenant sends a steady trickle; reports the other
 * tenant's latency against the same trickle alone, and how the flood was answered. Loopback,
 * bounded by time (2 × 5 s).
 */
import { Agent, request } from 'node:http';

import { createKey } from '../src/keys/keys.ts';
import { migrate } from '../src/store/migrate.ts';
import { createPostgresStore } from '../src/store/postgres.ts';
import { dropSchema } from '../test/helpers/pg.ts';
import { createReporter, percentile, startMnemoServe as startServer } from './lib.ts';

const url =
  process.env['MNEMO_BENCH_DATABASE_URL'] ??
  process.env['MNEMO_TEST_DATABASE_URL'] ??
  'postgres://root@127.0.0.1:5432/test';
const LIMIT = 50; // requests a second per key
const SECONDS = 5;

function get(agent: Agent, target: URL, key: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(target, { agent, headers: { authorization: `Bearer ${key}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends `perSecond` requests a second for SECONDS seconds; latencies (ms) and statuses. */
async function paced(agent: Agent, target: URL, key: string, perSecond: number) {
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  const total = perSecond * SECONDS;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: total }, async (_, i) => {
      const due = t0 + (i * 1000) / perSecond;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, due - performance.now())));
      const t = performance.now();
      const status = await get(agent, target, key);
      latencies.push(performance.now() - t);
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
    }),
  );
  latencies.sort((a, b) => a - b);
  return { latencies, statuses };
}

/** Runs the abuse benchmark. */
export async function runAbuseBench(): Promise<void> {
  const { report, save } = createReporter('abuse');
  const schema = `bench_abuse_${process.pid}`;
  const store = createPostgresStore({ url, schema, maxConnections: 2 });
  await migrate(store);
  const flooder = (await store.transaction((tx) => createKey(tx, 'flooder'))).key;
  const victim = (await store.transaction((tx) => createKey(tx, 'victim'))).key;
  await store.close();
  const server = await startServer({
    MNEMO_DATABASE_URL: url,
    MNEMO_DATABASE_SCHEMA: schema,
    MNEMO_PORT: '0',
    MNEMO_LOG_LEVEL: 'info',
    MNEMO_RATE_LIMIT_PER_S: String(LIMIT),
    MNEMO_RATE_LIMIT_BURST: String(LIMIT),
  });
  // Each client its own connections: the flood must not queue the other in this process.
  const agent = new Agent({ keepAlive: true, maxSockets: 200 });
  const otherAgent = new Agent({ keepAlive: true, maxSockets: 50 });
  try {
    const target = new URL('/v1/users/u/profile', server.url);
    await paced(otherAgent, target, victim, 20); // warm-up
    const alone = await paced(otherAgent, target, victim, 20);
    const [flood, during] = await Promise.all([
      paced(agent, target, flooder, LIMIT * 10),
      paced(otherAgent, target, victim, 20),
    ]);
    report({
      system: 'mnemo',
      store: 'postgres',
      scenario: 'abuse',
      rate_limit_per_s: LIMIT,
      flood_per_s: LIMIT * 10,
      seconds: SECONDS,
      flood_statuses: Object.fromEntries(flood.statuses),
      other_tenant_statuses: Object.fromEntries(during.statuses),
      other_alone_p50_ms: Number(percentile(alone.latencies, 50).toFixed(2)),
      other_alone_p99_ms: Number(percentile(alone.latencies, 99).toFixed(2)),
      other_during_flood_p50_ms: Number(percentile(during.latencies, 50).toFixed(2)),
      other_during_flood_p99_ms: Number(percentile(during.latencies, 99).toFixed(2)),
    });
  } finally {
    agent.destroy();
    otherAgent.destroy();
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.on('exit', resolve));
    await dropSchema(schema);
  }
  process.stderr.write(`results written to ${save()}\n`);
}
