/**
 * The HTTP contract of API.md as zod schemas: request validation in the server, the
 * OpenAPI document, and (later) the SDK's types all come from here.
 */
import { z } from 'zod';

// PostgreSQL text and jsonb cannot hold U+0000 or a lone surrogate: refuse them at the door
// rather than fail in the database.
const noNul = (s: string) => !s.includes('\u0000') && s.isWellFormed();
const NUL_MESSAGE = 'must be well-formed Unicode without the NUL character (U+0000)';

/** True when every string (keys too) of a JSON value passes `noNul`; false when too deep. */
function cleanJson(value: unknown, depth = 0): boolean {
  if (depth > 32) {
    return false;
  }
  if (typeof value === 'string') {
    return noNul(value);
  }
  if (Array.isArray(value)) {
    return value.every((v) => cleanJson(v, depth + 1));
  }
  if (value !== null && typeof value === 'object') {
    return Object.entries(value).every(([k, v]) => noNul(k) && cleanJson(v, depth + 1));
  }
  return true;
}
const Str = () => z.string().refine(noNul, NUL_MESSAGE);

/**
 * user_id, session_id, segment ids, idempotency keys: 1–256 characters, not `.` or `..`
 * (in a URL path, `/v1/users/%2E%2E` is resolved as a dot segment: such a user could be
 * written but never read or deleted).
 */
export const Id = z
  .string()
  .min(1)
  .max(256)
  .refine(noNul, NUL_MESSAGE)
  .refine((s) => s !== '.' && s !== '..', 'must not be "." or ".."');
const Text = (max: number) => z.string().min(1).max(max).refine(noNul, NUL_MESSAGE);
// Offsets past ±15:59 pass the ISO pattern but not PostgreSQL. An instant before year 1 or
// after 9999 in UTC (year 0, or 0001-01-01T00:00+01:00) would be stored as a BC or five-digit
// year, which JavaScript dates, PGlite's among them, do not read back.
const IsoTime = z.iso
  .datetime({ offset: true })
  .refine((v) => {
    const offset = /([+-])(\d{2}):?(\d{2})$/.exec(v);
    return offset === null || Number(offset[2]) <= 15;
  }, 'the UTC offset must be within ±15:59')
  .refine((v) => {
    const year = new Date(v).getUTCFullYear();
    return year >= 1 && year <= 9999;
  }, 'must fall within the years 0001 to 9999 in UTC');
const IsoDate = z.iso
  .date()
  .refine((v) => Number(v.slice(0, 4)) >= 1, 'year must be 0001 or later');

/** Limits of what one request may carry. */
export const Limits = {
  userQuery: 32_000,
  agentResponse: 64_000,
  metadataBytes: 16_000,
  /** The hard cap; MNEMO_BATCH_MAX_ITEMS (default 100) is the limit in force. */
  batchItems: 1000,
  messageContent: 32_000,
  messagesPerAppend: 100,
  /** The hard cap; MNEMO_SYNC_MAX_SEGMENTS (default 1000) is the limit in force. */
  syncSegments: 10_000,
  transcript: 100_000,
} as const;

const Metadata = z
  .record(z.string().max(200), z.unknown())
  // Depth first, and no further check after it fails (`abort`): serialising a deeply nested
  // value would overflow the stack.
  .refine((m) => cleanJson(m), {
    message: `metadata must nest at most 32 levels and its strings ${NUL_MESSAGE}`,
    abort: true,
  })
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
  agent_response: Str().max(Limits.agentResponse).optional(),
  source: Text(100).optional(),
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

/** One message of a session transcript. */
export const SessionMessage = z.strictObject({
  role: z.enum(['user', 'assistant', 'system', 'tool']),
  content: Text(Limits.messageContent),
  created_at: IsoTime.optional(),
});

