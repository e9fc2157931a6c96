import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';
import { ingestSuite } from '../integration/ingest-processes.suite.ts';

describePg('postgres', () => {
  const schema = testSchemaName('ingest-processes');
  ingestSuite({
    name: 'PostgreSQL',
    servers: 2,
    env: () => ({ MNEMO_DATABASE_URL: testDatabaseUrl, MNEMO_DATABASE_SCHEMA: schema }),
    cleanup: () => dropSchema(schema),
  });
});
