/**
 * createApp: the HTTP surface as a Hono app that never listens (server/node.ts does).
 * Routes only translate HTTP to calls of the application object and back.
 */
import { timingSafeEqual } from 'node:crypto';

import type { Context } from 'hono';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { requestId } from 'hono/request-id';
import type { z } from 'zod';

import {
  AppendMessagesRequest,
  BatchIngestRequest,
  CommitRequest,
  ConversationsQuery,
  DeleteUserRequest,
  EventsQuery,
  Id,
  IngestRequest,
  MemoriesQuery,
  OperationQuery,
  OperationsQuery,
  SearchQuery,
  SyncRequest,
} from '../api/schemas.ts';
import type { Mnemo, WriteOutcome } from '../app.ts';
import { ErrorCode, MnemoError } from '../core/errors.ts';
import { type Logger, silentLogger } from '../core/logger.ts';
import { createRateLimiter } from '../core/rate-limit.ts';
import { hashKey } from '../keys/keys.ts';
import { httpStatusFor } from './errors.ts';
import { openApiDocument } from './openapi.ts';

/** What the HTTP app needs. */
export interface AppDeps {
  mnemo: Mnemo;
  logger?: Logger;
  /** Largest accepted request body. @defaultValue 1 MiB */
  maxBodyBytes?: number;
  /** Body limit of `POST /v1/sync` (audio uploads). @defaultValue 64 MiB */
  syncMaxBodyBytes?: number;
  /** Requests a second per API key (0: no limit), and the burst. */
  rateLimitPerS?: number;
  rateLimitBurst?: number;
  /** When set, `/metrics` answers only to this bearer token. */
  metricsToken?: string | undefined;
  /**
   * Whether requests without a key are served (as tenant `default`) while no key exists:
   * true on loopback, false when listening beyond it. @defaultValue true
   */
  allowAnonymous?: boolean;
  /** Show internal error messages to clients (never in production). @defaultValue false */
  exposeErrors?: boolean;
}

type Env = { Variables: { requestId: string; tenant: string } };

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '::1']);

/**
 * An `Origin` header this machine's user stands behind: a page served from this machine, or a
 * browser extension the user installed (an extension is one of Mnemo's clients). Not `null`
 * (a sandboxed frame of any site sends it) nor any other site.
 */
function isTrustedOrigin(origin: string): boolean {
  try {
    const url = new URL(origin);
    return (
      ['chrome-extension:', 'moz-extension:', 'safari-web-extension:'].includes(url.protocol) ||
      LOOPBACK_HOSTS.has(url.hostname.replace(/^\[|\]$/g, ''))
    );
  } catch {
    return false;
  }
}

function invalid(error: z.ZodError): MnemoError {
  return new MnemoError(ErrorCode.InvalidRequest, 'the request is invalid', {
    details: error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
  });
}

function parse<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  let result: z.ZodSafeParseResult<z.output<S>>;
  try {
    result = schema.safeParse(value);
  } catch (err) {
    // The schemas bound the depth they walk; a check that still overflows the stack is the
    // request's doing (a value nested too deep), not the server's.
    if (err instanceof RangeError && err.message.includes('call stack')) {
      throw new MnemoError(ErrorCode.InvalidRequest, 'the request nests values too deeply');
    }
    throw err;
  }
  if (!result.success) {
    throw invalid(result.error);
  }
  return result.data;
}

async function jsonBody(c: Context<Env>, optional = false): Promise<unknown> {
  const text = await c.req.text();
  if (text.trim() === '') {
    if (optional) {
      return {};
    }
    throw new MnemoError(ErrorCode.InvalidRequest, 'the request body must be a JSON object');
  }
  // A browser sends other types (text/plain, forms) across sites without asking first.
  if (!/^application\/json\b/i.test(c.req.header('content-type') ?? '')) {
    throw new MnemoError(ErrorCode.InvalidRequest, 'Content-Type must be application/json');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new MnemoError(ErrorCode.InvalidRequest, 'the request body is not valid JSON');
  }
}

