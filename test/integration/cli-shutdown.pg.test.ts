import { createServer, type Socket } from 'node:net';

import { afterAll, expect, it } from 'vitest';

import { startJsonProcess } from '../helpers/cli.ts';
import { eventually } from '../helpers/engine.ts';
import { describePg, dropSchema, testDatabaseUrl, testSchemaName } from '../helpers/pg.ts';

/**
 * A TCP proxy to the test database that can be frozen: it stops passing bytes either way and
 * closes nothing, as a database host that stopped answering (or a partition) looks to a client.
 */
async function startProxy(target: URL) {
  const sockets: Socket[] = [];
  let frozen = false;
  // allowHalfOpen: a client's FIN is not answered either (a host that stopped answering
  // acknowledges nothing), so ending a connection waits as a query does.
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = new (client.constructor as typeof Socket)({ allowHalfOpen: true });
    upstream.connect(Number(target.port || 5432), target.hostname);
    sockets.push(client, upstream);
    const pass = (from: Socket, to: Socket) =>
      from.on('data', (chunk: Buffer) => {
        if (!frozen) {
          to.write(chunk);
        }
      });
    pass(client, upstream);
    pass(upstream, client);
    for (const s of [client, upstream]) {
      s.on('error', () => undefined);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    port,
    freeze() {
      frozen = true;
    },
    close() {
      for (const s of sockets) {
        s.destroy();
      }
      server.close();
    },
  };
}

describePg('stopping when the database stops answering', () => {
  const schema = testSchemaName('cli-shutdown');
  afterAll(async () => {
    await dropSchema(schema);
  });

  it('a worker asked to stop exits with 1 after MNEMO_SHUTDOWN_TIMEOUT_MS instead of hanging', async () => {
    const target = new URL(testDatabaseUrl);
    const proxy = await startProxy(target);
    const url = new URL(testDatabaseUrl);
    url.host = `127.0.0.1:${proxy.port}`;
    const worker = startJsonProcess(
      'src/cli/main.ts',
      {
        MNEMO_DATABASE_URL: url.toString(),
        MNEMO_DATABASE_SCHEMA: schema,
        MNEMO_SHUTDOWN_TIMEOUT_MS: '2000',
      },
      ['worker'],
    );
    try {
      await worker.waitFor((l) => String(l['msg']).startsWith('Mnemo worker running'));
      await new Promise((resolve) => setTimeout(resolve, 300)); // its first statements done
      proxy.freeze();
      const asked = performance.now();
      worker.kill('SIGTERM');
      const code = await Promise.race([
        worker.exited,
        new Promise<string>((resolve) => setTimeout(() => resolve('still running'), 20_000)),
      ]);
      expect(code).toBe(1);
      expect(performance.now() - asked).toBeGreaterThanOrEqual(1900);
      // Its last lines may come in after its exit.
      await eventually(() =>
        worker.lines.some((l) => String(l['msg']).startsWith('shutdown did not finish')),
      );
    } finally {
      worker.kill('SIGKILL');
      proxy.close();
    }
  });
});
