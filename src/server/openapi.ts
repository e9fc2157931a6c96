import { z } from 'zod';

import {
  AppendMessagesRequest,
  BatchIngestRequest,
  CommitRequest,
  ConversationsQuery,
  DeleteUserRequest,
  ErrorBody,
  EventsQuery,
  Id,
  IngestRequest,
  MemoriesQuery,
  Operation,
  OperationQuery,
  OperationsQuery,
  SearchQuery,
  SyncRequest,
} from '../api/schemas.ts';
import { OPERATION_ID_PATTERN } from '../app.ts';
import { httpStatusFor } from './errors.ts';

const jsonSchema = (schema: z.ZodType) =>
  z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' });

const json = (schema: z.ZodType) => ({ 'application/json': { schema: jsonSchema(schema) } });

/** The query parameters of a route, from the zod schema that validates its query string. */
const query = (schema: z.ZodObject) =>
  Object.entries(schema.shape).map(([name, field]) => ({
    name,
    in: 'query',
    // A field with a default or marked optional accepts its absence.
    required: !(field as z.ZodType).safeParse(undefined).success,
    schema: jsonSchema(field as z.ZodType),
  }));

const pathId = (name: string) => ({ name, in: 'path', required: true, schema: jsonSchema(Id) });
const userId = pathId('user_id');
const sessionId = pathId('session_id');
const operationId = {
  name: 'id',
  in: 'path',
  required: true,
  schema: { type: 'string', pattern: OPERATION_ID_PATTERN.source },
};
/** Writes take their idempotency key in this header or as `idempotency_key` in the body. */
const idempotencyKey = {
  name: 'Idempotency-Key',
  in: 'header',
  required: false,
  schema: jsonSchema(Id),
};

// Every error status the API answers with, and its codes, from the one table that maps them.
const codesByStatus = new Map<number, string[]>();
for (const [code, status] of Object.entries(httpStatusFor)) {
  codesByStatus.set(status, [...(codesByStatus.get(status) ?? []), code]);
}
const errors = Object.fromEntries(
  [...codesByStatus].map(([status, codes]) => [
    String(status),
    { description: codes.join(', '), content: json(ErrorBody) },
  ]),
);

const operationWrite = {
  '200': { description: 'finished within the wait', content: json(Operation) },
  '202': { description: 'accepted; the operation goes on', content: json(Operation) },
  ...errors,
};

/** A request body: required unless the route takes none (its fields then all default). */
const body = (schema: z.ZodType, required = true, maxItems?: { field: string; max: number }) => {
  const content = json(schema);
  if (maxItems !== undefined) {
    // The server's own limit (a setting), tighter than the schema's.
    const props = (content['application/json'].schema as { properties?: Record<string, object> })
      .properties;
    const field = props?.[maxItems.field];
    if (props !== undefined && field !== undefined) {
      props[maxItems.field] = { ...field, maxItems: maxItems.max };
    }
  }
  return { required, content };
};

/** The limits of this server that the document states (see README "Configuration"). */
export interface OpenApiLimits {
  batchMaxItems: number;
  syncMaxSegments: number;
}

const cached = new Map<string, object>();

