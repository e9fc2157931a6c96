/**
 * The `mnemo` command line. `runCli(argv)` returns the exit code; run directly, this
 * module executes it with `process.argv`.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import pino from 'pino';

import { createMnemo } from '../app.ts';
import { type Config, type ConfigOverrides, describeConfig, loadConfig } from '../config.ts';
import { coerceError, isMnemoError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { startServer } from '../server/node.ts';
import { createStore } from '../store/index.ts';
import { bundledMigrations, migrate, migrationStatus } from '../store/migrate.ts';
import { ExitCode, exitCodeFor } from './exit-codes.ts';

const HELP = `Usage: mnemo <command> [options]

Commands:
  serve [--no-worker] HTTP API on MNEMO_HOST:MNEMO_PORT (applies migrations; workers in-process)
  worker              run job workers only (applies migrations)
  migrate [--print]   apply pending migrations (--print: show their SQL, apply nothing)
  doctor              print the effective configuration and check the database
  help                show this help

Options (override the environment):
  --database-url URL  PostgreSQL connection string (MNEMO_DATABASE_URL); absent = embedded PGlite
  --data-dir DIR      embedded database directory (MNEMO_DATA_DIR, default ./.mnemo)
  --schema NAME       database schema (MNEMO_DATABASE_SCHEMA, default mnemo)
  --host HOST         listen address (MNEMO_HOST, default 127.0.0.1)
  --port PORT         listen port (MNEMO_PORT, default 8787)
  -h, --help          show this help

Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 database unavailable,
4 database schema does not match this build.
`;

interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
}

const defaultIo: Io = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
};

/** Runs the CLI and resolves to its exit code. Never throws. */
export async function runCli(argv: readonly string[], io: Io = defaultIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        'database-url': { type: 'string' },
        'data-dir': { type: 'string' },
        schema: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        'no-worker': { type: 'boolean' },
        print: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    io.err(`mnemo: ${coerceError(err).message}`);
    io.err('Run `mnemo --help` for usage.');
    return ExitCode.Usage;
  }
  const { values, positionals } = parsed;
  const command = positionals[0] ?? 'help';
  if (values.help === true || command === 'help') {
    io.out(HELP.trimEnd());
    return ExitCode.Ok;
  }
  const overrides: ConfigOverrides = {
    databaseUrl: values['database-url'],
    dataDir: values['data-dir'],
    databaseSchema: values.schema,
    host: values.host,
    port: values.port,
  };
  try {
    const config = loadConfig(process.env, overrides);
    switch (command) {
      case 'migrate':
        return await runMigrate(config, values.print === true, io);
      case 'doctor':
        return await runDoctor(config, io);
      case 'serve':
        return await runServe(config, values['no-worker'] !== true);
      case 'worker':
        return await runWorker(config);
      default:
        io.err(`mnemo: unknown command ${JSON.stringify(command)}`);
        io.err('Run `mnemo --help` for usage.');
        return ExitCode.Usage;
    }
  } catch (err) {
    return reportFailure(err, io);
  }
}

function reportFailure(err: unknown, io: Io): number {
  if (isMnemoError(err)) {
    io.err(`mnemo: ${err.message}`);
    return exitCodeFor(err.code);
  }
  io.err(`mnemo: unexpected error: ${coerceError(err).stack ?? String(err)}`);
  return ExitCode.Failure;
}

async function runMigrate(config: Config, print: boolean, io: Io): Promise<number> {
  if (print) {
    for (const m of bundledMigrations()) {
      io.out(`-- ${String(m.id).padStart(4, '0')}_${m.name}.sql (sha256 ${m.checksum})`);
      io.out(m.sql);
    }
    return ExitCode.Ok;
  }
  const store = await createStore(config);
  try {
    const applied = await migrate(store);
    io.out(
      applied.length === 0 ? 'database is up to date' : `applied migrations ${applied.join(', ')}`,
    );
    return ExitCode.Ok;
  } finally {
    await store.close();
  }
}

async function runDoctor(config: Config, io: Io): Promise<number> {
  io.out('configuration:');
  for (const [name, value] of Object.entries(describeConfig(config))) {
    io.out(`  ${name}=${value === undefined ? '(unset)' : JSON.stringify(value)}`);
  }
  io.out(
    `database: ${config.databaseUrl === undefined ? `embedded PGlite in ${config.dataDir}` : 'PostgreSQL'}`,
  );
  const store = await createStore(config);
  try {
    const [row] = await store.query<{ version: string }>('select version() as version');
    io.out(`  reachable: ${row?.version ?? 'unknown version'}`);
    const status = await migrationStatus(store);
    io.out(`  migrations applied: ${status.applied.length}, pending: ${status.pending.length}`);
    if (status.pending.length > 0) {
      io.out('  run `mnemo migrate` (or start the server) to apply the pending migrations');
    }
    return ExitCode.Ok;
  } finally {
    await store.close();
  }
}

function createLogger(config: Config): Logger {
  return pino({ level: config.logLevel, base: { pid: process.pid } });
}

/** Resolves when the process is asked to stop (SIGINT or SIGTERM, once). */
function stopSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
}

async function runServe(config: Config, withWorker: boolean): Promise<number> {
  const logger = createLogger(config);
  const mnemo = await createMnemo(config, { logger });
  let server;
  try {
    if (withWorker) {
      await mnemo.startWorker();
    }
    server = await startServer(mnemo, { host: config.host, port: config.port, logger });
  } catch (err) {
    // e.g. the port is taken: stop the workers and the pool so the process can exit.
    await mnemo.close();
    throw err;
  }
  logger.info(
    {
      url: server.url,
      database: config.databaseUrl === undefined ? 'pglite' : 'postgres',
      worker: withWorker,
    },
    `Mnemo listening on ${server.url}`,
  );
  const signal = await stopSignal();
  logger.info({ signal }, 'shutting down');
  await server.stop();
  return ExitCode.Ok;
}

async function runWorker(config: Config): Promise<number> {
  const logger = createLogger(config);
  const mnemo = await createMnemo(config, { logger });
  await mnemo.startWorker();
  logger.info({ concurrency: config.workerConcurrency }, 'Mnemo worker running');
  const signal = await stopSignal();
  logger.info({ signal }, 'shutting down');
  await mnemo.close();
  return ExitCode.Ok;
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) {
    return false;
  }
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  process.exitCode = await runCli(process.argv.slice(2));
}
