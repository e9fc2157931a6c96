/**
 * Runs the HTTP app on Node: listen, and on SIGINT/SIGTERM stop accepting, drain in-flight
 * requests, stop the engine (workers finish or release their jobs), close the store. The
 * drain lasts at most `drainMs`: requests still waiting for their operation then answer with
 * it as it stands (202), instead of holding the stop for up to their `timeout_ms`, and a
 * second later any connection still open is cut.
 */
import { Server as HttpServer } from 'node:http';

import { serve } from '@hono/node-server';

import type { Mnemo } from '../app.ts';
import type { Logger } from '../core/logger.ts';
import { createApp } from './app.ts';

/** Addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

/** A running server. */
export interface RunningServer {
  url: string;
  /** Graceful stop; safe to call more than once. */
  stop(): Promise<void>;
}

/** Listens on `host:port` (port 0: any free port). */
export function startServer(
  mnemo: Mnemo,
  options: {
    host: string;
    port: number;
    logger: Logger;
    /** How long a stop waits for in-flight requests before it ends their waits. @defaultValue 10000 */
    drainMs?: number;
  },
): Promise<RunningServer> {
  const app = createApp({
    mnemo,
    logger: options.logger,
    maxBodyBytes: mnemo.config.maxBodyBytes,
    syncMaxBodyBytes: mnemo.config.syncMaxBodyBytes,
    rateLimitPerS: mnemo.config.rateLimitPerS,
    rateLimitBurst: mnemo.config.rateLimitBurst,
    metricsToken: mnemo.config.metricsToken,
    allowAnonymous: isLoopback(options.host),
  });
  return new Promise((resolve, reject) => {
    const server = serve(
      { fetch: app.fetch, hostname: options.host, port: options.port },
      (info) => {
        const host = info.address.includes(':') ? `[${info.address}]` : info.address;
        let stopping: Promise<void> | undefined;
        resolve({
          url: `http://${host}:${info.port}`,
          stop() {
            stopping ??= (async () => {
              // Stops accepting. A connection stays open after its last response for as long
              // as the client keeps it alive: each is closed as soon as it is idle.
              const drained = new Promise<void>((done) => server.close(() => done()));
              const http = server instanceof HttpServer ? server : undefined;
              const idle = setInterval(() => http?.closeIdleConnections(), 100);
              const deadline = setTimeout(() => {
                mnemo.endWaits(); // the waiting requests answer now
                // Whatever is still open a second later is cut.
                setTimeout(() => http?.closeAllConnections(), 1000).unref();
              }, options.drainMs ?? 10_000);
              await drained;
              clearInterval(idle);
              clearTimeout(deadline);
              await mnemo.close();
            })();
            return stopping;
          },
        });
      },
    );
    server.on('error', reject);
  });
}
