/**
 * `npm run bench -- trace`: where one waited ingest's time goes, step by step. One Mnemo in
 * this process on a fresh PostgreSQL schema, the rules extractor behind a fixed 50 ms delay,
 * one client sending 110 requests one after another (the first 10 warm up). Every `pg` query
 * is timed (by wrapping `pg.Client.prototype.query`), and the request's arrival, the
 * extractor's start and end and the response's last write are marked. Prints the median of
 * each step in ms: the client's request reaching the server, HTTP and validation up to the
 * extractor's start (and the enqueue, when the extractor does not start early), its timer's
 * lateness, the rules, up to the completion, the completion, up to the response's last
 * write, and the client getting it; then the enqueue on its own. Last, three requests each
 * after 12 s without traffic: their overheads as they came.
 *
 * What PostgreSQL spends inside each statement needs `pg_stat_statements` loaded in the
 * server (docs/benchmarks.md, "One request's time"). BENCH_TRACE_PROFILE=<file> writes a CPU
 * profile of the traced requests.
 */
import { writeFileSync } from 'node:fs';
import { Agent, request, Server } from 'node:http';
import { Session } from 'node:inspector';
import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';

import { dropSchema } from '../test/helpers/pg.ts';
import { createReporter, percentile } from './lib.ts';

const url = process.env['MNEMO_BENCH_DATABASE_URL'] ?? 'postgres://root@127.0.0.1:5432/test';
const L = 50;
const WARM_UP = 10;
const REQUESTS = 100;
/** Longer than a pool's default idle timeout (pg-pool: 10 s). */
const IDLE_MS = 12_000;
const IDLE_ROUNDS = 3;

type Mark = { at: number; what: string };
let marks: Mark[] = [];
const mark = (what: string) => marks.push({ at: performance.now(), what });

/** Marks every query's send and answer (callback and promise forms alike). */
function traceQueries(): void {
  type QueryFn = (this: unknown, ...args: unknown[]) => unknown;
  const proto = pg.Client.prototype as unknown as { query: QueryFn };
  const original = proto.query;
  proto.query = function (this: unknown, ...args: unknown[]) {
    mark('query');
    const last = args[args.length - 1];
    if (typeof last === 'function') {
      args[args.length - 1] = (...result: unknown[]) => {
        mark('answer');
        return (last as (...a: unknown[]) => unknown)(...result);
      };
      return original.apply(this, args);
    }
    const out = original.apply(this, args);
    return out instanceof Promise ? out.finally(() => mark('answer')) : out;
  };
}

/** Marks each request's arrival and its response's last write. */
function traceServer(): void {
  type EmitFn = (this: Server, event: string, ...args: unknown[]) => boolean;
  const proto = Server.prototype as unknown as { emit: EmitFn };
  const original = proto.emit;
  proto.emit = function (this: Server, event: string, ...args: unknown[]) {
    if (event === 'request') {
      mark('arrived');
      (args[1] as { on: (e: string, f: () => void) => void }).on('finish', () => mark('sent'));
    }
    return original.call(this, event, ...args);
  };
}

/**
 * The steps of one request from its marks, [name, ms] in order, or undefined if incomplete:
 * the critical path (whose steps add up to the request's time), then the enqueue, which
 * overlaps the extractor's delay when the extractor starts early (docs/engine.md) and is
 * part of `http_to_extractor` when it does not.
 */
function steps(start: number, end: number, list: readonly Mark[]): [string, number][] | undefined {
  const at = (what: string, after: number) =>
    list.find((m) => m.what === what && m.at >= after)?.at;
  const arrived = at('arrived', start);
  const extracting = arrived === undefined ? undefined : at('extract', arrived);
  const timer = extracting === undefined ? undefined : at('timer', extracting);
  const extracted = timer === undefined ? undefined : at('extracted', timer);
  const complete = extracted === undefined ? undefined : at('query', extracted);
  const completed = complete === undefined ? undefined : at('answer', complete);
  const sent = completed === undefined ? undefined : at('sent', completed);
  const enqueue = arrived === undefined ? undefined : at('query', arrived);
  const enqueued = enqueue === undefined ? undefined : at('answer', enqueue);
  const path = [start, arrived, extracting, timer, extracted, complete, completed, sent, end];
  if ([...path, enqueue, enqueued].some((p) => p === undefined)) {
    return undefined;
  }
  const t = path as number[];
  const names = [
    'to_server',
    'http_to_extractor',
    'extractor_late',
    'rules',
    'to_completion',
    'completion',
    'to_response_sent',
    'to_client',
  ];
  return [
    ...names.map((name, i): [string, number] => [
      name,
      t[i + 1]! - t[i]! - (name === 'extractor_late' ? L : 0),
    ]),
    ['enqueue', enqueued! - enqueue!],
  ];
}

