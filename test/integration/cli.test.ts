import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { createPgliteStore } from '../../src/store/pglite.ts';
import { runMnemo, runNode } from '../helpers/cli.ts';
import { keySecret } from '../helpers/keys.ts';

/** The embedded database's lock file. */
const lockOf = (dataDir: string) => join(dataDir, 'mnemo.lock');

describe('mnemo CLI', () => {
  it('prints help with the commands and exit codes', async () => {
    const r = await runMnemo(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/migrate \[--print\]/);
    expect(r.stdout).toMatch(/doctor/);
    expect(r.stdout).toMatch(/Exit codes/);
  });

  it('reports an unreachable database in one line and exits 3', async () => {
    const r = await runMnemo(['doctor'], { MNEMO_DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x' });
    expect(r.code).toBe(3);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^mnemo: database unavailable: .*ECONNREFUSED/);
    expect(r.stderr).not.toMatch(/\bat .*\.(ts|js):\d+/);
  });

  it('exits 2 naming the variable when a setting is invalid', async () => {
    const port = await runMnemo(['doctor'], { MNEMO_PORT: 'abc' });
    expect(port.code).toBe(2);
    expect(port.stderr).toMatch(/MNEMO_PORT/);
    const url = await runMnemo(['migrate'], { MNEMO_DATABASE_URL: 'mysql://x' });
    expect(url.code).toBe(2);
    expect(url.stderr).toMatch(/MNEMO_DATABASE_URL: must be a postgres/);
    const flag = await runMnemo(['doctor', '--schema', 'Bad-Name']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/--database-schema \(MNEMO_DATABASE_SCHEMA\)/);
  });

  it('rejects an unknown command or flag with exit 2', async () => {
    expect((await runMnemo(['frobnicate'])).code).toBe(2);
    expect((await runMnemo(['doctor', '--no-such-flag'])).code).toBe(2);
  });

  it('doctor on the embedded database prints the redacted config and pending migrations, applying nothing', async () => {
    const r = await runMnemo(['doctor', '--data-dir', 'memory://']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/MNEMO_DATA_DIR="memory:\/\/"/);
    expect(r.stdout).toMatch(/reachable: PostgreSQL/);
    expect(r.stdout).toMatch(/migrations applied: 0, pending: \d+/);
  });

  // PGlite takes no lock of its own: a second process on the same directory corrupts it.
  it('refuses an embedded database another process holds, and takes over the lock of one that is gone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mnemo-lock-'));
    const dataDir = join(dir, 'data');
    try {
      const store = await createPgliteStore({ dataDir });
      const busy = await runMnemo(['migrate', '--data-dir', dataDir]);
      expect(busy.code).toBe(3);
      expect(busy.stderr).toContain(`in use by process ${process.pid}`);
      await expect(createPgliteStore({ dataDir })).rejects.toThrow(/in use by process/);
      await store.close();
      expect(existsSync(lockOf(dataDir))).toBe(false);
      // A lock left by a process that died (here: one that has exited) is taken over.
      const gone = await runNode(['-e', 'process.stdout.write(String(process.pid))']);
      writeFileSync(lockOf(dataDir), `${gone.stdout}\n`);
      const migrated = await runMnemo(['migrate', '--data-dir', dataDir]);
      expect(migrated.code, migrated.stderr).toBe(0);
      expect(existsSync(lockOf(dataDir))).toBe(false);
      // So is one naming this very process when it does not hold it (a restart that got the
      // same pid, as pid 1 in a container does), and one naming no process at all.
      for (const text of [`${process.pid}\n`, '0\n', 'junk']) {
        writeFileSync(lockOf(dataDir), text);
        const again = await createPgliteStore({ dataDir });
        expect(readFileSync(lockOf(dataDir), 'utf8')).toMatch(
          new RegExp(`^${process.pid}\n${hostname()}\n`),
        );
        await expect(createPgliteStore({ dataDir })).rejects.toThrow(/in use by process/);
        await again.close();
      }
      expect(existsSync(lockOf(dataDir))).toBe(false);
      // A live process of another host (a container sharing the volume) cannot be checked:
      // its lock is kept. A live pid that started later than the lock says is not its holder.
      writeFileSync(lockOf(dataDir), `${process.ppid}\nanother-host\n1\n`);
      await expect(createPgliteStore({ dataDir })).rejects.toThrow(
        new RegExp(`in use by process ${process.ppid} on another-host`),
      );
      writeFileSync(lockOf(dataDir), `${process.ppid}\n${hostname()}\n1\n`);
      const reused = await createPgliteStore({ dataDir });
      await reused.close();
      // An older Mnemo's lock beside the directory, held by a live process, is honoured.
      rmSync(lockOf(dataDir), { force: true });
      writeFileSync(`${dataDir}.lock`, `${process.ppid}\n`);
      await expect(createPgliteStore({ dataDir })).rejects.toThrow(/in use by process/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lets one of four processes starting at once take over a dead holder’s lock', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mnemo-lock-race-'));
    const dataDir = join(dir, 'data');
    try {
      const gone = await runNode(['-e', 'process.stdout.write(String(process.pid))']);
      mkdirSync(dataDir);
      writeFileSync(lockOf(dataDir), `${gone.stdout}\n`);
      const script =
        `const { lockDataDir } = await import('./src/store/pglite.ts');` +
        `try { const unlock = await lockDataDir(${JSON.stringify(dataDir)});` +
        ` process.stdout.write('got'); await new Promise((r) => setTimeout(r, 1500)); unlock(); }` +
        ` catch (err) { process.stdout.write(/in use by process/.test(err.message) ? 'busy' : err.message); }`;
      const results = await Promise.all(
        [0, 1, 2, 3].map(() => runNode(['--import', 'tsx', '--input-type=module', '-e', script])),
      );
      expect(results.map((r) => r.stdout).sort()).toEqual(['busy', 'busy', 'busy', 'got']);
      expect(existsSync(lockOf(dataDir))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says in one line that the port is taken, and exits 1', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    try {
      const port = String((taken.address() as AddressInfo).port);
      const r = await runMnemo(['serve', '--data-dir', 'memory://'], { MNEMO_PORT: port });
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toMatch(/^mnemo: cannot listen: listen EADDRINUSE: .*$/);
    } finally {
      taken.close();
    }
  });

  it('migrate --print shows the SQL of every migration', async () => {
    const r = await runMnemo(['migrate', '--print']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/-- 0001_init\.sql \(sha256 [0-9a-f]{64}\)/);
    expect(r.stdout).toMatch(/create table tenants/);
  });

  // Seven runs of the CLI, each opening the embedded database: 20 s alone, over 60 s once
  // beside the rest of the suite on two cores.
  it(
    'creates, lists and revokes API keys, and will not serve beyond loopback without one',
    {
      timeout: 180_000,
    },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'mnemo-keys-'));
      try {
        const refused = await runMnemo([
          'serve',
          '--host',
          '0.0.0.0',
          '--port',
          '0',
          '--data-dir',
          dir,
        ]);
        expect(refused.code).toBe(2);
        expect(refused.stderr).toContain('refusing to listen on 0.0.0.0 without API keys');
        expect((await runMnemo(['keys', 'create', '--data-dir', dir])).code).toBe(2);
        const created = await runMnemo([
          'keys',
          'create',
          '--tenant',
          'acme',
          '--name',
          'ci',
          '--data-dir',
          dir,
        ]);
        expect(created.code).toBe(0);
        const key = created.stdout.trim();
        expect(key).toMatch(/^mnemo_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
        expect(created.stderr).toContain('shown only once');
        const listed = await runMnemo(['keys', 'list', '--data-dir', dir]);
        const id = /^(key_[0-9a-f]{12})\ttenant=acme\tname=ci\t.*\tactive$/m.exec(
          listed.stdout,
        )?.[1];
        expect(id).toBeDefined();
        expect(listed.stdout).not.toContain(keySecret(key));
        expect((await runMnemo(['keys', 'revoke', id ?? '', '--data-dir', dir])).code).toBe(0);
        expect((await runMnemo(['keys', 'list', '--data-dir', dir])).stdout).toContain('revoked=');
        expect((await runMnemo(['keys', 'revoke', 'key_nope', '--data-dir', dir])).code).toBe(1);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
