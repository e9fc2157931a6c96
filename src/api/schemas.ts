/**
 * The HTTP contract of API.md as zod schemas: request validation in the server, the
 * OpenAPI document, and (later) the SDK's types all come from here.
 */
import { z } from 'zod';

/** user_id, session_id, segment ids, idempotency keys: 1–256 characters. */
export const Id = z.string().min(1).max(256);
const Text = (max: number) => z.string().min(1).max(max);
const IsoTime = z.iso.datetime({ offset: true });

/** Limits of what one request may carry. */
export const Limits = {
  userQuery: 32_000,
  agentResponse: 64_000,
  metadataBytes: 16_000,
  batchItems: 100,
} as const;

const Metadata = z
  .record(z.string().max(200), z.unknown())
  .refine((m) => JSON.stringify(m).length <= Limits.metadataBytes, {
    message: `metadata must serialise to at most ${Limits.metadataBytes} characters`,
  });

const Wait = {
  wait: z.boolean().optional(),
  timeout_ms: z.number().int().min(0).max(120_000).optional(),
};

/** One turn to ingest, without its user (a batch item). */
export const IngestItem = z.strictObject({
  user_query: Text(Limits.userQuery),
  agent_response: z.string().max(Limits.agentResponse).optional(),
  source: z.string().min(1).max(100).optional(),
  session_id: Id.optional(),
  occurred_at: IsoTime.optional(),
  metadata: Metadata.optional(),
});

/** `POST /v1/memory/ingest`. */
export const IngestRequest = IngestItem.extend({
  user_id: Id,
  idempotency_key: Id.optional(),
  ...Wait,
});
export type IngestRequest = z.infer<typeof IngestRequest>;

/** `POST /v1/memory/batch-ingest`. */
export const BatchIngestRequest = z.strictObject({
  user_id: Id,
  items: z.array(IngestItem).min(1).max(Limits.batchItems),
  idempotency_key: Id.optional(),
  ...Wait,
});
export type BatchIngestRequest = z.infer<typeof BatchIngestRequest>;

/** `DELETE /v1/users/{id}` body (optional). */
export const DeleteUserRequest = z.strictObject({ idempotency_key: Id.optional(), ...Wait });

const Limit = (max: number, fallback: number) =>
  z.coerce.number().int().min(1).max(max).default(fallback);

export const OperationsQuery = z.strictObject({
  user_id: Id.optional(),
  status: z.enum(['pending', 'running', 'succeeded', 'failed', 'cancelled']).optional(),
  kind: z.string().min(1).max(200).optional(),
  limit: Limit(200, 50),
  cursor: z
    .string()
    .regex(/^\d{1,18}$/)
    .optional(),
});

export const SearchQuery = z.strictObject({
  user_id: Id,
  q: Text(1000),
  limit: Limit(100, 10),
  types: z
    .string()
    .default('memory,event,conversation')
    .transform((v) => v.split(',').map((t) => t.trim()))
    .pipe(z.array(z.enum(['memory', 'event', 'conversation'])).min(1)),
});

export const MemoriesQuery = z.strictObject({
  limit: Limit(200, 50),
  cursor: z
    .string()
    .regex(/^\d{1,18}$/)
    .optional(),
});

export const EventsQuery = z.strictObject({
  from: z.iso.date().optional(),
  to: z.iso.date().optional(),
});

export const OperationQuery = z.strictObject({ include: z.enum(['children']).optional() });

/** An operation as every write returns it. */
export const Operation = z.object({
  id: z.string(),
  kind: z.string(),
  status: z.enum(['pending', 'running', 'succeeded', 'failed', 'cancelled']),
  attempts: z.number().int(),
  created_at: z.string(),
  started_at: z.string().nullable(),
  finished_at: z.string().nullable(),
  result: z.unknown(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  children: z.object({
    total: z.number().int(),
    pending: z.number().int(),
    running: z.number().int(),
    succeeded: z.number().int(),
    failed: z.number().int(),
    cancelled: z.number().int(),
  }),
});
export type Operation = z.infer<typeof Operation>;

/** The error body of every 4xx/5xx answer. */
export const ErrorBody = z.object({
  error: z.object({ code: z.string(), message: z.string(), details: z.unknown().optional() }),
  request_id: z.string(),
});
