/**
 * Runs the HTTP app on Node: listen, and on SIGINT/SIGTERM stop accepting, drain in-flight
 * requests, stop the engine (workers finish or release their jobs), close the store.
 */
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
  options: { host: string; port: number; logger: Logger },
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
              await new Promise<void>((done) => server.close(() => done()));
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
