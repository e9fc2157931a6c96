import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { ErrorCode, MnemoError } from '../../src/core/errors.ts';
import { createEngine, type Engine, type Job, type JobSpec } from '../../src/engine/index.ts';
import { savepointScope } from '../../src/store/commit.ts';
import type { Queryable, QueryOptions, Store } from '../../src/store/types.ts';
import { eventually, openEngine } from '../helpers/engine.ts';

const fast = { baseMs: 5, maxMs: 20 };

/** Engine behaviour that must hold on both stores (single process). */
export function engineSuite(kind: 'pglite' | 'postgres'): void {
  describe(`engine (${kind})`, () => {
    let engine: Engine;
    let store: Store;
    let dispose: () => Promise<void>;

    beforeEach(async (ctx) => {
      ({ engine, store, dispose } = await openEngine(kind, `engine:${ctx.task.name}`));
      await store.exec(
        'create table effects (job_id bigint, lane text, n int, at timestamptz default clock_timestamp())',
      );
    });

    afterEach(async () => {
      await dispose();
    });

    const enqueue = (spec: Parameters<Engine['enqueue']>[1]) =>
      store.transaction((tx) => engine.enqueue(tx, spec));
    const waitDone = (id: number, timeoutMs = 20_000) =>
      engine.waitFor('default', id, { timeoutMs });
    /** An apply function recording its job's number in `effects`. */
    const createStoreEffect = () =>
      store.exec(`create function store_effect(p jsonb) returns jsonb language sql as $$
        insert into effects (job_id, n) values ((p->>'job_id')::bigint, (p->>'n')::int)
        returning jsonb_build_object('stored', n) $$`);
    /** What `count()` said each time an enqueue statement was sent (how many computes had begun). */
    const countAtEnqueue = (count: () => number): number[] => {
      const seen: number[] = [];
      const query = store.query.bind(store);
      store.query = ((sql: string, params?: unknown[]) => {
        if (sql.includes('enqueue_jobs(')) {
          seen.push(count());
        }
        return query(sql, params);
      }) as Store['query'];
      return seen;
    };

    it('runs a job through compute and apply and records the result', async () => {
      engine.register<{ x: number }, number>('double', {
        compute: (ctx) => Promise.resolve(ctx.payload.x * 2),
        apply: async (tx, computed, ctx) => {
          await tx.query('insert into effects (job_id, n) values ($1, $2)', [ctx.id, computed]);
          return { doubled: computed };
        },
      });
      await engine.startWorker({ concurrency: 2 });
      const { job } = await enqueue({ kind: 'double', payload: { x: 21 } });
      const done = await waitDone(job.id);
      expect(done).toMatchObject({
        status: 'succeeded',
        attempts: 1,
        result: { doubled: 42 },
        error: null,
      });
      expect(done.startedAt).toBeInstanceOf(Date);
      expect(done.finishedAt).toBeInstanceOf(Date);
      expect(await store.query('select job_id::int as job_id, n from effects')).toEqual([
        { job_id: job.id, n: 42 },
      ]);
    });

    it('applies through a database function in the statement that completes the job; a failing one fails only its job', async () => {
      await store.exec(`create function record_effect(p jsonb) returns jsonb language plpgsql as $$
        begin
          if (p->>'n')::int < 0 then
            raise exception 'n must not be negative';
          end if;
          insert into effects (job_id, n) values ((p->>'job_id')::bigint, (p->>'n')::int);
          return jsonb_build_object('stored', (p->>'n')::int);
        end $$`);
      engine.register<{ x: number }, number>('store_n', {
        maxAttempts: 1,
        compute: (ctx) => Promise.resolve(ctx.payload.x * 2),
        applyFunction: {
          name: 'record_effect',
          argument: (n, ctx) => ({ job_id: ctx.id, n }),
        },
      });
      const enqueueAll = (xs: number[]) =>
        store.transaction((tx) =>
          engine.enqueueMany(
            tx,
            'default',
            xs.map((x) => ({ kind: 'store_n', payload: { x } })),
          ),
        );
      const good = await enqueueAll([1, 2, 4, 5, 6]);
      // Completions in one autocommit statement each: the worker opens no transaction.
      let transactions = 0;
      const transaction = store.transaction.bind(store);
      store.transaction = (fn, options) => {
        transactions += 1;
        return transaction(fn, options);
      };
      await engine.startWorker({ concurrency: 6 });
      const done = await Promise.all(good.map((job) => waitDone(job.id)));
      expect(done.map((j) => [j.status, j.result])).toEqual(
        [1, 2, 4, 5, 6].map((x) => ['succeeded', { stored: 2 * x }]),
      );
      expect(transactions).toBe(0);
      // A failing function fails its job (a SQL error is not retried), with nothing written,
      // and only its job: those completing in the same statement are completed again, each
      // apply on its own.
      const [before, bad, after] = await enqueueAll([7, -3, 8]);
      const failed = await waitDone(bad?.id ?? 0);
      expect(failed).toMatchObject({
        status: 'failed',
        error: { code: 'internal', retryable: false, attempt: 1 },
      });
      expect(failed.error?.message).toContain('n must not be negative');
      for (const job of [before, after]) {
        expect((await waitDone(job?.id ?? 0)).status).toBe('succeeded');
      }
      const rows = await store.query<{ job_id: number; n: number }>(
        'select job_id::int as job_id, n from effects order by job_id',
      );
      expect(rows).toEqual(
        [...good, before, after].map((job, i) => ({
          job_id: job?.id,
          n: 2 * [1, 2, 4, 5, 6, 7, 8][i]!,
        })),
      );
    });

    it('fails at once, and alone, a job whose apply-function argument JSON cannot hold', async () => {
      await store.exec(`create function record_arg(p jsonb) returns jsonb language sql as $$
        insert into effects (job_id) values ((p->>'job_id')::bigint) returning p $$`);
      const argumentOf: Record<string, (id: number) => unknown> = {
        good: (id) => ({ job_id: id }),
        bigint: (id) => ({ job_id: BigInt(id) }), // JSON.stringify throws
        fn: () => () => null, // JSON.stringify gives undefined
      };
      engine.register<{ shape: string }, unknown>('arg_shapes', {
        maxAttempts: 3,
        backoff: fast,
        applyFunction: {
          name: 'record_arg',
          argument: (_computed, ctx) => argumentOf[ctx.payload.shape]?.(ctx.id),
        },
      });
      const jobs = await store.transaction((tx) =>
        engine.enqueueMany(
          tx,
          'default',
          ['good', 'bigint', 'fn'].map((shape) => ({ kind: 'arg_shapes', payload: { shape } })),
        ),
      );
      await engine.startWorker({ concurrency: 3 });
      const [good, bigint, fn] = await Promise.all(jobs.map((job) => waitDone(job.id)));
      expect(good?.status).toBe('succeeded');
      for (const bad of [bigint, fn]) {
        expect(bad).toMatchObject({
          status: 'failed',
          attempts: 1,
          error: { code: 'internal', retryable: false },
        });
        expect(bad?.error?.message).toContain('not JSON');
      }
      expect(await store.query('select job_id::int as job_id from effects')).toEqual([
        { job_id: good?.id },
      ]);
    });

    it('retries a job whose apply function met a passing condition (a lock timeout)', async () => {
      await store.exec(`create function effect_after_timeout(p jsonb) returns jsonb
        language plpgsql as $$
        begin
          if (p->>'attempt')::int = 1 then
            raise exception 'lock timeout' using errcode = 'lock_not_available';
          end if;
          insert into effects (job_id, n) values ((p->>'job_id')::bigint, (p->>'attempt')::int);
          return null;
        end $$`);
      engine.register('timed_out_once', {
        maxAttempts: 3,
        backoff: fast,
        compute: () => Promise.resolve(null),
        applyFunction: {
          name: 'effect_after_timeout',
          argument: (_computed, ctx) => ({ job_id: ctx.id, attempt: ctx.attempt }),
        },
      });
      await engine.startWorker({ concurrency: 2 });
      const { job } = await enqueue({ kind: 'timed_out_once' });
      expect(await waitDone(job.id)).toMatchObject({ status: 'succeeded', attempts: 2 });
      expect(await store.query('select job_id::int as job_id, n from effects')).toEqual([
        { job_id: job.id, n: 2 },
      ]);
    });

    it('enqueues without waiting for the disk when asked, for that statement only; makeDurable writes the job row', async () => {
      engine.register('noop', {});
      const { job } = await engine.enqueue(store, { kind: 'noop', syncCommit: false });
      // set_config(…, true) lasts until the statement's own commit, not beyond.
      const [setting] = await store.query<{ s: string }>(
        `select current_setting('synchronous_commit') as s`,
      );
      expect(setting?.s).toBe('on');
      // A new row version (another xmin): a commit that wrote, which PostgreSQL flushes.
      const version = async () =>
        (
          await store.query<{ v: string }>('select xmin::text as v from jobs where id = $1', [
            job.id,
          ])
        )[0]?.v;
      const before = await version();
      await engine.makeDurable(job);
      expect(await version()).not.toBe(before);
      await expect(engine.makeDurable({ ...job, tenantId: 'other' })).rejects.toMatchObject({
        code: 'not_found',
      });
      // A later job under the same id (its predecessor lost in a crash) is not this one.
      const later = { ...job, createdAt: new Date(job.createdAt.getTime() - 60_000) };
      await expect(engine.makeDurable(later)).rejects.toMatchObject({ code: 'not_found' });
      await engine.startWorker({ concurrency: 1 });
      expect((await waitDone(job.id)).status).toBe('succeeded');
    });

    it('refuses an apply function beside an apply, or with a name that is not a plain identifier', () => {
      const applyFunction = { name: 'f', argument: () => null };
      expect(() =>
        engine.register('both', { applyFunction, apply: () => Promise.resolve(null) }),
      ).toThrow(/applyFunction/);
      expect(() =>
        engine.register('bad_name', { applyFunction: { ...applyFunction, name: 'f(); drop' } }),
      ).toThrow(/applyFunction/);
    });

    it('runs the jobs of a lane one at a time in enqueue order while lanes run in parallel', async () => {
      const open = new Map<string, number>();
      let overlapInLane = false;
      let concurrent = 0;
      let maxConcurrent = 0;
      engine.register<{ lane: string; n: number }, number>('step', {
        async compute(ctx) {
          const lane = ctx.payload.lane;
          if ((open.get(lane) ?? 0) > 0) {
            overlapInLane = true;
          }
          open.set(lane, (open.get(lane) ?? 0) + 1);
          concurrent += 1;
          maxConcurrent = Math.max(maxConcurrent, concurrent);
          await new Promise((r) => setTimeout(r, 2));
          concurrent -= 1;
          open.set(lane, (open.get(lane) ?? 0) - 1);
          return ctx.payload.n;
        },
        apply: async (tx, n, ctx) => {
          await tx.query('insert into effects (job_id, lane, n) values ($1, $2, $3)', [
            ctx.id,
            ctx.lane,
            n,
          ]);
        },
      });
      const lanes = ['a', 'b', 'c', 'd'];
      await store.transaction(async (tx) => {
        for (let n = 0; n < 15; n++) {
          for (const lane of lanes) {
            await engine.enqueue(tx, { kind: 'step', lane, payload: { lane, n } });
          }
        }
      });
      await engine.startWorker({ concurrency: 4 });
      await eventually(async () => {
        const [row] = await store.query<{ n: number }>('select count(*)::int as n from effects');
        return row?.n === 60;
      });
      const rows = await store.query<{ lane: string; n: number }>(
        'select lane, n from effects order by at, job_id',
      );
      for (const lane of lanes) {
        expect(rows.filter((r) => r.lane === lane).map((r) => r.n)).toEqual([...Array(15).keys()]);
      }
      expect(overlapInLane).toBe(false);
      expect(maxConcurrent).toBeGreaterThan(1);
    });

    it('keeps a lane blocked while its head waits to retry, then retries with backoff until it succeeds', async () => {
      let calls = 0;
      engine.register<{ n: number }, number>('flaky', {
        backoff: fast,
        maxAttempts: 5,
        compute(ctx) {
          if (ctx.payload.n === 0) {
            calls += 1;
            if (calls < 3) {
              return Promise.reject(new MnemoError(ErrorCode.Unavailable, `transient ${calls}`));
            }
          }
          return Promise.resolve(ctx.payload.n);
        },
        apply: async (tx, n, ctx) => {
          await tx.query('insert into effects (job_id, lane, n) values ($1, $2, $3)', [
            ctx.id,
            ctx.lane,
            n,
          ]);
        },
      });
      const first = await enqueue({ kind: 'flaky', lane: 'L', payload: { n: 0 } });
      const second = await enqueue({ kind: 'flaky', lane: 'L', payload: { n: 1 } });
      await engine.startWorker({ concurrency: 4 });
      const done = await waitDone(second.job.id);
      expect(done.status).toBe('succeeded');
      const head = await engine.getJob('default', first.job.id);
      expect(head).toMatchObject({ status: 'succeeded', attempts: 3, error: null });
      const order = await store.query<{ n: number }>('select n from effects order by at, job_id');
      expect(order.map((r) => r.n)).toEqual([0, 1]);
    });

    it('fails a job after max_attempts with the last error recorded, and fails non-retryable errors at once', async () => {
      engine.register('always-down', {
        backoff: fast,
        maxAttempts: 3,
        compute: () => Promise.reject(new MnemoError(ErrorCode.Unavailable, 'still down')),
      });
      engine.register('bad-input', {
        maxAttempts: 5,
        compute: () => Promise.reject(new MnemoError(ErrorCode.InvalidRequest, 'cannot parse')),
      });
      await engine.startWorker({ concurrency: 2 });
      const down = await enqueue({ kind: 'always-down' });
      const bad = await enqueue({ kind: 'bad-input' });
      expect(await waitDone(down.job.id)).toMatchObject({
        status: 'failed',
        attempts: 3,
        error: { code: 'unavailable', message: 'still down', retryable: true, attempt: 3 },
      });
      expect(await waitDone(bad.job.id)).toMatchObject({
        status: 'failed',
        attempts: 1,
        error: { code: 'invalid_request', retryable: false },
      });
    });

    it('aborts a run past its timeout, writes nothing from it, and retries or fails as configured', async () => {
      // Each compute ignores its abort signal and returns a result well after its timeout:
      // the late results must not be applied.
      const late: Promise<unknown>[] = [];
      let slowApplies = 0;
      engine.register('slow', {
        timeoutMs: 50,
        maxAttempts: 2,
        backoff: fast,
        compute(ctx) {
          const result = new Promise((resolve) => setTimeout(() => resolve(ctx.attempt), 400));
          late.push(result);
          return result;
        },
        apply: async (tx, attempt, ctx) => {
          slowApplies += 1;
          await tx.query('insert into effects (job_id, n) values ($1, $2)', [ctx.id, attempt]);
        },
      });
      engine.register<{ n: number }, number>('marker', {
        compute: (ctx) => Promise.resolve(ctx.payload.n),
        apply: async (tx, n, ctx) => {
          await tx.query('insert into effects (job_id, n) values ($1, $2)', [ctx.id, n]);
        },
      });
      await engine.startWorker({ concurrency: 1 });
      const { job } = await enqueue({ kind: 'slow' });
      const done = await waitDone(job.id);
      expect(done).toMatchObject({ status: 'failed', attempts: 2, error: { code: 'timeout' } });
      expect(late).toHaveLength(2);
      // Both late results are in; a job the same worker runs after them completes after
      // anything they could still have queued.
      await Promise.all(late);
      const marker = await enqueue({ kind: 'marker', payload: { n: 7 } });
      expect(await waitDone(marker.job.id)).toMatchObject({ status: 'succeeded' });
      expect(await store.query('select job_id, n from effects')).toEqual([
        { job_id: marker.job.id, n: 7 },
      ]);
      expect(slowApplies).toBe(0);
    });

    it('sends a completion again when the database could not be reached for it, and never runs the job twice', async () => {
      await createStoreEffect();
      const computes = new Map<string, number>();
      const count = (kind: string) => computes.set(kind, (computes.get(kind) ?? 0) + 1);
      engine.register<{ x: number }, number>('plain', {
        compute: (ctx) => Promise.resolve(count('plain') && ctx.payload.x),
      });
      engine.register<{ x: number }, number>('with_function', {
        compute: (ctx) => Promise.resolve(count('with_function') && ctx.payload.x),
        applyFunction: { name: 'store_effect', argument: (n, ctx) => ({ job_id: ctx.id, n }) },
      });
      // The first three completion statements fail as a lost connection does.
      let failures = 3;
      const query = store.query.bind(store);
      store.query = ((sql: string, params?: unknown[], options?: QueryOptions) => {
        if (sql.includes('finish_jobs(') && failures > 0) {
          failures -= 1;
          return Promise.reject(new MnemoError(ErrorCode.Unavailable, 'injected: connection lost'));
        }
        return query(sql, params, options);
      }) as Store['query'];
      // A lease far longer than the wait: only a completion sent again can finish in time.
      await engine.startWorker({ concurrency: 2, leaseMs: 120_000 });
      const plain = await enqueue({ kind: 'plain', payload: { x: 3 } });
      const withFunction = await enqueue({ kind: 'with_function', payload: { x: 4 } });
      expect(await waitDone(plain.job.id, 10_000)).toMatchObject({
        status: 'succeeded',
        attempts: 1,
        result: 3,
      });
      expect(await waitDone(withFunction.job.id, 10_000)).toMatchObject({
        status: 'succeeded',
        attempts: 1,
        result: { stored: 4 },
      });
      expect(failures).toBe(0);
      expect(Object.fromEntries(computes)).toEqual({ plain: 1, with_function: 1 });
      expect(await store.query('select job_id::int as job_id, n from effects')).toEqual([
        { job_id: withFunction.job.id, n: 4 },
      ]);
    });

    it('completes once a completion whose reply was lost after its commit, sent again', async () => {
      await createStoreEffect();
      let computes = 0;
      engine.register<{ x: number }, number>('with_function', {
        compute: (ctx) => Promise.resolve(++computes && ctx.payload.x),
        applyFunction: { name: 'store_effect', argument: (n, ctx) => ({ job_id: ctx.id, n }) },
      });
      // The first completion statement commits, and its answer is lost on the way back.
      let lost = 1;
      const query = store.query.bind(store);
      store.query = (async (sql: string, params?: unknown[], options?: QueryOptions) => {
        const rows = await query(sql, params, options);
        if (sql.includes('finish_jobs(') && lost > 0) {
          lost -= 1;
          throw new MnemoError(ErrorCode.Unavailable, 'injected: connection lost after commit');
        }
        return rows;
      }) as Store['query'];
      await engine.startWorker({ concurrency: 1, leaseMs: 120_000 });
      const { job } = await enqueue({ kind: 'with_function', payload: { x: 5 } });
      expect(await waitDone(job.id, 10_000)).toMatchObject({
        status: 'succeeded',
        attempts: 1,
        result: { stored: 5 },
      });
      expect(lost).toBe(0);
      expect(computes).toBe(1);
      expect(await store.query('select job_id::int as job_id, n from effects')).toEqual([
        { job_id: job.id, n: 5 },
      ]);
    });

    it('fails only the job whose apply throws, committing the writes of the others in its batch', async () => {
      engine.register<{ n: number }, number>('write', {
        maxAttempts: 1,
        compute: (ctx) => Promise.resolve(ctx.payload.n),
        apply: async (tx, n, ctx) => {
          await tx.query('insert into effects (job_id, n) values ($1, $2)', [ctx.id, n]);
          if (n === 2) {
            throw new MnemoError(ErrorCode.InvalidRequest, 'apply refused');
          }
          return n;
        },
      });
      const jobs = await store.transaction((tx) =>
        engine.enqueueMany(
          tx,
          'default',
          [1, 2, 3].map((n) => ({ kind: 'write', payload: { n } })),
        ),
      );
      await engine.startWorker({ concurrency: 3 });
      const done = await Promise.all(jobs.map((j) => waitDone(j.id)));
      expect(done.map((j) => j.status)).toEqual(['succeeded', 'failed', 'succeeded']);
      expect(done[1]?.error).toMatchObject({ code: 'invalid_request', message: 'apply refused' });
      const rows = await store.query<{ n: number }>('select n from effects order by n');
      expect(rows.map((r) => r.n)).toEqual([1, 3]);
    });

    it('runs the applies of one completion in the order of their lock keys, then of job ids', async () => {
      // Three computes end in one turn of the event loop, so one completion takes them all;
      // the first job's compute ends last.
      let started = 0;
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      engine.register<{ key: string; late: boolean }, void>('keyed', {
        compute: async (ctx) => {
          started += 1;
          await gate;
          if (ctx.payload.late) {
            await Promise.resolve();
            await Promise.resolve();
          }
        },
        apply: async (tx, _none, ctx) => {
          await tx.query('insert into effects (job_id, lane) values ($1, $2)', [
            ctx.id,
            ctx.payload.key,
          ]);
        },
        lockKey: (ctx) => ctx.payload.key,
      });
      const jobs = await store.transaction((tx) =>
        engine.enqueueMany(tx, 'default', [
          { kind: 'keyed', payload: { key: 'a', late: true } },
          { kind: 'keyed', payload: { key: 'b', late: false } },
          { kind: 'keyed', payload: { key: 'a', late: false } },
        ]),
      );
      await engine.startWorker({ concurrency: 3 });
      await eventually(() => started === 3);
      open();
      await Promise.all(jobs.map((j) => waitDone(j.id)));
      const order = await store.query<{ job_id: number }>(
        'select job_id::int as job_id from effects order by at',
      );
      // Finished b, a (id 3), a (id 1); applied a (1), a (3), b.
      expect(order.map((r) => r.job_id)).toEqual([jobs[0]!.id, jobs[2]!.id, jobs[1]!.id]);
    });

    it('does not run a job before its run_at', async () => {
      engine.register('later', { compute: () => Promise.resolve(Date.now()) });
      await engine.startWorker({ concurrency: 1, pollIntervalMs: 50 });
      const runAt = new Date(Date.now() + 400);
      const { job } = await enqueue({ kind: 'later', runAt });
      const done = await waitDone(job.id);
      expect(done.status).toBe('succeeded');
      expect(done.result as number).toBeGreaterThanOrEqual(runAt.getTime() - 5);
    });

    it('cancels pending jobs only, and a cancelled lane head hands the lane to the next job', async () => {
      engine.register('noop', { compute: () => Promise.resolve('ok') });
      const head = await enqueue({ kind: 'noop', lane: 'L' });
      const next = await enqueue({ kind: 'noop', lane: 'L' });
      const cancelled = await engine.cancel('default', head.job.id);
      expect(cancelled).toMatchObject({ status: 'cancelled', error: { code: 'cancelled' } });
      await engine.startWorker({ concurrency: 1 });
      expect((await waitDone(next.job.id)).status).toBe('succeeded');
      // Finished work stays as it is.
      expect((await engine.cancel('default', next.job.id)).status).toBe('succeeded');
      await expect(engine.cancel('default', 999_999)).rejects.toMatchObject({ code: 'not_found' });
      await expect(engine.cancel('other-tenant', next.job.id)).rejects.toMatchObject({
        code: 'not_found',
      });
    });

    it('releases running jobs on shutdown without counting the attempt', async () => {
      let started = false;
      engine.register('long', {
        compute: async (ctx) => {
          started = true;
          await new Promise((resolve, reject) => {
            const t = setTimeout(resolve, 10_000);
            ctx.signal.addEventListener('abort', () => {
              clearTimeout(t);
              reject(ctx.signal.reason as Error);
            });
          });
        },
      });
      const worker = await engine.startWorker({ concurrency: 1, shutdownGraceMs: 50 });
      const { job } = await enqueue({ kind: 'long' });
      await eventually(() => started);
      await worker.stop();
      const after = await engine.getJob('default', job.id);
      expect(after).toMatchObject({ status: 'pending', attempts: 0 });
      expect(worker.activeCount).toBe(0);
    });

    it('keeps its slots busy by wake-ups alone: 100 lanes × 10 jobs finish with the poll a minute away', async () => {
      engine.register('noop', {});
      const specs: JobSpec[] = [];
      for (let n = 0; n < 10; n++) {
        for (let lane = 0; lane < 100; lane++) {
          specs.push({ kind: 'noop', lane: `L${lane}` });
        }
      }
      await store.transaction((tx) => engine.enqueueMany(tx, 'default', specs));
      // Any lost wake-up would leave work waiting for the poll, i.e. past this test's time.
      await engine.startWorker({ concurrency: 10, pollIntervalMs: 60_000 });
      await eventually(async () => {
        const [row] = await store.query<{ n: number }>(
          `select count(*)::int as n from jobs where status <> 'succeeded'`,
        );
        return row?.n === 0;
      }, 15_000);
    });

    /** Kind `step`: records each job's `n` as it runs; job 0 waits until `open()`. */
    const registerGatedSteps = () => {
      let open: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const ran: number[] = [];
      engine.register<{ n: number }, void>('step', {
        compute: async (ctx) => {
          if (ctx.payload.n === 0) {
            await gate;
          }
          ran.push(ctx.payload.n);
        },
      });
      return { open: () => open(), ran };
    };

    it('claims nothing for jobs enqueued behind a busy lane, and runs them in order once it is free', async () => {
      const { open, ran } = registerGatedSteps();
      const worker = await engine.startWorker({ concurrency: 2, pollIntervalMs: 60_000 });
      // In autocommit, as the HTTP ingest enqueues.
      const head = await engine.enqueue(store, { kind: 'step', lane: 'L', payload: { n: 0 } });
      expect(head.job.status).toBe('running'); // claimed by its enqueue; the gate holds it
      const query = store.query.bind(store);
      let claims = 0;
      store.query = (async (sql: string, params?: unknown[]) => {
        if (sql.includes('claim_jobs(') && params?.[2] === worker.id) {
          claims += 1;
        }
        return query(sql, params);
      }) as Store['query'];
      const behind = [];
      for (let n = 1; n <= 10; n++) {
        behind.push((await engine.enqueue(store, { kind: 'step', lane: 'L', payload: { n } })).job);
        await new Promise((resolve) => setTimeout(resolve, 5)); // room for a claim to go out
      }
      // None of them is claimable while the lane's head runs: a claim for each finds nothing.
      // (At most one, for the free slot the worker may not yet know is idle.)
      expect(claims).toBeLessThanOrEqual(1);
      open();
      for (const job of behind) {
        expect((await waitDone(job.id)).status).toBe('succeeded');
      }
      expect(ran).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    });

    it('claims nothing along with completions once drained, but the lane heads they hand on', async () => {
      const { open, ran } = registerGatedSteps();
      const query = store.query.bind(store);
      let loopClaims = 0;
      const refillLimits: number[] = [];
      store.query = (async (sql: string, params?: unknown[]) => {
        const out = await query(sql, params);
        if (sql.includes('claim_jobs(')) {
          loopClaims += 1;
        } else if (sql.includes('finish_jobs(')) {
          refillLimits.push(params?.[4] as number);
        }
        return out;
      }) as Store['query'];
      await engine.startWorker({ concurrency: 2, pollIntervalMs: 60_000 });
      // Its first look finds nothing: drained.
      await eventually(() => loopClaims === 1);
      // In autocommit, as the HTTP ingest enqueues: the head is claimed by its enqueue, the
      // second waits behind it (no wake-up: it is not claimable).
      const head = await engine.enqueue(store, { kind: 'step', lane: 'L', payload: { n: 0 } });
      expect(head.job.status).toBe('running');
      const behind = await engine.enqueue(store, { kind: 'step', lane: 'L', payload: { n: 1 } });
      expect(behind.job.status).toBe('pending');
      open();
      expect((await waitDone(behind.job.id)).status).toBe('succeeded');
      expect(ran).toEqual([0, 1]);
      // The head's completion took the job it handed on in the same statement (no claim of
      // the loop, no wake-up), and neither completion asked for more than that.
      expect(loopClaims).toBe(1);
      // The waiter may hear of the job (a notification and a read) before the worker's
      // statement returns.
      await eventually(() => refillLimits.length === 2);
      expect(loopClaims).toBe(1);
      expect(refillLimits).toHaveLength(2);
      expect(refillLimits.every((limit) => limit < 0)).toBe(true);
    });

    it('claims a job that comes due unannounced within a few polls while completions keep skipping their refill', async () => {
      const started = new Map<number, number>();
      engine.register<{ n: number }, void>('step', {
        compute: (ctx) => {
          started.set(ctx.payload.n, Date.now());
          return Promise.resolve();
        },
      });
      // Every completion statement takes 60 ms: one is nearly always in flight, and a poll
      // that fires meanwhile finds no free place and waits again.
      const query = store.query.bind(store);
      store.query = (async (sql: string, params?: unknown[]) => {
        if (sql.includes('finish_jobs(')) {
          await new Promise((resolve) => setTimeout(resolve, 60));
        }
        return query(sql, params);
      }) as Store['query'];
      await engine.startWorker({ concurrency: 4, pollIntervalMs: 50 });
      const due = Date.now() + 300;
      await engine.enqueue(store, { kind: 'step', payload: { n: 0 }, runAt: new Date(due) });
      // A steady stream of jobs each claimed by its own enqueue, for 2 s.
      for (let n = 1; Date.now() < due + 1_700; n++) {
        await engine.enqueue(store, { kind: 'step', lane: `s${n}`, payload: { n } });
        await new Promise((resolve) => setTimeout(resolve, 30));
      }
      await eventually(() => started.has(0));
      // Nothing announces it when it comes due: a poll must find it, not the stream's end.
      expect(started.get(0)! - due).toBeLessThan(1_000);
    });

    it('claims ahead while its slots compute, and gives claimed-ahead jobs back on shutdown without counting the attempt', async () => {
      const started: number[] = [];
      engine.register<{ n: number }, void>('long', {
        compute: async (ctx) => {
          started.push(ctx.payload.n);
          await new Promise((resolve, reject) => {
            const t = setTimeout(resolve, 10_000);
            ctx.signal.addEventListener('abort', () => {
              clearTimeout(t);
              reject(ctx.signal.reason as Error);
            });
          });
        },
      });
      const jobs = [];
      for (const n of [1, 2, 3]) {
        jobs.push((await enqueue({ kind: 'long', payload: { n } })).job);
      }
      const worker = await engine.startWorker({ concurrency: 1, prefetch: 1, shutdownGraceMs: 50 });
      await eventually(async () => {
        const rows = await store.query<{ n: number }>(
          `select count(*)::int as n from jobs where status = 'running'`,
        );
        return rows[0]?.n === 2 && started.length === 1;
      });
      // One computes, one waits for the slot (claimed: leased, its run time not started).
      expect(started).toEqual([1]);
      expect((await engine.getJob('default', jobs[2]?.id ?? 0))?.status).toBe('pending');
      await worker.stop();
      expect(started).toEqual([1]);
      for (const job of jobs) {
        expect(await engine.getJob('default', job.id)).toMatchObject({
          status: 'pending',
          attempts: 0,
        });
      }
    });

    it('hands a job enqueued outside a transaction straight to a free slot of this process', async () => {
      let release: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => (release = resolve));
      engine.register('gated', { compute: () => gate });
      engine.register('noop', {});
      const worker = await engine.startWorker({ concurrency: 1, prefetch: 0 });
      // Once a first job has come and gone, its slot is idle.
      await waitDone((await enqueue({ kind: 'noop' })).job.id);
      await eventually(() => worker.idleSlots === 1);
      // The slot is free: the enqueue statement itself claims the job for this worker.
      const first = await engine.enqueue(store, { kind: 'gated', lane: 'L1' });
      expect(first.job).toMatchObject({ status: 'running', attempts: 1 });
      const [row] = await store.query<{ locked_by: string }>(
        'select locked_by from jobs where id = $1',
        [first.job.id],
      );
      expect(row?.locked_by).toBe(worker.id);
      // No slot free now: the next one waits, and so does one behind a running lane head.
      const second = await engine.enqueue(store, { kind: 'gated', lane: 'L2' });
      expect(second.job.status).toBe('pending');
      release();
      for (const job of [first.job, second.job]) {
        expect((await waitDone(job.id)).status).toBe('succeeded');
      }
      // A waiter may read the finished job before the worker has handled its completion's
      // reply (it waits only 100 ms for the hand-over).
      await eventually(() => worker.activeCount === 0);
    });

    it('starts a pure compute while its enqueue is in flight, and drops it when the enqueue does not claim the job', async () => {
      const calls: { x: number; signal: AbortSignal }[] = [];
      let openGate: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => (openGate = resolve));
      engine.register<{ x: number; gated?: boolean }, number>('pure', {
        async pureCompute(ctx) {
          calls.push({ x: ctx.payload.x, signal: ctx.signal });
          if (ctx.payload.gated === true) {
            await gate;
          }
          return ctx.payload.x * 2;
        },
      });
      engine.register('blocker', {});
      const begunAtSend = countAtEnqueue(() => calls.length);
      const worker = await engine.startWorker({ concurrency: 2, prefetch: 0 });
      const early = async (outcome: 'used' | 'dropped') =>
        (await engine.metrics.earlyComputes.get()).values.find(
          (v) => v.labels['outcome'] === outcome,
        )?.value ?? 0;

      // A free slot: the compute begins before the statement that claims its job is sent,
      // and the job runs with its result.
      const once = { kind: 'pure', lane: 'A', payload: { x: 21 }, idempotencyKey: 'once' };
      const used = await engine.enqueue(store, once);
      expect(begunAtSend).toEqual([1]);
      expect(used.job.status).toBe('running');
      expect(await waitDone(used.job.id)).toMatchObject({
        status: 'succeeded',
        attempts: 1,
        result: 42,
      });
      expect(calls).toHaveLength(1);
      expect(await early('used')).toBe(1);
      // Nothing starts for a replayed key, nor for a job the enqueue refuses before its
      // statement.
      expect((await engine.enqueue(store, once)).created).toBe(false);
      await expect(
        engine.enqueue(store, { kind: 'pure', payload: { x: 1 }, maxAttempts: 0 }),
      ).rejects.toMatchObject({ code: 'invalid_request' });
      expect(calls).toHaveLength(1);
      expect(begunAtSend).toEqual([1]);
      // Once the worker is done with the lane's job, the lane's next job starts early too.
      await eventually(() => worker.activeCount === 0);
      const next = await engine.enqueue(store, { kind: 'pure', lane: 'A', payload: { x: 3 } });
      expect(begunAtSend).toEqual([1, 2]);
      expect(await waitDone(next.job.id)).toMatchObject({ status: 'succeeded', result: 6 });
      expect(await early('used')).toBe(2);

      // The lane's head is pending elsewhere (not due for a minute): the statement does not
      // claim the job, so its early compute is aborted and dropped; the job computes afresh
      // once it is the lane's head.
      const blocker = await enqueue({
        kind: 'blocker',
        lane: 'B',
        runAt: new Date(Date.now() + 60_000),
      });
      const queued = await engine.enqueue(store, { kind: 'pure', lane: 'B', payload: { x: 5 } });
      expect(queued.job.status).toBe('pending');
      expect(calls).toHaveLength(3);
      expect(calls[2]?.signal.aborted).toBe(true);
      expect(await early('dropped')).toBe(1);
      // The worker remembers the lane busy: the next job of it starts nothing early.
      const again = await engine.enqueue(store, { kind: 'pure', lane: 'B', payload: { x: 6 } });
      expect(again.job.status).toBe('pending');
      expect(calls).toHaveLength(3);
      await engine.cancel('default', blocker.job.id);
      expect(await waitDone(queued.job.id)).toMatchObject({ status: 'succeeded', result: 10 });
      expect(await waitDone(again.job.id)).toMatchObject({ status: 'succeeded', result: 12 });
      expect(calls).toHaveLength(5);
      expect(calls.slice(3).map((c) => c.signal.aborted)).toEqual([false, false]);

      // Two jobs of a fresh lane enqueued at once: only one of them can be claimed by its
      // statement, so only the first starts early.
      const sent = begunAtSend.length;
      const [d1, d2] = await Promise.all([
        engine.enqueue(store, { kind: 'pure', lane: 'D', payload: { x: 7 } }),
        engine.enqueue(store, { kind: 'pure', lane: 'D', payload: { x: 8 } }),
      ]);
      expect(begunAtSend.slice(sent)).toEqual([6, 6]);
      expect(await waitDone(d1.job.id)).toMatchObject({ status: 'succeeded', result: 14 });
      expect(await waitDone(d2.job.id)).toMatchObject({ status: 'succeeded', result: 16 });
      // On PostgreSQL the second statement may take the lane first: the early compute is then
      // dropped and its job computed again.
      const droppedD = (await early('dropped')) - 1;
      expect((await early('used')) - 2 + droppedD).toBe(1);
      expect(calls).toHaveLength(7 + droppedD);

      // This worker runs the lane's head: a job queued behind it is not computed early.
      const computed = calls.length;
      const counted = { used: await early('used'), dropped: await early('dropped') };
      const head = await engine.enqueue(store, {
        kind: 'pure',
        lane: 'C',
        payload: { x: 1, gated: true },
      });
      expect(head.job.status).toBe('running');
      await eventually(() => worker.idleSlots === 1);
      const behind = await engine.enqueue(store, { kind: 'pure', lane: 'C', payload: { x: 2 } });
      expect(behind.job.status).toBe('pending');
      expect(calls).toHaveLength(computed + 1); // the head's alone
      openGate();
      expect(await waitDone(behind.job.id)).toMatchObject({ status: 'succeeded', result: 4 });
      expect(await early('used')).toBe(counted.used + 1);
      expect(await early('dropped')).toBe(counted.dropped);
    });

    it('drops the early compute of a job refused by its lane limit, and starts none for that lane again soon', async () => {
      const calls: AbortSignal[] = [];
      const strict = createEngine({ store, options: { maxPendingPerLane: 1 } });
      strict.register<{ x: number }, number>('pure', {
        pureCompute: (ctx) => {
          calls.push(ctx.signal);
          return Promise.resolve(ctx.payload.x);
        },
      });
      strict.register('blocker', {});
      await strict.startWorker({ concurrency: 2, prefetch: 0 });
      try {
        // The lane's one place is taken by a job due in a minute.
        await store.transaction((tx) =>
          strict.enqueue(tx, { kind: 'blocker', lane: 'F', runAt: new Date(Date.now() + 60_000) }),
        );
        const refused = () => strict.enqueue(store, { kind: 'pure', lane: 'F', payload: { x: 1 } });
        await expect(refused()).rejects.toMatchObject({ code: 'queue_full' });
        expect(calls).toHaveLength(1);
        expect(calls[0]?.aborted).toBe(true);
        await expect(refused()).rejects.toMatchObject({ code: 'queue_full' });
        expect(calls).toHaveLength(1);
      } finally {
        await strict.stop();
      }
    });

    it('starts no compute early for a kind with a plain compute, nor with earlyCompute off', async () => {
      const begun: string[] = [];
      engine.register<{ x: number }, number>('pure', {
        pureCompute: () => Promise.resolve(begun.push('pure')),
      });
      engine.register('plain', { compute: () => Promise.resolve(begun.push('plain')) });
      const begunAtSend = countAtEnqueue(() => begun.length);
      // Early computes on: a plain compute still starts only once its job is claimed.
      const on = await engine.startWorker({ concurrency: 1, prefetch: 0 });
      const plain = await engine.enqueue(store, { kind: 'plain' });
      expect(plain.job.status).toBe('running');
      expect((await waitDone(plain.job.id)).status).toBe('succeeded');
      await on.stop();
      // Off: a pure compute waits for the claim as well.
      await engine.startWorker({ concurrency: 1, prefetch: 0, earlyCompute: false });
      const pure = await engine.enqueue(store, { kind: 'pure', payload: { x: 1 } });
      expect(pure.job.status).toBe('running'); // claimed at enqueue all the same
      expect((await waitDone(pure.job.id)).status).toBe('succeeded');
      expect(begunAtSend).toEqual([0, 1]);
      expect(begun).toEqual(['plain', 'pure']);
      expect(() =>
        engine.register('both', {
          compute: () => Promise.resolve(1),
          pureCompute: () => Promise.resolve(1),
        }),
      ).toThrow(/compute or pureCompute/);
    });

    it('hands a job its claim brought beyond its free slots back to another worker at once', async () => {
      let openY: () => void = () => undefined;
      const gateY = new Promise<void>((resolve) => (openY = resolve));
      const ranX: string[] = [];
      engine.register('gated', { compute: () => gateY });
      engine.register('x', { compute: () => Promise.resolve(ranX.push('here')) });
      // Another process's worker: its poll is a minute away, only a notification wakes it.
      const other = createEngine({ store, options: { waitPollIntervalMs: 60_000 } });
      other.register('x', { compute: () => Promise.resolve(ranX.push('other')) });
      await other.startWorker({ concurrency: 1, pollIntervalMs: 60_000 });
      try {
        // This worker's first claim is held until X is due and Y has taken its only slot.
        let openClaim: () => void = () => undefined;
        const claimGate = new Promise<void>((resolve) => (openClaim = resolve));
        let held: () => void = () => undefined;
        const claimHeld = new Promise<void>((resolve) => (held = resolve));
        const query = store.query.bind(store);
        let workerId = '';
        store.query = (async (sql: string, params?: unknown[]) => {
          if (sql.includes('claim_jobs(') && params?.[2] === workerId && workerId !== '') {
            held();
            await claimGate;
          }
          return query(sql, params);
        }) as Store['query'];
        const worker = await engine.startWorker({
          concurrency: 1,
          prefetch: 0,
          pollIntervalMs: 60_000,
          workerId: 'held-claims',
        });
        workerId = worker.id; // its start's claim has passed (it found nothing)
        // X is not due yet: the other worker, told of it, finds nothing and sleeps.
        const x = await enqueue({ kind: 'x', runAt: new Date(Date.now() + 300) });
        await new Promise((resolve) => setTimeout(resolve, 400));
        worker.wake(); // a claim of this worker, held
        await claimHeld;
        // An enqueue here takes the idle slot (a claim in flight does not count) …
        const y = await engine.enqueue(store, { kind: 'gated' });
        expect(y.job.status).toBe('running');
        // … and the held claim brings X, which has no place here: handed back.
        openClaim();
        const done = await engine.waitFor('default', x.job.id, { timeoutMs: 10_000 });
        expect(done.status).toBe('succeeded');
        expect(ranX).toEqual(['other']);
        expect(done.attempts).toBe(1); // the attempt of the hand-back is refunded
        openY();
        expect((await waitDone(y.job.id)).status).toBe('succeeded');
      } finally {
        openY();
        await other.stop();
      }
    });

    it('announces a finished job to other processes only when someone there may wait for it', async () => {
      const write = {
        apply: async (tx: Queryable, _computed: unknown, ctx: { id: number }) => {
          await tx.query('insert into effects (job_id) values ($1)', [ctx.id]);
          return null;
        },
      };
      engine.register('write', write);
      // Another process's engine on the same database: its own id, its own waiters.
      const other = createEngine({ store, options: { waitPollIntervalMs: 60_000 } });
      other.register('write', write);
      const announced = new Set<number>();
      const unlisten = await store.listen(`${store.schema}_done`, (payload) => {
        for (const id of payload.split(',')) {
          announced.add(Number(id));
        }
      });
      try {
        await other.startWorker({ concurrency: 2 });
        await Promise.all([engine.prepareWait(), other.prepareWait()]);
        // No worker here: the other engine runs everything.
        const mine = await engine.enqueue(store, { kind: 'write', waiter: 'local' });
        const nobody = await engine.enqueue(store, { kind: 'write', waiter: 'none' });
        const anyone = await engine.enqueue(store, { kind: 'write' });
        const theirs = await other.enqueue(store, { kind: 'write', waiter: 'local' });
        // Its own job is handed over in memory (its poll is a minute away).
        const handed = await other.waitFor('default', theirs.job.id, {
          timeoutMs: 20_000,
          enqueued: theirs.job,
        });
        expect(handed.status).toBe('succeeded');
        for (const { job } of [mine, nobody, anyone]) {
          expect((await waitDone(job.id)).status).toBe('succeeded');
        }
        // Notifications arrive in commit order: once a later job's has come, the others
        // would have too.
        const last = await engine.enqueue(store, { kind: 'write' });
        await eventually(() => announced.has(last.job.id));
        expect(announced.has(mine.job.id)).toBe(true);
        expect(announced.has(anyone.job.id)).toBe(true);
        expect(announced.has(nobody.job.id)).toBe(false);
        expect(announced.has(theirs.job.id)).toBe(false);
      } finally {
        await unlisten();
        await other.stop();
      }
    });

    it('refuses work past the per-lane and overall pending limits with queue_full', async () => {
      await dispose();
      ({ engine, store, dispose } = await openEngine(kind, 'engine:limits', {
        maxPendingPerLane: 3,
        maxPendingTotal: 5,
        pendingCountTtlMs: 0,
      }));
      engine.register('noop', {});
      for (let i = 0; i < 3; i++) {
        await enqueue({ kind: 'noop', lane: 'L' });
      }
      const laneFull = await enqueue({ kind: 'noop', lane: 'L' }).catch((e: unknown) => e);
      expect(laneFull).toMatchObject({ code: 'queue_full', retryable: true, retryAfterMs: 1000 });
      await enqueue({ kind: 'noop', lane: 'M' });
      await enqueue({ kind: 'noop' });
      const totalFull = await enqueue({ kind: 'noop' }).catch((e: unknown) => e);
      expect(totalFull).toMatchObject({ code: 'queue_full' });
      const [row] = await store.query<{ n: number }>('select count(*)::int as n from jobs');
      expect(row?.n).toBe(5);
    });

    it('judges the overall limit on a stale count only to let work in; it refuses on a fresh one', async () => {
      await dispose();
      ({ engine, store, dispose } = await openEngine(kind, 'engine:stale-count', {
        maxPendingTotal: 1,
        pendingCountTtlMs: 50,
      }));
      engine.register('noop', {});
      const settle = () => new Promise((r) => setTimeout(r, 120));
      const a = await enqueue({ kind: 'noop' });
      await settle();
      // The count is stale: it is refreshed in the background, this enqueue goes in.
      const b = await enqueue({ kind: 'noop' });
      await settle(); // the refreshed count (at least 1) is stale again
      await engine.startWorker({ concurrency: 2 });
      for (const { job } of [a, b]) {
        expect((await waitDone(job.id)).status).toBe('succeeded');
      }
      await settle();
      // A stale count says the queue is full; a fresh one says it is empty.
      const c = await enqueue({ kind: 'noop' });
      expect((await waitDone(c.job.id)).status).toBe('succeeded');
    });

    it('returns the existing job for a replayed idempotency key and refuses a different payload', async () => {
      engine.register('noop', {});
      const a = await enqueue({ kind: 'noop', payload: { b: 1, a: [1, 2] }, idempotencyKey: 'k1' });
      const b = await enqueue({ kind: 'noop', payload: { a: [1, 2], b: 1 }, idempotencyKey: 'k1' });
      expect(a.created).toBe(true);
      expect(b).toMatchObject({ created: false, job: { id: a.job.id } });
      const other = await enqueue({ kind: 'noop', payload: { b: 2 }, idempotencyKey: 'k1' }).catch(
        (e: unknown) => e,
      );
      expect(other).toMatchObject({ code: 'idempotency_conflict' });
      const otherTenant = await store.transaction(async (tx) => {
        await tx.query(`insert into tenants (id) values ('t2')`);
        return engine.enqueue(tx, {
          kind: 'noop',
          tenantId: 't2',
          payload: { b: 2 },
          idempotencyKey: 'k1',
        });
      });
      expect(otherTenant.created).toBe(true);
      expect(otherTenant.job.id).not.toBe(a.job.id);
    });

    it('writes no row at all when a batch fails after its parent and some children were written', async () => {
      engine.register('noop', {});
      const err = await store
        .transaction(async (tx) => {
          await engine.enqueueBatch(tx, { kind: 'batch' }, [
            { kind: 'noop', lane: 'u1' },
            { kind: 'noop', lane: 'u1' },
          ]);
          // The failure comes after the parent and its children are in the transaction.
          await tx.query('select 1/0');
        })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'internal' });
      const bad = await store
        .transaction((tx) =>
          engine.enqueueBatch(tx, { kind: 'batch' }, [{ kind: 'noop' }, { kind: 'x'.repeat(300) }]),
        )
        .catch((e: unknown) => e);
      expect(bad).toMatchObject({ code: 'invalid_request' });
      expect(await store.query('select id from jobs')).toEqual([]);
    });

    it('runs onFailure in the completion transaction only when a job fails for good', async () => {
      engine.register<{ final: boolean }, void>('flaky', {
        maxAttempts: 2,
        backoff: { baseMs: 10, maxMs: 10 },
        compute: (ctx) =>
          Promise.reject(
            new MnemoError(
              ctx.payload.final ? ErrorCode.InvalidRequest : ErrorCode.Unavailable,
              'x',
            ),
          ),
        onFailure: async (tx, error, ctx) => {
          await tx.query('insert into effects (job_id, lane) values ($1, $2)', [
            ctx.id,
            `${ctx.attempt}:${error.message}`,
          ]);
        },
      });
      const retried = await enqueue({ kind: 'flaky', payload: { final: false } });
      const final = await enqueue({ kind: 'flaky', payload: { final: true } });
      await engine.startWorker({ concurrency: 2 });
      expect((await waitDone(retried.job.id)).status).toBe('failed');
      expect((await waitDone(final.job.id)).status).toBe('failed');
      // Once per job, on its last attempt: after the retry for the first, at once for the other.
      expect(await store.query('select job_id, lane from effects order by job_id')).toEqual([
        { job_id: retried.job.id, lane: '2:x' },
        { job_id: final.job.id, lane: '1:x' },
      ]);
    });

    it('runs onFailure when the reaper fails a job whose worker stopped on its last attempt', async () => {
      engine.register<unknown, void>('stalled', {
        maxAttempts: 1,
        // Never finishes on its own (stands for a worker that hangs or died).
        compute: (ctx) =>
          new Promise((resolve) => ctx.signal.addEventListener('abort', () => resolve())),
        onFailure: async (tx, error, ctx) => {
          await tx.query('insert into effects (job_id, lane) values ($1, $2)', [
            ctx.id,
            `reaped:${error.message}`,
          ]);
        },
      });
      const { job } = await enqueue({ kind: 'stalled' });
      // This worker takes the job and stops heartbeating; the other one reaps.
      await engine.startWorker({
        concurrency: 1,
        leaseMs: 300,
        heartbeatMs: 60_000,
        reapIntervalMs: 0,
        shutdownGraceMs: 100,
      });
      await eventually(async () => (await engine.getJob('default', job.id))?.status === 'running');
      await engine.startWorker({
        concurrency: 1,
        leaseMs: 300,
        reapIntervalMs: 100,
        shutdownGraceMs: 100,
      });
      expect((await waitDone(job.id)).status).toBe('failed');
      expect(await store.query('select job_id, lane from effects')).toEqual([
        { job_id: job.id, lane: expect.stringMatching(/^reaped:/) },
      ]);
    });

    it('starts nothing when stopped while it was starting', async () => {
      const starting = engine.startWorker({
        heartbeatMs: 20,
        reapIntervalMs: 20,
        pollIntervalMs: 20,
      });
      await engine.stop();
      await starting;
      let queries = 0;
      const query = store.query.bind(store);
      store.query = ((sql: string, params?: unknown[]) => {
        queries += 1;
        return query(sql, params);
      }) as typeof store.query;
      try {
        await new Promise((resolve) => setTimeout(resolve, 200));
        expect(queries).toBe(0); // no heartbeat, reap or claim after its stop
      } finally {
        store.query = query;
      }
    });

    it('runs onCancel in the cancelling transaction for each pending job it cancels', async () => {
      engine.register<{ refuse?: boolean }, void>('undoable', {
        compute: () => Promise.resolve(),
        onCancel: async (tx, ctx) => {
          await tx.query('insert into effects (job_id, lane) values ($1, $2)', [
            ctx.id,
            `cancelled:${ctx.attempt}`,
          ]);
          if (ctx.payload.refuse === true) {
            throw new MnemoError(ErrorCode.Conflict, 'not now');
          }
        },
      });
      const single = await enqueue({ kind: 'undoable' });
      const batch = await store.transaction((tx) =>
        engine.enqueueBatch(tx, { kind: 'batch' }, [
          { kind: 'undoable', lane: 'b', payload: {} },
          { kind: 'undoable', lane: 'b', payload: {} },
        ]),
      );
      const refused = await enqueue({ kind: 'undoable', payload: { refuse: true } });
      expect((await engine.cancel('default', single.job.id)).status).toBe('cancelled');
      expect((await engine.cancel('default', batch.parent.id)).status).toBe('cancelled');
      // A hook that throws rolls its cancel back: the job is pending still, no effect kept.
      await expect(engine.cancel('default', refused.job.id)).rejects.toMatchObject({
        code: 'conflict',
      });
      expect((await engine.getJob('default', refused.job.id))?.status).toBe('pending');
      // Cancelling a cancelled job again runs nothing more.
      await engine.cancel('default', single.job.id);
      const children = await engine.getChildren('default', batch.parent.id);
      expect(await store.query('select job_id, lane from effects order by job_id')).toEqual(
        [single.job.id, ...children.map((c) => c.id)].map((id) => ({
          job_id: id,
          lane: 'cancelled:0',
        })),
      );
    });

    it('derives a batch parent status and counts from mixed child outcomes', async () => {
      engine.register<{ outcome: string }, string>('child', {
        maxAttempts: 1,
        compute: (ctx) =>
          ctx.payload.outcome === 'fail'
            ? Promise.reject(new MnemoError(ErrorCode.InvalidRequest, 'no'))
            : Promise.resolve('ok'),
      });
      const ok = await store.transaction((tx) =>
        engine.enqueueBatch(tx, { kind: 'batch' }, [
          { kind: 'child', lane: 'u', payload: { outcome: 'ok' } },
          { kind: 'child', lane: 'u', payload: { outcome: 'ok' } },
        ]),
      );
      const mixed = await store.transaction((tx) =>
        engine.enqueueBatch(tx, { kind: 'batch' }, [
          { kind: 'child', lane: 'v', payload: { outcome: 'ok' } },
          { kind: 'child', lane: 'v', payload: { outcome: 'fail' } },
          { kind: 'child', lane: 'v', payload: { outcome: 'ok' } },
          { kind: 'child', lane: 'v', payload: { outcome: 'ok' } },
        ]),
      );
      expect(mixed.parent.children).toEqual({
        total: 4,
        pending: 4,
        running: 0,
        succeeded: 0,
        failed: 0,
        cancelled: 0,
      });
      // Cancel the last child before any worker runs.
      await engine.cancel('default', mixed.children[3]?.id ?? 0);
      await engine.startWorker({ concurrency: 3 });
      const okDone = await waitDone(ok.parent.id);
      expect(okDone).toMatchObject({
        status: 'succeeded',
        children: { total: 2, pending: 0, running: 0, succeeded: 2, failed: 0, cancelled: 0 },
      });
      const mixedDone = await waitDone(mixed.parent.id);
      expect(mixedDone).toMatchObject({
        status: 'failed',
        children: { total: 4, pending: 0, running: 0, succeeded: 2, failed: 1, cancelled: 1 },
      });
      const children = await engine.getChildren('default', mixed.parent.id);
      expect(children.map((c: Job) => c.status)).toEqual([
        'succeeded',
        'failed',
        'succeeded',
        'cancelled',
      ]);
    });

    it('deletes finished jobs of a retained kind after their time, a batch with its children, and nothing else', async () => {
      engine.register('noop', {});
      engine.retain('noop', 60_000);
      engine.retain('batch', 60_000);
      engine.retain('recent', 3_600_000);
      engine.register('recent', {});
      const worker = await engine.startWorker({ concurrency: 4, sweepIntervalMs: 0 });
      const old = await engine.enqueue(store, { kind: 'noop', lane: 'a' });
      const batch = await store.transaction((tx) =>
        engine.enqueueBatch(tx, { kind: 'batch' }, [
          { kind: 'noop', lane: 'b' },
          { kind: 'noop', lane: 'b' },
        ]),
      );
      const other = await engine.enqueue(store, { kind: 'kept_for_good' }); // no handler: stays pending
      const recent = await engine.enqueue(store, { kind: 'recent' });
      for (const id of [old.job.id, batch.parent.id, recent.job.id]) {
        expect((await waitDone(id)).status).toBe('succeeded');
      }
      // Not yet due: a sweep leaves everything.
      expect(await worker.sweep()).toBe(0);
      // A pending job of a retained kind, and a finished one of a kind kept for good.
      const waiting = await engine.enqueue(store, {
        kind: 'noop',
        runAt: new Date(Date.now() + 3_600_000),
      });
      await store.query(`update jobs set status = 'succeeded', finished_at = now() where id = $1`, [
        other.job.id,
      ]);
      // Two hours pass for every job but `recent` (kept an hour): it finished 30 minutes ago.
      await store.query(
        `update jobs set finished_at = finished_at - case when id = $1 then interval '30 minutes'
                                                          else interval '2 hours' end`,
        [recent.job.id],
      );
      expect(await worker.sweep()).toBe(2); // `old` and the batch parent (with its 2 children)
      const left = await store.query<{ id: number }>('select id from jobs order by id');
      expect(left.map((r) => r.id)).toEqual([other.job.id, recent.job.id, waiting.job.id]);
      expect(await engine.getJob('default', old.job.id)).toBeUndefined();
      expect(await worker.sweep()).toBe(0);
      const metrics = await engine.metrics.registry.metrics();
      expect(metrics).toContain('mnemo_jobs_swept_total{kind="noop"} 1');
      expect(metrics).toContain('mnemo_jobs_swept_total{kind="batch"} 1');
    });

    it('runs beforeDelete in the deleting transaction with the ids; when it throws, deletes none of its kind and sweeps the other kinds', async () => {
      engine.register('noop', {});
      engine.register('other', {});
      const seen: number[][] = [];
      let refuse = true;
      engine.retain('noop', 60_000, {
        beforeDelete: async (tx, ids) => {
          // The rows are still there: this transaction deletes them afterwards.
          const held = await tx.query<{ id: number }>(
            'select id from jobs where id = any($1::bigint[]) order by id',
            [ids],
          );
          seen.push(held.map((r) => r.id));
          expect(tx.inTransaction).toBe(true);
          if (refuse) {
            throw new Error('not now');
          }
        },
      });
      engine.retain('other', 60_000);
      const worker = await engine.startWorker({ sweepIntervalMs: 0 });
      const jobs = await Promise.all([0, 1].map(() => engine.enqueue(store, { kind: 'noop' })));
      const ids = jobs.map((j) => j.job.id).sort((a, b) => a - b);
      const other = await engine.enqueue(store, { kind: 'other' });
      for (const id of [...ids, other.job.id]) {
        await waitDone(id);
      }
      await store.query(`update jobs set finished_at = finished_at - interval '2 minutes'`);
      // `noop` is retained first: its failure does not keep `other` from being swept.
      expect(await worker.sweep()).toBe(1);
      expect(
        (await store.query<{ id: number }>('select id from jobs order by id')).map((r) => r.id),
      ).toEqual(ids);
      refuse = false;
      expect(await worker.sweep()).toBe(2);
      expect(seen).toEqual([ids, ids]);
      expect((await store.query('select id from jobs')).length).toBe(0);
    });

    it('sweeps on its own every sweepIntervalMs', async () => {
      engine.register('noop', {});
      engine.retain('noop', 1);
      await engine.startWorker({ sweepIntervalMs: 20 });
      const { job } = await engine.enqueue(store, { kind: 'noop' });
      await eventually(async () => (await engine.getJob('default', job.id)) === undefined);
      expect(await engine.metrics.registry.metrics()).toContain(
        'mnemo_jobs_swept_total{kind="noop"} 1',
      );
    });

    it('refuses a retention below one millisecond, and one given after a worker started', async () => {
      expect(() => engine.retain('noop', 0)).toThrow(/retention/);
      expect(() => engine.retain('noop', 1.5)).toThrow(/retention/);
      await engine.startWorker();
      expect(() => engine.retain('noop', 1000)).toThrow(/before starting workers/);
    });

    it('cancels a whole pending batch through its parent', async () => {
      engine.register('noop', {});
      const batch = await store.transaction((tx) =>
        engine.enqueueBatch(tx, { kind: 'batch' }, [{ kind: 'noop', lane: 'z' }, { kind: 'noop' }]),
      );
      const parent = await engine.cancel('default', batch.parent.id);
      expect(parent).toMatchObject({ status: 'cancelled', children: { cancelled: 2, total: 2 } });
    });

    it('enqueues in autocommit as one statement, but a batch only inside a transaction', async () => {
      engine.register('noop', {});
      const first = await engine.enqueue(store, { kind: 'noop', lane: 'L' });
      const second = await engine.enqueue(store, { kind: 'noop', lane: 'L' });
      // Only the lane's first job is its head: the lane lock covered the insert.
      const rows = await store.query<{ id: number; ready: boolean }>(
        'select id, ready from jobs order by id',
      );
      expect(rows).toEqual([
        { id: first.job.id, ready: true },
        { id: second.job.id, ready: false },
      ]);
      await expect(
        engine.enqueueBatch(store, { kind: 'batch' }, [{ kind: 'noop', lane: 'L' }]),
      ).rejects.toMatchObject({
        code: 'internal',
        message: expect.stringContaining('inside store.transaction'),
      });
      expect(await store.query('select id from jobs')).toHaveLength(2);
    });

    it('cancels a batch of 2,000 children and announces every one of them', async () => {
      engine.register('noop', {});
      const children = Array.from({ length: 2000 }, () => ({ kind: 'noop' }));
      const batch = await store.transaction((tx) =>
        engine.enqueueBatch(tx, { kind: 'batch' }, children),
      );
      const parent = await engine.cancel('default', batch.parent.id);
      expect(parent).toMatchObject({ status: 'cancelled', children: { cancelled: 2000 } });
      const waited = await engine.waitFor('default', batch.children[1999]?.id ?? 0, {
        timeoutMs: 1000,
      });
      expect(waited.status).toBe('cancelled');
    });

    it('waitFor returns the job as it stands when the timeout passes first', async () => {
      engine.register('noop', {});
      const { job } = await enqueue({ kind: 'noop' });
      const started = performance.now();
      const waited = await engine.waitFor('default', job.id, { timeoutMs: 100 });
      expect(waited.status).toBe('pending');
      expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    });

    it('exposes Prometheus metrics for jobs by state and outcome', async () => {
      engine.register('noop', {});
      await engine.startWorker({ concurrency: 1 });
      // Due in an hour: pending at the scrape.
      await enqueue({ kind: 'noop', runAt: new Date(Date.now() + 3_600_000) });
      const { job } = await enqueue({ kind: 'noop' });
      await waitDone(job.id);
      // The worker records its metrics right after the commit that waitFor may see first.
      let text = '';
      await eventually(async () => {
        text = await engine.metrics.registry.metrics();
        return text.includes('mnemo_jobs_completed_total{kind="noop",status="succeeded"} 1');
      });
      expect(text).toMatch(/mnemo_jobs_enqueued_total\{kind="noop"\} 2/);
      expect(text).toMatch(/mnemo_jobs_completed_total\{kind="noop",status="succeeded"\} 1/);
      // The gauge counts the backlog; finished jobs are the completion counter's.
      expect(text).toMatch(/mnemo_jobs\{kind="noop",status="pending"\} 1/);
      expect(text).not.toMatch(/mnemo_jobs\{[^}]*status="succeeded"/);
      expect(text).toMatch(/mnemo_job_wait_seconds_count\{kind="noop"\} 1/);
    });

    it("runs afterCommit callbacks after the commit only, drops a rolled-back savepoint's, and refuses to commit a failed transaction", async () => {
      const ran: string[] = [];
      await store.transaction(async (tx) => {
        tx.afterCommit(() => ran.push('outer'));
        const kept = savepointScope(tx);
        await tx.query('savepoint a');
        kept.handle.afterCommit(() => ran.push('kept'));
        await tx.query('release savepoint a');
        kept.keep();
        const dropped = savepointScope(tx);
        await tx.query('savepoint b');
        dropped.handle.afterCommit(() => ran.push('dropped'));
        await tx.query('rollback to savepoint b');
        expect(ran).toEqual([]);
      });
      expect(ran).toEqual(['outer', 'kept']);
      store.afterCommit(() => ran.push('outside'));
      expect(ran).toEqual(['outer', 'kept', 'outside']);
      // A statement that failed and was caught inside: the COMMIT rolls back, and says so.
      await expect(
        store.transaction(async (tx) => {
          tx.afterCommit(() => ran.push('rolled back'));
          await tx.query(`insert into tenants (id) values ('after-commit')`);
          await tx.query('select 1 / 0').catch(() => undefined);
        }),
      ).rejects.toThrow();
      expect(ran).toEqual(['outer', 'kept', 'outside']);
      expect(await store.query(`select id from tenants where id = 'after-commit'`)).toEqual([]);
    });

    it('counts enqueued jobs once their transaction commits, and never those rolled back', async () => {
      engine.register('counted', {});
      // The counter alone: a whole scrape reads the backlog from the store (not from inside
      // a transaction on PGlite's one connection).
      const counted = async () => {
        const metric = engine.metrics.registry.getSingleMetric('mnemo_jobs_enqueued_total');
        const values = (await metric?.get())?.values ?? [];
        return values.find((v) => v.labels['kind'] === 'counted')?.value ?? 0;
      };
      const rollback = new Error('changed my mind');
      await expect(
        store.transaction(async (tx) => {
          await engine.enqueue(tx, { kind: 'counted', payload: { n: 1 } });
          await engine.enqueueMany(tx, 'default', [{ kind: 'counted', payload: { n: 2 } }]);
          await engine.enqueueBatch(tx, { kind: 'counted', payload: {} }, [
            { kind: 'counted', payload: { n: 3 } },
          ]);
          throw rollback;
        }),
      ).rejects.toBe(rollback);
      expect(await counted()).toBe(0);
      await store.transaction(async (tx) => {
        await engine.enqueue(tx, { kind: 'counted', payload: { n: 4 } });
        // Counted after the commit, not before.
        expect(await counted()).toBe(0);
        await engine.enqueueMany(tx, 'default', [
          { kind: 'counted', payload: { n: 5 } },
          { kind: 'counted', payload: { n: 6 } },
        ]);
      });
      expect(await counted()).toBe(3);
      await engine.enqueue(store, { kind: 'counted', payload: { n: 7 } });
      expect(await counted()).toBe(4);
    });
  });
}
