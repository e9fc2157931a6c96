/**
 * Mnemo's configuration: the only module that reads the environment. Every setting is
 * validated with zod; a bad value is an `invalid_config` error naming the variable.
 */
import { availableParallelism } from 'node:os';

import { z } from 'zod';

import { ErrorCode, MnemoError } from './core/errors.ts';

const intFrom = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

const postgresUrl = z
  .string()
  .trim()
  .refine((v) => /^postgres(ql)?:\/\//.test(v) && URL.canParse(v), {
    message: 'must be a postgres:// or postgresql:// URL',
  });

/** `true` or `false`. */
const flag = (byDefault: boolean) =>
  z
    .enum(['true', 'false'], { message: 'must be true or false' })
    .default(byDefault ? 'true' : 'false')
    .transform((v) => v === 'true');

/** An http(s) URL (a model endpoint's base). */
const httpUrl = z
  .string()
  .trim()
  .refine((v) => /^https?:\/\//.test(v) && URL.canParse(v), { message: 'must be an http(s) URL' });

/**
 * PostgreSQL connections per process by default: twice the CPUs Node may use, plus two, at most
 * 10 (6 on two CPUs). Beyond what the cores can run, more statements at once only share them and
 * finish later together; the two spare ones cover statements waiting on a lock or the disk
 * (docs/decisions/0011).
 */
export function defaultPoolSize(cpus = availableParallelism()): number {
  return Math.min(10, 2 * cpus + 2);
}

/** Each setting: its variable, its schema (parsing the raw string) and its default. */
const settings = {
  databaseUrl: { env: 'MNEMO_DATABASE_URL', schema: postgresUrl.optional() },
  dataDir: { env: 'MNEMO_DATA_DIR', schema: z.string().trim().min(1).default('./.mnemo') },
  databaseSchema: {
    env: 'MNEMO_DATABASE_SCHEMA',
    schema: z
      .string()
      .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case SQL identifier')
      .default('mnemo'),
  },
  databasePoolSize: {
    env: 'MNEMO_DATABASE_POOL_SIZE',
    schema: intFrom(1, 1000).default(defaultPoolSize()),
  },
  host: { env: 'MNEMO_HOST', schema: z.string().trim().min(1).default('127.0.0.1') },
  port: { env: 'MNEMO_PORT', schema: intFrom(0, 65535).default(8787) },
  extractor: { env: 'MNEMO_EXTRACTOR', schema: z.enum(['rules', 'openai']).default('rules') },
  llmBaseUrl: {
    env: 'MNEMO_LLM_BASE_URL',
    schema: httpUrl.optional(),
  },
  llmModel: { env: 'MNEMO_LLM_MODEL', schema: z.string().trim().min(1).optional() },
  llmApiKey: { env: 'MNEMO_LLM_API_KEY', schema: z.string().min(1).optional() },
  llmTimeoutMs: { env: 'MNEMO_LLM_TIMEOUT_MS', schema: intFrom(100, 600_000).default(30_000) },
  llmMaxInputChars: {
    env: 'MNEMO_LLM_MAX_INPUT_CHARS',
    schema: intFrom(1000, 10_000_000).default(200_000),
  },
  sttBaseUrl: {
    env: 'MNEMO_STT_BASE_URL',
    schema: httpUrl.optional(),
  },
  sttModel: { env: 'MNEMO_STT_MODEL', schema: z.string().trim().min(1).default('whisper-1') },
  sttApiKey: { env: 'MNEMO_STT_API_KEY', schema: z.string().min(1).optional() },
  sttTimeoutMs: { env: 'MNEMO_STT_TIMEOUT_MS', schema: intFrom(100, 600_000).default(60_000) },
  batchMaxItems: { env: 'MNEMO_BATCH_MAX_ITEMS', schema: intFrom(1, 1000).default(100) },
  syncMaxSegments: { env: 'MNEMO_SYNC_MAX_SEGMENTS', schema: intFrom(1, 10_000).default(1000) },
  syncMaxBodyBytes: {
    env: 'MNEMO_SYNC_MAX_BODY_BYTES',
    // At most 256 MiB: Node's longest string (about 512 MiB) must hold the body as text, and
    // the audio it carries as hex once more on its way to PostgreSQL.
    schema: intFrom(1024, 256 * 1024 * 1024).default(64 * 1024 * 1024),
  },
  // 0: kept for good, as API.md promises idempotency keys without a time limit (decision 0009).
  operationRetentionHours: {
    env: 'MNEMO_OPERATION_RETENTION_HOURS',
    schema: intFrom(0, 87_600).default(0),
  },
  audioRetentionS: { env: 'MNEMO_AUDIO_RETENTION_S', schema: intFrom(0, 30 * 86_400).default(480) },
  rateLimitPerS: { env: 'MNEMO_RATE_LIMIT_PER_S', schema: intFrom(0, 1_000_000).default(100) },
  rateLimitBurst: { env: 'MNEMO_RATE_LIMIT_BURST', schema: intFrom(1, 1_000_000).default(200) },
  metricsToken: { env: 'MNEMO_METRICS_TOKEN', schema: z.string().min(16).optional() },
  workerConcurrency: { env: 'MNEMO_WORKER_CONCURRENCY', schema: intFrom(1, 1000).default(10) },
  workerPrefetch: { env: 'MNEMO_WORKER_PREFETCH', schema: intFrom(0, 1000).default(2) },
  workerEarlyCompute: {
    env: 'MNEMO_WORKER_EARLY_COMPUTE',
    schema: flag(true),
  },
  workerLeaseMs: { env: 'MNEMO_WORKER_LEASE_MS', schema: intFrom(1000, 3_600_000).default(30_000) },
  maxBodyBytes: {
    env: 'MNEMO_MAX_BODY_BYTES',
    schema: intFrom(1024, 100 * 1024 * 1024).default(1024 * 1024),
  },
  // Past it, a stop that has not finished (a database that stopped answering) exits with 1;
  // above the HTTP drain (10 s) plus the workers' grace (10 s) by default.
  shutdownTimeoutMs: {
    env: 'MNEMO_SHUTDOWN_TIMEOUT_MS',
    schema: intFrom(1000, 3_600_000).default(30_000),
  },
  // false: `serve`, `worker` and `keys` apply no migration and refuse a database with one
  // pending (exit 4), so that they can run as a role without CREATE rights; `mnemo migrate`
  // applies them (as the owner).
  autoMigrate: { env: 'MNEMO_AUTO_MIGRATE', schema: flag(true) },
  logLevel: {
    env: 'MNEMO_LOG_LEVEL',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  },
} as const;

type Settings = typeof settings;

/** The validated, frozen configuration. */
export type Config = {
  readonly [K in keyof Settings]: z.output<Settings[K]['schema']>;
};

/** Settings given on the command line; they override the environment. */
export type ConfigOverrides = { [K in keyof Settings]?: string | undefined };

/**
 * Builds the configuration from `env` (default `process.env`) and flag `overrides`.
 * Empty variables count as unset.
 * @throws MnemoError `invalid_config` naming the first bad variable
 */
export function loadConfig(
  env: Readonly<Record<string, string | undefined>> = process.env,
  overrides: ConfigOverrides = {},
): Config {
  const out: Record<string, unknown> = {};
  for (const [key, setting] of Object.entries(settings)) {
    const flag = overrides[key as keyof Settings];
    const fromEnv = env[setting.env];
    const raw = flag ?? (fromEnv === '' ? undefined : fromEnv);
    const parsed = (setting.schema as z.ZodType).safeParse(raw);
    if (!parsed.success) {
      const reason = parsed.error.issues[0]?.message ?? 'invalid value';
      const source = flag === undefined ? setting.env : `--${kebab(key)} (${setting.env})`;
      throw new MnemoError(
        ErrorCode.InvalidConfig,
        `${source}: ${reason} (got ${JSON.stringify(raw)})`,
        {
          details: { variable: setting.env },
        },
      );
    }
    out[key] = parsed.data;
  }
  if (
    out['extractor'] === 'openai' &&
    (out['llmBaseUrl'] === undefined || out['llmModel'] === undefined)
  ) {
    throw new MnemoError(
      ErrorCode.InvalidConfig,
      'MNEMO_EXTRACTOR=openai needs MNEMO_LLM_BASE_URL and MNEMO_LLM_MODEL',
      { details: { variable: 'MNEMO_EXTRACTOR' } },
    );
  }
  return Object.freeze(out) as Config;
}

/** The configuration as `mnemo doctor` prints it: every variable, secrets redacted. */
export function describeConfig(config: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, setting] of Object.entries(settings)) {
    const value = config[key as keyof Config];
    out[setting.env] =
      (key === 'databaseUrl' || key === 'llmBaseUrl' || key === 'sttBaseUrl') &&
      typeof value === 'string'
        ? redactUrl(value)
        : (key === 'llmApiKey' || key === 'sttApiKey' || key === 'metricsToken') &&
            value !== undefined
          ? '***'
          : value;
  }
  return out;
}

/**
 * Hides the secrets of a URL: its password, and the values of query parameters that may hold
 * one (`password`, `sslpassword`, `api_key`, `token`, …), which pg and some endpoints read.
 */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') {
      parsed.password = '***';
    }
    for (const name of [...new Set(parsed.searchParams.keys())]) {
      if (/pass|secret|token|key/i.test(name)) {
        parsed.searchParams.set(name, '***');
      }
    }
    return parsed.toString();
  } catch {
    return '***';
  }
}

function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}