/**
 * BENCH_TRACE_PROFILE=<file>: a CPU profile of this process (server, worker and client)
 * over the traced requests alone, sampled every 50 µs, written as a `.cpuprofile`.
 */
function cpuProfiler(file: string): { start(): Promise<void>; stop(): Promise<void> } {
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) =>
      session.post(method, params, (err, result) => (err ? reject(err) : resolve(result))),
    );
  return {
    async start() {
      await post('Profiler.enable');
      await post('Profiler.setSamplingInterval', { interval: 50 });
      await post('Profiler.start');
    },
    async stop() {
      const { profile } = (await post('Profiler.stop')) as { profile: unknown };
      writeFileSync(file, JSON.stringify(profile));
      session.disconnect();
    },
  };
}

export async function runTraceBench(): Promise<void> {
  traceQueries();
  traceServer();
  const { createMnemo } = await import('../src/app.ts');
  const { loadConfig } = await import('../src/config.ts');
  const { silentLogger } = await import('../src/core/logger.ts');
  const { rulesExtractor } = await import('../src/memory/extractors/rules.ts');
  const { startServer } = await import('../src/server/node.ts');
  const schema = `bench_trace_${process.pid}`;
  const mnemo = await createMnemo(
    loadConfig({
      MNEMO_DATABASE_URL: url,
      MNEMO_DATABASE_SCHEMA: schema,
      MNEMO_LOG_LEVEL: 'silent',
    }),
    {
      extractor: {
        name: 'bench-traced-rules',
        async extract(turn, signal) {
          mark('extract');
          await sleep(L, undefined, { signal });
          mark('timer');
          const found = await rulesExtractor.extract(turn, signal);
          mark('extracted');
          return found;
        },
        summarize: (messages, signal) => rulesExtractor.summarize(messages, signal),
      },
    },
  );
  await mnemo.startWorker();
  const server = await startServer(mnemo, { host: '127.0.0.1', port: 0, logger: silentLogger });
  const agent = new Agent({ keepAlive: true });
  const target = new URL('/v1/memory/ingest', server.url);
  const post = (n: number) =>
    new Promise<void>((resolve, reject) => {
      const body = JSON.stringify({
        user_id: 'traced',
        source: 'sdk',
        user_query: `My sdk note ${n} is saved. I like item ${n}.`,
      });
      const req = request(
        target,
        {
          method: 'POST',
          agent,
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
          },
        },
        (res) => {
          res.resume();
          res.on('end', () =>
            res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`)),
          );
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const profileFile = process.env['BENCH_TRACE_PROFILE'];
  const profiler = profileFile === undefined ? undefined : cpuProfiler(profileFile);
  const samples = new Map<string, number[]>();
  const afterIdle: number[] = [];
  let complete = 0;
  try {
    for (let n = 0; n < WARM_UP + REQUESTS; n++) {
      if (n === WARM_UP) {
        await profiler?.start();
      }
      marks = [];
      const start = performance.now();
      await post(n);
      const end = performance.now();
      await sleep(5); // the worker's bookkeeping after the answer, outside the next request
      const found = n < WARM_UP ? undefined : steps(start, end, marks);
      if (found !== undefined) {
        complete += 1;
        for (const [name, ms] of [...found, ['overhead', end - start - L] as [string, number]]) {
          samples.set(name, [...(samples.get(name) ?? []), ms]);
        }
      }
    }
    await profiler?.stop();
    // A quiet spell: the same request after IDLE_MS without traffic, IDLE_ROUNDS times.
    for (let n = 0; n < IDLE_ROUNDS; n++) {
      await sleep(IDLE_MS);
      const start = performance.now();
      await post(WARM_UP + REQUESTS + n);
      afterIdle.push(performance.now() - start - L);
    }
  } finally {
    agent.destroy();
    await server.stop();
    await dropSchema(schema);
  }
  const { report, save } = createReporter('trace');
  const medians = Object.fromEntries(
    [...samples].map(([name, list]) => [
      `${name}_p50_ms`,
      Number(
        percentile(
          [...list].sort((a, b) => a - b),
          50,
        ).toFixed(3),
      ),
    ]),
  );
  report({
    system: 'mnemo',
    store: 'postgres',
    scenario: 'one_request_traced',
    extractor_latency_ms: L,
    requests: REQUESTS,
    traced: complete,
    ...medians,
    idle_ms: IDLE_MS,
    // Each request's overhead after the quiet spell (the first one may also meet the
    // fresh tables' first autovacuum, which makes every plan again).
    after_idle_overhead_ms: afterIdle.map((ms) => Number(ms.toFixed(3))),
  });
  process.stderr.write(`results: ${save()}\n`);
}