/** `POST /v1/sessions/{id}/messages`. */
export const AppendMessagesRequest = z.strictObject({
  user_id: Id,
  messages: z.array(SessionMessage).min(1).max(Limits.messagesPerAppend),
  idempotency_key: Id.optional(),
});
export type AppendMessagesRequest = z.infer<typeof AppendMessagesRequest>;

/** `POST /v1/sessions/{id}/commit` body (optional). */
export const CommitRequest = z.strictObject({ idempotency_key: Id.optional(), ...Wait });

/** One segment of an offline sync: a transcript or 16-bit PCM WAV audio. */
// Segment times are compared in milliseconds here and in microseconds by PostgreSQL: finer
// times could pass one check and fail the other.
const MsTime = IsoTime.refine((v) => !/\.\d{4,}/.test(v), 'at most millisecond precision');

export const SyncSegment = z
  .strictObject({
    id: Id,
    started_at: MsTime,
    ended_at: MsTime,
    transcript: Str().max(Limits.transcript).optional(),
    audio_wav_base64: z
      .string()
      .min(1)
      .regex(/^[A-Za-z0-9+/]+={0,2}$/, 'must be base64')
      .optional(),
  })
  .refine((s) => (s.transcript === undefined) !== (s.audio_wav_base64 === undefined), {
    message: 'a segment carries either transcript or audio_wav_base64',
  })
  .refine((s) => Date.parse(s.ended_at) >= Date.parse(s.started_at), {
    message: 'ended_at must not be before started_at',
    path: ['ended_at'],
  });

/** `POST /v1/sync`. */
export const SyncRequest = z.strictObject({
  user_id: Id,
  device_id: Id.optional(),
  segments: z
    .array(SyncSegment)
    .min(1)
    .max(Limits.syncSegments)
    .refine((list) => new Set(list.map((s) => s.id)).size === list.length, {
      message: 'segment ids must be unique within a request',
    }),
  merge_window_s: z.number().int().min(0).max(86_400).optional(),
  idempotency_key: Id.optional(),
  ...Wait,
});
export type SyncRequest = z.infer<typeof SyncRequest>;

const NOT_A_CURSOR = 'must be a next_cursor this route returned';

const Limit = (max: number, fallback: number) =>
  z.coerce.number().int().min(1).max(max).default(fallback);

/** `GET /v1/users/{id}/conversations`: `cursor` is a page's `next_cursor`. */
export const ConversationsQuery = z.strictObject({
  from: IsoTime.optional(),
  to: IsoTime.optional(),
  limit: Limit(1000, 1000),
  cursor: z
    .string()
    .regex(/^-?\d{1,18}_\d{1,18}$/, NOT_A_CURSOR)
    .refine((v) => {
      // A start in microseconds since 1970, within PostgreSQL's years 0001–9999. (Zod runs
      // this check after a failed regex too: it must not throw on any string.)
      const start = /^(-?\d{1,18})_\d{1,18}$/.exec(v)?.[1];
      if (start === undefined) {
        return false;
      }
      const us = BigInt(start);
      return us >= -62_135_596_800_000_000n && us <= 253_402_300_799_999_999n;
    }, NOT_A_CURSOR)
    .optional(),
});

/** `DELETE /v1/users/{id}` body (optional). */
export const DeleteUserRequest = z.strictObject({ idempotency_key: Id.optional(), ...Wait });

export const OperationsQuery = z.strictObject({
  user_id: Id.optional(),
  status: z.enum(['pending', 'running', 'succeeded', 'failed', 'cancelled']).optional(),
  kind: Text(200).optional(),
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

/** `GET /v1/users/{id}/events`: `cursor` is a page's `next_cursor`. */
export const EventsQuery = z.strictObject({
  from: IsoDate.optional(),
  to: IsoDate.optional(),
  limit: Limit(1000, 1000),
  cursor: z
    .string()
    .regex(/^\d{4}-\d{2}-\d{2}_\d{1,18}$/, NOT_A_CURSOR)
    .refine((v) => IsoDate.safeParse(v.slice(0, 10)).success, NOT_A_CURSOR)
    .optional(),
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
