import { afterAll, expect, it } from 'vitest';

import { createPostgresStore } from '../../src/store/postgres.ts';
import { runMnemo } from '../helpers/cli.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

describePg('mnemo as a role without CREATE rights (PostgreSQL)', () => {
  const schema = testSchemaName('cli-roles');
  const role = `mnemo_app_${process.pid}`;
  const admin = createPostgresStore({ url: testDatabaseUrl, schema, maxConnections: 1 });
  afterAll(async () => {
    await dropSchema(schema);
    await admin.exec(`drop owned by ${role}; drop role if exists ${role}`).catch(() => undefined);
    await admin.close();
  });

  it('with MNEMO_AUTO_MIGRATE=false applies nothing, refuses a database with pending migrations (exit 4), and runs once `mnemo migrate` has', async () => {
    const owner = { MNEMO_DATABASE_URL: testDatabaseUrl, MNEMO_DATABASE_SCHEMA: schema };
    const pending = await runMnemo(['keys', 'list'], { ...owner, MNEMO_AUTO_MIGRATE: 'false' });
    expect(pending.code).toBe(4);
    expect(pending.stderr).toContain('mnemo migrate');
    expect((await runMnemo(['migrate'], owner)).code).toBe(0);
    // A runtime role with data rights only.
    await admin.exec(`
      create role ${role} login password 'app-pw';
      grant usage on schema ${schema} to ${role};
      grant select, insert, update, delete on all tables in schema ${schema} to ${role};
      grant usage on all sequences in schema ${schema} to ${role};`);
    const url = new URL(testDatabaseUrl);
    url.username = role;
    url.password = 'app-pw';
    const app = { MNEMO_DATABASE_URL: url.toString(), MNEMO_DATABASE_SCHEMA: schema };
    // Applying migrations needs rights it lacks, even with none pending.
    expect((await runMnemo(['keys', 'list'], app)).code).not.toBe(0);
    const created = await runMnemo(['keys', 'create', '--tenant', 'acme'], {
      ...app,
      MNEMO_AUTO_MIGRATE: 'false',
    });
    expect(created.code, created.stderr).toBe(0);
    const listed = await runMnemo(['keys', 'list'], { ...app, MNEMO_AUTO_MIGRATE: 'false' });
    expect(listed.stdout).toContain('tenant=acme');
  });
});
