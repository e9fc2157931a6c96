/** Shared pieces of the benchmark scripts: child processes, timing, output. */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const benchDir = dirname(fileURLToPath(import.meta.url));
export const repoRoot = join(benchDir, '..');

/** Wall clock in milliseconds with sub-millisecond resolution, comparable across processes. */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** CPU time (user + system) of a process so far, in ms, from /proc; undefined elsewhere. */
export function processCpuMs(pid: number): number | undefined {
  try {
    // Fields after the command (which may hold spaces, so: after its closing parenthesis).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
  } catch {
    return undefined;
  }
}

/** The kernel's USER_HZ: 100 on Linux on every common architecture. */
const CLOCK_TICKS_PER_S = 100;

/**
 * CPU time of every process of this machine named `postgres` (the server, its backends and
 * background workers) so far, in ms; undefined without /proc. Backends that exit in between
 * take their time with them: measure over a span where the connections stay open.
 */
export function postgresCpuMs(): number | undefined {
  let pids: number[];
  try {
    pids = readdirSync('/proc')
      .filter((name) => /^\d+$/.test(name))
      .map(Number);
  } catch {
    return undefined;
  }
  let total = 0;
  for (const pid of pids) {
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'postgres') {
        total += processCpuMs(pid) ?? 0;
      }
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

/** A child process speaking line-delimited JSON on stdin/stdout. */
export interface Child {
  process: ChildProcess;
  /** Resolves with the next message whose `type` is `type`. */
  next(type: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  send(message: Record<string, unknown>): void;
  exited: Promise<number | null>;
}

/** Starts a TypeScript script of the bench folder as a child process. */
export function startChild(
  script: string,
  env: Record<string, string>,
  nodeArgs: string[] = [],
): Child {
  // BENCH_NODE_ARGS: extra Node flags for every child (e.g. `--cpu-prof --cpu-prof-dir=/tmp/p`).
  const extra = (process.env['BENCH_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '');
  const args = [...extra, ...nodeArgs, '--import', 'tsx', join(benchDir, script)];
  const child = spawn(process.execPath, args, {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const queue: Record<string, unknown>[] = [];
  const waiting: { type: string; resolve: (m: Record<string, unknown>) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      process.stderr.write(`[${script}] ${line}\n`);
      return;
    }
    const i = waiting.findIndex((w) => w.type === message['type']);
    if (i >= 0) {
      waiting.splice(i, 1)[0]?.resolve(message);
    } else {
      queue.push(message);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    process: child,
    send: (message) => child.stdin!.write(`${JSON.stringify(message)}\n`),
    exited,
    next(type, timeoutMs = 600_000) {
      const i = queue.findIndex((m) => m['type'] === type);
      if (i >= 0) {
        return Promise.resolve(queue.splice(i, 1)[0]!);
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`${script}: no ${type} message in time`)),
          timeoutMs,
        );
        waiting.push({
          type,
          resolve: (m) => {
            clearTimeout(timer);
            resolve(m);
          },
        });
        void exited.then((code) =>
          reject(new Error(`${script} exited (${code}) before sending ${type}`)),
        );
      });
    },
  };
}

/** Reads line-delimited JSON messages from stdin. */
export function onParentMessage(handler: (message: Record<string, unknown>) => void): void {
  createInterface({ input: process.stdin }).on('line', (line) => {
    handler(JSON.parse(line) as Record<string, unknown>);
  });
}

/** Sends a message to the parent. */
export function toParent(message: Record<string, unknown>): Promise<void> {
  return new Promise((resolve) =>
    process.stdout.write(`${JSON.stringify(message)}\n`, () => resolve()),
  );
}

/** Hands the run records to the parent through a file (they can be large) and exits. */
export async function sendRecordsAndExit(records: readonly RunRecord[]): Promise<never> {
  const file = join(tmpdir(), `mnemo-bench-records-${process.pid}.json`);
  writeFileSync(file, JSON.stringify(records));
  await toParent({ type: 'records', file });
  process.exit(0);
}

/** Reads the records a child handed over (and deletes the file). */
export function readRecords(message: Record<string, unknown>): RunRecord[] {
  const file = message['file'] as string;
  const records = JSON.parse(readFileSync(file, 'utf8')) as RunRecord[];
  rmSync(file, { force: true });
  return records;
}

/** One run of a handler: which job, when. */
export type RunRecord = [lane: string, n: number, start: number, end: number];

/** The benchmark's no-op handler: records each run in `records`. */
export function recordingNoop(records: RunRecord[]) {
  return {
    compute(ctx: { payload: { lane: string; n: number } }): Promise<void> {
      const start = epochMs();
      records.push([ctx.payload.lane, ctx.payload.n, start, epochMs()]);
      return Promise.resolve();
    },
  };
}

/** Order violations, duplicates and losses of a lane workload, from the handlers' records. */
export function checkRuns(
  records: readonly RunRecord[],
  expected: { lanes: number; perLane: number; laneless: boolean },
): { order_violations: number; duplicates: number; lost: number; lane_overlaps: number } {
  const seen = new Map<string, number>();
  const byLane = new Map<string, RunRecord[]>();
  for (const r of records) {
    const key = `${r[0]}#${r[1]}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    const list = byLane.get(r[0]) ?? [];
    list.push(r);
    byLane.set(r[0], list);
  }
  let duplicates = 0;
  for (const count of seen.values()) {
    duplicates += count - 1;
  }
  let lost = 0;
  for (let l = 0; l < expected.lanes; l++) {
    for (let n = 0; n < expected.perLane; n++) {
      if (!seen.has(`lane-${l}#${n}`)) {
        lost += 1;
      }
    }
  }
  let orderViolations = 0;
  let overlaps = 0;
  if (!expected.laneless) {
    for (const list of byLane.values()) {
      list.sort((a, b) => a[2] - b[2]);
      for (let i = 1; i < list.length; i++) {
        const prev = list[i - 1]!;
        const cur = list[i]!;
        if (cur[1] < prev[1]) {
          orderViolations += 1;
        }
        if (cur[2] < prev[3]) {
          overlaps += 1;
        }
      }
    }
  }
  return { order_violations: orderViolations, duplicates, lost, lane_overlaps: overlaps };
}

/** Prints a result line and remembers it for the results file. */
export function createReporter(name: string): {
  report: (line: object) => void;
  save: () => string;
} {
  const lines: object[] = [];
  return {
    report(line) {
      lines.push(line);
      process.stdout.write(`${JSON.stringify(line)}\n`);
    },
    save() {
      const dir = join(benchDir, 'results');
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
      writeFileSync(file, `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
      return file;
    },
  };
}

/** Percentile of sorted numbers. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) {
    return Number.NaN;
  }
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Starts `mnemo serve` from the sources with `env`; resolves with its URL once it listens. */
export function startMnemoServe(
  env: Record<string, string>,
): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'serve'], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const entry = JSON.parse(line) as { url?: string; msg?: string };
        if (entry.url !== undefined && entry.msg?.startsWith('Mnemo listening') === true) {
          resolve({ url: entry.url, child });
        }
      } catch {
        // not a log line
      }
    });
    child.on('exit', (code) => reject(new Error(`mnemo serve exited (${code})`)));
  });
}