function idempotencyKey(c: Context<Env>, fromBody: string | undefined): string | undefined {
  const header = c.req.header('idempotency-key');
  if (header !== undefined) {
    parse(Id, header);
    if (fromBody !== undefined && fromBody !== header) {
      throw new MnemoError(
        ErrorCode.InvalidRequest,
        'Idempotency-Key header and idempotency_key differ',
      );
    }
    return header;
  }
  return fromBody;
}

function userIdParam(c: Context<Env>): string {
  return parse(Id, c.req.param('user_id'));
}

function sessionIdParam(c: Context<Env>): string {
  return parse(Id, c.req.param('session_id'));
}

function written(c: Context<Env>, outcome: WriteOutcome) {
  return c.json(outcome.operation, outcome.finished ? 200 : 202);
}

const waitOptions = (
  body: { wait?: boolean | undefined; timeout_ms?: number | undefined },
  waitByDefault: boolean,
) => ({
  wait: body.wait ?? waitByDefault,
  timeoutMs: body.timeout_ms ?? 30_000,
});

/** Builds the HTTP app. */
export function createApp(deps: AppDeps): Hono<Env> {
  const { mnemo } = deps;
  const logger = deps.logger ?? silentLogger;
  const app = new Hono<Env>();

  app.use(requestId());

  // Access log: one line per request, with its request id (never headers or bodies).
  app.use(async (c, next) => {
    const started = performance.now();
    await next();
    logger.info(
      {
        request_id: c.get('requestId'),
        method: c.req.method,
        path: c.req.path,
        status: c.res.status,
        ms: Math.round(performance.now() - started),
      },
      'request',
    );
  });

  // Who is asking: a valid API key's tenant, or tenant `default` while no key exists.
  const limiter = createRateLimiter(deps.rateLimitPerS ?? 0, deps.rateLimitBurst ?? 1);
  const metricsToken = deps.metricsToken === undefined ? undefined : hashKey(deps.metricsToken);
  app.use(async (c, next) => {
    const path = c.req.path;
    if (path === '/healthz' || path === '/readyz') {
      return next();
    }
    const authorization = c.req.header('authorization');
    const presented = /^Bearer +(\S+)$/i.exec(authorization ?? '')?.[1];
    if (authorization !== undefined && presented === undefined) {
      // Not a way into anonymous mode either.
      throw new MnemoError(ErrorCode.Unauthorized, 'the Authorization header must be Bearer <key>');
    }
    if (path === '/metrics' && metricsToken !== undefined) {
      // With a metrics token configured, it alone reads the metrics (totals of all tenants).
      if (
        presented === undefined ||
        !timingSafeEqual(Buffer.from(hashKey(presented)), Buffer.from(metricsToken))
      ) {
        throw new MnemoError(ErrorCode.Unauthorized, 'the metrics token is required');
      }
      return next();
    }
    if (presented === undefined) {
      if (await mnemo.auth.keysExist()) {
        throw new MnemoError(
          ErrorCode.Unauthorized,
          'an API key is required: Authorization: Bearer <key>',
        );
      }
      if (deps.allowAnonymous === false) {
        // Listening beyond loopback, and every key was revoked: nobody is let in.
        throw new MnemoError(ErrorCode.Unauthorized, 'no API key is configured on this server');
      }
      // Anonymous mode is for this machine only: a web page cannot reach it by a
      // rebinding DNS name (the Host header stays that name).
      const host = new URL(c.req.url).hostname.replace(/^\[|\]$/g, '');
      if (!LOOPBACK_HOSTS.has(host)) {
        throw new MnemoError(
          ErrorCode.Unauthorized,
          'without API keys this server answers requests for localhost only',
        );
      }
      // Nor by a page of another site in this machine's browser: a bodyless POST (a cancel,
      // a commit) needs no preflight, but the browser names the page's origin.
      const origin = c.req.header('origin');
      if (origin !== undefined && !isTrustedOrigin(origin)) {
        throw new MnemoError(
          ErrorCode.Unauthorized,
          `without API keys this server answers no request from a web page of ${origin}`,
        );
      }
      c.set('tenant', 'default');
      return next();
    }
    // A presented key is looked up even while no key exists: an unknown one is refused (as
    // API.md has it) rather than served as `default`, where the client's writes would land in
    // a tenant it did not name; a key created a moment ago is found at once.
    const principal = await mnemo.auth.resolve(presented);
    if (principal === null) {
      throw new MnemoError(ErrorCode.Unauthorized, 'unknown or revoked API key');
    }
    const waitMs = limiter.take(principal.keyId ?? principal.tenantId);
    if (waitMs > 0) {
      throw new MnemoError(ErrorCode.RateLimited, 'rate limit exceeded for this API key', {
        retryAfterMs: waitMs,
      });
    }
    c.set('tenant', principal.tenantId);
    return next();
  });
  // Uploads of audio (POST /v1/sync) have a limit of their own.
  const limitOf = (maxSize: number) =>
    bodyLimit({
      maxSize,
      onError: () => {
        throw new MnemoError(
          ErrorCode.PayloadTooLarge,
          `the request body exceeds ${maxSize} bytes`,
        );
      },
    });
  const defaultMax = deps.maxBodyBytes ?? 1024 * 1024;
  const syncMax = deps.syncMaxBodyBytes ?? 64 * 1024 * 1024;
  const defaultLimit = limitOf(defaultMax);
  const syncLimit = limitOf(syncMax);
  app.use((c, next) => {
    const sync = c.req.path === '/v1/sync';
    // A declared length is checked here (Node's parser never reads past it); hono's
    // bodyLimit, which counts a streamed body but builds a whole web Request to do so,
    // is left for bodies without one (chunked).
    const declared = c.req.header('content-length');
    if (declared !== undefined && c.req.header('transfer-encoding') === undefined) {
      const max = sync ? syncMax : defaultMax;
      if (Number(declared) > max) {
        throw new MnemoError(ErrorCode.PayloadTooLarge, `the request body exceeds ${max} bytes`);
      }
      return next();
    }
    return (sync ? syncLimit : defaultLimit)(c, next);
  });

  app.onError((err, c) => {
    const requestIdValue = c.get('requestId');
    const known = err instanceof MnemoError ? err : undefined;
    const code = known?.code ?? ErrorCode.Internal;
    const status = httpStatusFor[code];
    if (status >= 500) {
      logger.error({ err, request_id: requestIdValue, path: c.req.path }, 'request failed');
    }
    const message =
      status >= 500 && code === ErrorCode.Internal && deps.exposeErrors !== true
        ? 'internal error'
        : (known?.message ?? 'internal error');
    if (known?.retryAfterMs !== undefined) {
      c.header('Retry-After', String(Math.max(1, Math.ceil(known.retryAfterMs / 1000))));
    }
    const body: Record<string, unknown> = { code, message };
    if (known?.details !== undefined && status < 500) {
      body['details'] = known.details;
    }
    return c.json({ error: body, request_id: requestIdValue }, status);
  });

  app.notFound((c) =>
    c.json(
      {
        error: { code: 'not_found', message: `no route ${c.req.method} ${c.req.path}` },
        request_id: c.get('requestId'),
      },
      404,
    ),
  );

  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.get('/readyz', async (c) =>
    (await mnemo.ready()) ? c.json({ status: 'ready' }) : c.json({ status: 'not_ready' }, 503),
  );
  app.get('/metrics', async (c) => {
    const registry = mnemo.engine.metrics.registry;
    return c.body(await registry.metrics(), 200, { 'content-type': registry.contentType });
  });
  app.get('/openapi.json', (c) => c.json(openApiDocument(mnemo.config)));

  app.post('/v1/memory/ingest', async (c) => {
    const body = parse(IngestRequest, await jsonBody(c));
    const { user_id, wait: _w, timeout_ms: _t, idempotency_key, ...input } = body;
    return written(
      c,
      await mnemo.ingest(c.get('tenant'), user_id, input, {
        ...waitOptions(body, true),
        idempotencyKey: idempotencyKey(c, idempotency_key),
      }),
    );
  });

  app.post('/v1/memory/batch-ingest', async (c) => {
    const body = parse(BatchIngestRequest, await jsonBody(c));
    return written(
      c,
      await mnemo.batchIngest(c.get('tenant'), body.user_id, body.items, {
        ...waitOptions(body, false),
        idempotencyKey: idempotencyKey(c, body.idempotency_key),
      }),
    );
  });

  app.get('/v1/operations/:id', async (c) => {
    const query = parse(OperationQuery, c.req.query());
    return c.json(
      await mnemo.getOperation(c.get('tenant'), c.req.param('id'), query.include === 'children'),
    );
  });

  app.post('/v1/operations/:id/cancel', async (c) =>
    c.json(await mnemo.cancelOperation(c.get('tenant'), c.req.param('id'))),
  );

  app.get('/v1/operations', async (c) => {
    const query = parse(OperationsQuery, c.req.query());
    return c.json(
      await mnemo.listOperations(c.get('tenant'), {
        userId: query.user_id,
        status: query.status,
        kind: query.kind,
        limit: query.limit,
        cursor: query.cursor === undefined ? undefined : Number(query.cursor),
      }),
    );
  });

  app.get('/v1/memory/search', async (c) => {
    const query = parse(SearchQuery, c.req.query());
    return c.json(
      await mnemo.search(c.get('tenant'), query.user_id, query.q, query.types, query.limit),
    );
  });

  app.get('/v1/users/:user_id/profile', async (c) =>
    c.json(await mnemo.profile(c.get('tenant'), userIdParam(c))),
  );

  app.get('/v1/users/:user_id/memories', async (c) => {
    const query = parse(MemoriesQuery, c.req.query());
    const cursor = query.cursor === undefined ? undefined : Number(query.cursor);
    return c.json(await mnemo.memories(c.get('tenant'), userIdParam(c), query.limit, cursor));
  });

  app.get('/v1/users/:user_id/events', async (c) => {
    const query = parse(EventsQuery, c.req.query());
    return c.json(await mnemo.events(c.get('tenant'), userIdParam(c), query));
  });

  app.delete('/v1/users/:user_id', async (c) => {
    const body = parse(DeleteUserRequest, await jsonBody(c, true));
    const outcome = await mnemo.deleteUser(c.get('tenant'), userIdParam(c), {
      ...waitOptions(body, false),
      idempotencyKey: idempotencyKey(c, body.idempotency_key),
    });
    return c.json(outcome.operation, outcome.finished ? 200 : 202);
  });

  app.post('/v1/sessions/:session_id/messages', async (c) => {
    const sessionId = sessionIdParam(c);
    const body = parse(AppendMessagesRequest, await jsonBody(c));
    return c.json(
      await mnemo.appendMessages(
        c.get('tenant'),
        sessionId,
        body.user_id,
        body.messages,
        idempotencyKey(c, body.idempotency_key),
      ),
    );
  });

  app.post('/v1/sessions/:session_id/commit', async (c) => {
    const sessionId = sessionIdParam(c);
    const body = parse(CommitRequest, await jsonBody(c, true));
    const { finished, ...out } = await mnemo.commitSession(c.get('tenant'), sessionId, {
      ...waitOptions(body, true),
      idempotencyKey: idempotencyKey(c, body.idempotency_key),
    });
    return c.json(out, finished ? 200 : 202);
  });

  app.post('/v1/sync', async (c) => {
    const body = parse(SyncRequest, await jsonBody(c));
    const outcome = await mnemo.sync(
      c.get('tenant'),
      body.user_id,
      body.segments,
      { mergeWindowS: body.merge_window_s ?? 120, deviceId: body.device_id },
      {
        ...waitOptions(body, false),
        idempotencyKey: idempotencyKey(c, body.idempotency_key),
      },
    );
    return c.json(outcome.operation, outcome.finished ? 200 : 202);
  });

  app.get('/v1/users/:user_id/conversations', async (c) => {
    const query = parse(ConversationsQuery, c.req.query());
    return c.json(await mnemo.conversations(c.get('tenant'), userIdParam(c), query));
  });

  app.get('/v1/sessions/:session_id', async (c) =>
    c.json(await mnemo.session(c.get('tenant'), sessionIdParam(c))),
  );

  return app;
}
