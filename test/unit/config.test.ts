import { availableParallelism } from 'node:os';

import { describe, expect, it } from 'vitest';

import { defaultPoolSize, describeConfig, loadConfig, redactUrl } from '../../src/config.ts';
import { ErrorCode } from '../../src/core/errors.ts';

describe('loadConfig', () => {
  it('uses the documented defaults on an empty environment', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      databaseUrl: undefined,
      dataDir: './.mnemo',
      databaseSchema: 'mnemo',
      host: '127.0.0.1',
      port: 8787,
      operationRetentionHours: 0,
      workerEarlyCompute: true,
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('sizes the connection pool by the CPUs: twice as many plus two, at most 10', () => {
    expect([1, 2, 3, 4, 64].map((cpus) => defaultPoolSize(cpus))).toEqual([4, 6, 8, 10, 10]);
    expect(loadConfig({}).databasePoolSize).toBe(defaultPoolSize(availableParallelism()));
    expect(loadConfig({ MNEMO_DATABASE_POOL_SIZE: '25' }).databasePoolSize).toBe(25);
  });

  it('lets flags override the environment', () => {
    const config = loadConfig({ MNEMO_PORT: '1000' }, { port: '2000' });
    expect(config.port).toBe(2000);
  });

  it('reads MNEMO_OPERATION_RETENTION_HOURS in whole hours', () => {
    expect(loadConfig({ MNEMO_OPERATION_RETENTION_HOURS: '168' }).operationRetentionHours).toBe(
      168,
    );
  });

  it('reads MNEMO_WORKER_EARLY_COMPUTE as true or false', () => {
    expect(loadConfig({ MNEMO_WORKER_EARLY_COMPUTE: 'false' }).workerEarlyCompute).toBe(false);
    expect(loadConfig({ MNEMO_WORKER_EARLY_COMPUTE: 'true' }).workerEarlyCompute).toBe(true);
  });

  it('treats an empty variable as unset', () => {
    expect(loadConfig({ MNEMO_DATABASE_URL: '' }).databaseUrl).toBeUndefined();
  });

  it.each([
    ['MNEMO_PORT', 'abc'],
    ['MNEMO_PORT', '70000'],
    ['MNEMO_PORT', '-1'],
    ['MNEMO_DATABASE_URL', 'http://example'],
    ['MNEMO_DATABASE_SCHEMA', 'drop table'],
    ['MNEMO_DATABASE_POOL_SIZE', '0'],
    ['MNEMO_LOG_LEVEL', 'loud'],
    ['MNEMO_OPERATION_RETENTION_HOURS', '-1'],
    ['MNEMO_OPERATION_RETENTION_HOURS', '1.5'],
    ['MNEMO_WORKER_EARLY_COMPUTE', 'yes'],
  ])('rejects %s=%s naming the variable', (name, value) => {
    expect(() => loadConfig({ [name]: value })).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidConfig,
        message: expect.stringContaining(name),
      }),
    );
  });

  it('redacts the database password when described', () => {
    const config = loadConfig({ MNEMO_DATABASE_URL: 'postgres://u:secret@db:5432/x' });
    expect(JSON.stringify(describeConfig(config))).not.toContain('secret');
    expect(redactUrl('postgres://u:secret@db/x')).toBe('postgres://u:***@db/x');
    // pg reads a password from the query too; endpoints may take keys there.
    const described = JSON.stringify(
      describeConfig(
        loadConfig({
          MNEMO_DATABASE_URL: 'postgres://u@db/x?password=secret1&sslmode=require',
          MNEMO_LLM_BASE_URL: 'http://llm.example/v1?api_key=secret2',
          MNEMO_STT_BASE_URL: 'http://me:secret3@stt.example/v1',
        }),
      ),
    );
    for (const secret of ['secret1', 'secret2', 'secret3']) {
      expect(described).not.toContain(secret);
    }
    expect(described).toContain('sslmode=require');
  });

  it('refuses a sync body limit beyond what a string can hold', () => {
    expect(() => loadConfig({ MNEMO_SYNC_MAX_BODY_BYTES: String(512 * 1024 * 1024) })).toThrow(
      /MNEMO_SYNC_MAX_BODY_BYTES/,
    );
  });
});
