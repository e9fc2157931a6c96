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
import { coerceError, ErrorCode, isMnemoError, MnemoError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { createKey, listKeys, revokeKey } from '../keys/keys.ts';
import { isLoopback, startServer } from '../server/node.ts';
import { createStore } from '../store/index.ts';
import { assertMigrated, bundledMigrations, migrate, migrationStatus } from '../store/migrate.ts';
import { ExitCode, exitCodeFor } from './exit-codes.ts';

const HELP = `Usage: mnemo <command> [options]

Commands:
  serve [--no-worker] HTTP API on MNEMO_HOST:MNEMO_PORT (applies migrations; workers in-process)
  worker              run job workers only (applies migrations)
  migrate [--print]   apply pending migrations (--print: show their SQL, apply nothing)
  keys create --tenant T [--name N]
                      create an API key for tenant T (shown once; store it)
  keys list           list API keys (never their secrets)
  keys revoke ID      revoke an API key
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
        tenant: { type: 'string' },
        name: { type: 'string' },
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
      case 'keys':
        return await runKeys(config, positionals.slice(1), values.tenant, values.name, io);
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
  const sys = err as NodeJS.ErrnoException | null | undefined;
  if (sys?.syscall === 'listen') {
    // The port is taken (another server?) or not ours to take: one line, no stack.
    io.err(`mnemo: cannot listen: ${sys.message}`);
    return ExitCode.Failure;
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
  return pino({
    level: config.logLevel,
    base: { pid: process.pid },
    // Belt and braces: Mnemo logs no headers, keys or settings' secrets; should a future line
    // carry one of these fields, it is censored.
    redact: {
      paths: [
        'authorization',
        '*.authorization',
        'headers.authorization',
        '*.headers.authorization',
        'key',
        '*.key',
        'apiKey',
        '*.apiKey',
        'llmApiKey',
        'sttApiKey',
        'metricsToken',
        '*.llmApiKey',
        '*.sttApiKey',
        '*.metricsToken',
      ],
      censor: '[redacted]',
    },
  });
}

async function runKeys(
  config: Config,
  args: readonly string[],
  tenant: string | undefined,
  name: string | undefined,
  io: Io,
): Promise<number> {
  const [action, id] = args;
  if (action !== 'create' && action !== 'list' && action !== 'revoke') {
    io.err('usage: mnemo keys create --tenant T [--name N] | keys list | keys revoke ID');
    return ExitCode.Usage;
  }
  if ((action === 'create' && tenant === undefined) || (action === 'revoke' && id === undefined)) {
    io.err(
      action === 'create' ? 'mnemo: keys create needs --tenant' : 'mnemo: keys revoke needs an ID',
    );
    return ExitCode.Usage;
  }
  const store = await createStore(config);
  try {
    await (config.autoMigrate ? migrate(store) : assertMigrated(store));
    if (action === 'create') {
      const created = await store.transaction((tx) => createKey(tx, tenant ?? '', name));
      io.out(created.key);
      io.err(
        `created ${created.id} for tenant ${created.tenant_id}; the key above is shown only once`,
      );
    } else if (action === 'list') {
      const keys = await listKeys(store);
      if (keys.length === 0) {
        io.out('no API keys: the server serves tenant "default" on loopback only');
      }
      for (const k of keys) {
        io.out(
          `${k.id}\ttenant=${k.tenant_id}\tname=${k.name ?? ''}\tcreated=${k.created_at}\t${k.revoked_at === null ? 'active' : `revoked=${k.revoked_at}`}`,
        );
      }
    } else {
      await revokeKey(store, id ?? '');
      io.out(`revoked ${id}`);
    }
    return ExitCode.Ok;
  } finally {
    await store.close();
  }
}

/** Resolves when the process is asked to stop (SIGINT or SIGTERM, once). */
function stopSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
}

/**
 * Runs a graceful stop, but exits the process (code 1) if it has not finished within
 * `MNEMO_SHUTDOWN_TIMEOUT_MS`: a database that stops answering would otherwise hold it for
 * good (its statements and its pool's `end` wait on sockets nobody closes). Jobs then still
 * held come back to others when their leases expire; a PGlite lock left behind is taken
 * over at the next start (its pid is gone).
 */
async function stopWithin(config: Config, logger: Logger, stop: () => Promise<void>) {
  const timer = setTimeout(() => {
    logger.error(
      { timeout_ms: config.shutdownTimeoutMs },
      `shutdown did not finish within ${config.shutdownTimeoutMs} ms (MNEMO_SHUTDOWN_TIMEOUT_MS); exiting`,
    );
    process.exit(ExitCode.Failure);
  }, config.shutdownTimeoutMs);
  timer.unref();
  try {
    await stop();
  } finally {
    clearTimeout(timer);
  }
}

async function runServe(config: Config, withWorker: boolean): Promise<number> {
  const logger = createLogger(config);
  const mnemo = await createMnemo(config, { logger });
  let server;
  try {
    if (!isLoopback(config.host) && !(await mnemo.auth.keysExist())) {
      throw new MnemoError(
        ErrorCode.InvalidConfig,
        `refusing to listen on ${config.host} without API keys: every request would be served ` +
          'as tenant "default" to anyone who can reach it. Create a key (mnemo keys create ' +
          '--tenant T) or listen on 127.0.0.1.',
        { details: { variable: 'MNEMO_HOST' } },
      );
    }
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
  await stopWithin(config, logger, () => server.stop());
  return ExitCode.Ok;
}

async function runWorker(config: Config): Promise<number> {
  const logger = createLogger(config);
  const mnemo = await createMnemo(config, { logger });
  await mnemo.startWorker();
  logger.info({ concurrency: config.workerConcurrency }, 'Mnemo worker running');
  const signal = await stopSignal();
  logger.info({ signal }, 'shutting down');
  await stopWithin(config, logger, () => mnemo.close());
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