/** The OpenAPI 3.1 document of the HTTP API, built from the zod schemas of src/api. */
export function openApiDocument(limits: OpenApiLimits): object {
  const key = `${limits.batchMaxItems}:${limits.syncMaxSegments}`;
  const known = cached.get(key);
  if (known !== undefined) {
    return known;
  }
  const document = {
    openapi: '3.1.0',
    info: {
      title: 'Mnemo',
      version: '0.1.0',
      description: 'Memory ingestion engine for AI agents (see API.md).',
    },
    components: {
      securitySchemes: {
        apiKey: {
          type: 'http',
          scheme: 'bearer',
          description: 'an API key (`mnemo keys create`); none while no key exists (loopback only)',
        },
      },
    },
    // A key, or none on a loopback server with no key at all.
    security: [{ apiKey: [] }, {}],
    paths: {
      '/v1/memory/ingest': {
        post: {
          parameters: [idempotencyKey],
          requestBody: body(IngestRequest),
          responses: operationWrite,
        },
      },
      '/v1/memory/batch-ingest': {
        post: {
          parameters: [idempotencyKey],
          requestBody: body(BatchIngestRequest, true, {
            field: 'items',
            max: limits.batchMaxItems,
          }),
          responses: operationWrite,
        },
      },
      '/v1/operations': {
        get: {
          parameters: query(OperationsQuery),
          responses: { '200': { description: 'a page of operations' }, ...errors },
        },
      },
      '/v1/operations/{id}': {
        get: {
          parameters: [operationId, ...query(OperationQuery)],
          responses: {
            '200': { description: 'the operation', content: json(Operation) },
            ...errors,
          },
        },
      },
      '/v1/operations/{id}/cancel': {
        post: {
          parameters: [operationId],
          responses: {
            '200': { description: 'the operation', content: json(Operation) },
            ...errors,
          },
        },
      },
      '/v1/memory/search': {
        get: {
          parameters: query(SearchQuery),
          responses: { '200': { description: 'ranked results' }, ...errors },
        },
      },
      '/v1/users/{user_id}/profile': {
        get: {
          parameters: [userId],
          responses: { '200': { description: 'profile and summary' }, ...errors },
        },
      },
      '/v1/users/{user_id}/memories': {
        get: {
          parameters: [userId, ...query(MemoriesQuery)],
          responses: { '200': { description: 'a page of memories' }, ...errors },
        },
      },
      '/v1/users/{user_id}/events': {
        get: {
          parameters: [userId, ...query(EventsQuery)],
          responses: {
            '200': { description: 'a page of events in date order, with `next_cursor`' },
            ...errors,
          },
        },
      },
      '/v1/sessions/{session_id}/messages': {
        post: {
          parameters: [sessionId, idempotencyKey],
          requestBody: body(AppendMessagesRequest),
          responses: {
            '200': { description: 'appended; `{"live_count": n}`' },
            ...errors,
            '409': {
              description:
                "another user's session, too many live messages, or idempotency_conflict",
              content: json(ErrorBody),
            },
          },
        },
      },
      '/v1/sessions/{session_id}/commit': {
        post: {
          parameters: [sessionId, idempotencyKey],
          requestBody: body(CommitRequest, false),
          responses: {
            '200': {
              description: 'committed and finished within the wait, or `nothing_to_commit`',
            },
            '202': { description: "committed; the archive's operation goes on" },
            ...errors,
          },
        },
      },
      '/v1/sync': {
        post: {
          parameters: [idempotencyKey],
          requestBody: body(SyncRequest, true, {
            field: 'segments',
            max: limits.syncMaxSegments,
          }),
          responses: operationWrite,
        },
      },
      '/v1/users/{user_id}/conversations': {
        get: {
          parameters: [userId, ...query(ConversationsQuery)],
          responses: {
            '200': { description: 'a page of conversations in time order, with `next_cursor`' },
            ...errors,
          },
        },
      },
      '/v1/sessions/{session_id}': {
        get: {
          parameters: [sessionId],
          responses: { '200': { description: 'live count and archives' }, ...errors },
        },
      },
      '/v1/users/{user_id}': {
        delete: {
          parameters: [userId, idempotencyKey],
          requestBody: body(DeleteUserRequest, false),
          responses: operationWrite,
        },
      },
      '/healthz': { get: { security: [], responses: { '200': { description: 'process up' } } } },
      '/readyz': {
        get: {
          security: [],
          responses: { '200': { description: 'ready' }, '503': { description: 'not ready' } },
        },
      },
      '/metrics': {
        get: {
          description: 'with MNEMO_METRICS_TOKEN set, that token as the bearer (not an API key)',
          responses: { '200': { description: 'Prometheus text' } },
        },
      },
      '/openapi.json': { get: { responses: { '200': { description: 'this document' } } } },
    },
  };
  cached.set(key, document);
  return document;
}
