import { z } from 'zod';

import {
  AppendMessagesRequest,
  BatchIngestRequest,
  CommitRequest,
  DeleteUserRequest,
  ErrorBody,
  IngestRequest,
  Operation,
  SyncRequest,
} from '../api/schemas.ts';

const json = (schema: z.ZodType) => ({
  'application/json': { schema: z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) },
});

const errors = {
  '400': { description: 'invalid_request', content: json(ErrorBody) },
  '404': { description: 'not_found', content: json(ErrorBody) },
  '409': { description: 'idempotency_conflict', content: json(ErrorBody) },
  '413': { description: 'payload_too_large', content: json(ErrorBody) },
  '429': { description: 'queue_full (with Retry-After)', content: json(ErrorBody) },
  '500': { description: 'internal', content: json(ErrorBody) },
};

const operationWrite = {
  '200': { description: 'finished within the wait', content: json(Operation) },
  '202': { description: 'accepted; the operation goes on', content: json(Operation) },
  ...errors,
};

let cached: object | undefined;

/** The OpenAPI 3.1 document of the HTTP API, built from the zod schemas of src/api. */
export function openApiDocument(): object {
  cached ??= {
    openapi: '3.1.0',
    info: {
      title: 'Mnemo',
      version: '0.1.0',
      description: 'Memory ingestion engine for AI agents (see API.md).',
    },
    paths: {
      '/v1/memory/ingest': {
        post: { requestBody: { content: json(IngestRequest) }, responses: operationWrite },
      },
      '/v1/memory/batch-ingest': {
        post: { requestBody: { content: json(BatchIngestRequest) }, responses: operationWrite },
      },
      '/v1/operations': {
        get: { responses: { '200': { description: 'a page of operations' }, ...errors } },
      },
      '/v1/operations/{id}': {
        get: {
          responses: {
            '200': { description: 'the operation', content: json(Operation) },
            ...errors,
          },
        },
      },
      '/v1/operations/{id}/cancel': {
        post: {
          responses: {
            '200': { description: 'the operation', content: json(Operation) },
            ...errors,
          },
        },
      },
      '/v1/memory/search': {
        get: { responses: { '200': { description: 'ranked results' }, ...errors } },
      },
      '/v1/users/{user_id}/profile': {
        get: { responses: { '200': { description: 'profile and summary' }, ...errors } },
      },
      '/v1/users/{user_id}/memories': {
        get: { responses: { '200': { description: 'a page of memories' }, ...errors } },
      },
      '/v1/users/{user_id}/events': {
        get: { responses: { '200': { description: 'events in date order' }, ...errors } },
      },
      '/v1/sessions/{session_id}/messages': {
        post: {
          requestBody: { content: json(AppendMessagesRequest) },
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
          requestBody: { content: json(CommitRequest) },
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
          requestBody: { content: json(SyncRequest) },
          responses: operationWrite,
        },
      },
      '/v1/users/{user_id}/conversations': {
        get: { responses: { '200': { description: 'conversations in time order' }, ...errors } },
      },
      '/v1/sessions/{session_id}': {
        get: { responses: { '200': { description: 'live count and archives' }, ...errors } },
      },
      '/v1/users/{user_id}': {
        delete: { requestBody: { content: json(DeleteUserRequest) }, responses: operationWrite },
      },
      '/healthz': { get: { responses: { '200': { description: 'process up' } } } },
      '/readyz': {
        get: {
          responses: { '200': { description: 'ready' }, '503': { description: 'not ready' } },
        },
      },
      '/metrics': { get: { responses: { '200': { description: 'Prometheus text' } } } },
    },
  };
  return cached;
}
