import { z } from 'zod';

import { endpointFailure, postToEndpoint } from '../../core/endpoint.ts';
import type { Extraction, Extractor, Message, Turn } from '../types.ts';
import { MAX_SUMMARY } from '../types.ts';
import { isValidDate, MAX_KEY, snakeCase } from './normalize.ts';

/** Settings of the OpenAI-compatible extractor. */
export interface OpenAiExtractorOptions {
  /** e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1` (Ollama). */
  baseUrl: string;
  model: string;
  apiKey?: string | undefined;
  /** Per request. @defaultValue 30000 */
  timeoutMs?: number;
  /**
   * The most characters of conversation one request sends; longer input keeps its start and
   * its end ({@link fitText}). @defaultValue 200000
   */
  maxInputChars?: number;
}

const completionSchema = z.object({
  choices: z.array(z.object({ message: z.object({ content: z.string().nullable() }) })).min(1),
});

const SYSTEM_PROMPT = `You extract long-term memory about the user from one conversation turn.
Answer with one JSON object and nothing else:
{"set": {"snake_case_attribute": "value"}, "unset": ["attribute"],
 "events": [{"date": "YYYY-MM-DD", "description": "..."}], "memories": ["fact about the user"]}
Use "set" for stable profile attributes the user states, "unset" for attributes the user asks
to forget, "events" for dated events, "memories" for other facts. Empty lists when nothing applies.`;

const failure = (message: string, retryable: boolean, cause?: unknown) =>
  endpointFailure('LLM extractor', message, retryable, cause);

const SUMMARY_PROMPT = `You summarize a conversation between a user and an assistant for the
user's long-term memory, in at most five sentences. Answer with the summary text only.`;

/**
 * `text` within `maxChars`: its first third and its last two thirds (cut at line ends when one
 * is near), with one line in between saying how much was left out. A model's context is
 * finite and some input is not: a conversation grown by sync merges, a session archive of a
 * million characters. Sent whole, such a request fails on every attempt, and the conversation
 * is never summarized.
 */
export function fitText(text: string, maxChars: number): string {
  if (text.length <= maxChars) {
    return text;
  }
  const marker = (left: number) => `\n[… ${left} characters left out here …]\n`;
  const budget = maxChars - marker(text.length).length;
  if (budget <= 0) {
    return cutBefore(text, maxChars); // no room for the line (MNEMO_LLM_MAX_INPUT_CHARS ≥ 1000)
  }
  let headEnd = Math.floor(budget / 3);
  let tailStart = text.length - (budget - headEnd);
  // Whole lines when a line ends in the second half of the head or the first of the tail.
  const lineEnd = text.lastIndexOf('\n', headEnd);
  if (lineEnd > headEnd / 2) {
    headEnd = lineEnd;
  }
  const lineStart = text.indexOf('\n', tailStart);
  if (lineStart >= 0 && lineStart < tailStart + (text.length - tailStart) / 2) {
    tailStart = lineStart + 1;
  }
  // Never half of a surrogate pair at either cut.
  if (headEnd > 0 && isLowSurrogate(text.charCodeAt(headEnd))) {
    headEnd -= 1;
  }
  if (isLowSurrogate(text.charCodeAt(tailStart))) {
    tailStart += 1;
  }
  return text.slice(0, headEnd) + marker(tailStart - headEnd) + text.slice(tailStart);
}

const isLowSurrogate = (code: number) => code >= 0xdc00 && code <= 0xdfff;

/** The longest attribute value, event description or memory a model's answer may give. */
const MAX_TEXT = 2000;

/**
 * A model's text as the store takes it: numbers and booleans as their text, no NUL (jsonb
 * refuses it), no half surrogate pair, trimmed, at most MAX_TEXT; undefined when nothing is
 * left or it was not text.
 */
function cleanText(value: unknown): string | undefined {
  const raw =
    typeof value === 'number' || typeof value === 'boolean'
      ? String(value)
      : typeof value === 'string'
        ? value
        : undefined;
  const text = raw?.replaceAll('\u0000', '').toWellFormed().trim();
  return text === undefined || text === '' ? undefined : cutBefore(text, MAX_TEXT);
}

/** An attribute name a model gave (`favoriteColor`, `Favorite color`) as a snake_case key. */
function attributeKey(name: string): string | undefined {
  const key = snakeCase(name.replace(/(\p{Ll}|\p{N})(\p{Lu})/gu, '$1_$2'));
  return key !== '' && key.length <= MAX_KEY ? key : undefined;
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * What a model's JSON answer holds of an extraction, item by item: an attribute whose value is
 * not text, an event without a real date, a memory that is not text are left out, and the rest
 * is kept. (A whole answer refused for one such item was retried at temperature 0, which
 * repeats it, and the turn was lost.) Undefined when the answer is not a JSON object.
 */
export function salvageExtraction(answer: unknown): Extraction | undefined {
  if (!isRecord(answer)) {
    return undefined;
  }
  const set: Record<string, string> = {};
  for (const [name, value] of Object.entries(isRecord(answer['set']) ? answer['set'] : {})) {
    const key = attributeKey(name);
    const text = cleanText(value);
    if (key !== undefined && text !== undefined) {
      set[key] = text;
    }
  }
  const unsetNames = Array.isArray(answer['unset'])
    ? (answer['unset'] as unknown[])
    : [answer['unset']];
  const unset = [
    ...new Set(
      unsetNames.flatMap((name) => {
        const key = typeof name === 'string' ? attributeKey(name) : undefined;
        // A key both set and unset would be written twice in one statement: setting wins.
        return key === undefined || Object.hasOwn(set, key) ? [] : [key];
      }),
    ),
  ];
  const events = (Array.isArray(answer['events']) ? (answer['events'] as unknown[]) : []).flatMap(
    (event) => {
      if (!isRecord(event) || typeof event['date'] !== 'string' || !isValidDate(event['date'])) {
        return [];
      }
      const description = cleanText(event['description']);
      return description === undefined ? [] : [{ date: event['date'], description }];
    },
  );
  const memories = (
    Array.isArray(answer['memories']) ? (answer['memories'] as unknown[]) : []
  ).flatMap((memory) => (typeof memory === 'string' ? (cleanText(memory) ?? []) : []));
  return { set, unset, events, memories };
}

/** The first `end` code units of `text`, one fewer if the last would be half of a pair. */
function cutBefore(text: string, end: number): string {
  return end > 0 && isLowSurrogate(text.charCodeAt(end))
    ? text.slice(0, end - 1)
    : text.slice(0, end);
}

/**
 * Extracts with any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM).
 * Network errors, timeouts, 408/429/5xx and an answer that is not a JSON object are
 * retryable; other 4xx are not. A JSON object's items are taken one by one
 * ({@link salvageExtraction}).
 */
export function createOpenAiExtractor(options: OpenAiExtractorOptions): Extractor {
  const url = `${options.baseUrl.replace(/\/+$/, '')}/chat/completions`;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const maxInputChars = options.maxInputChars ?? 200_000;

  /** One chat completion; resolves with the answer's text. */
  async function complete(
    system: string,
    user: string,
    json: boolean,
    signal: AbortSignal,
  ): Promise<string> {
    const answer = await postToEndpoint({
      label: 'LLM extractor',
      url,
      headers: { 'content-type': 'application/json' },
      apiKey: options.apiKey,
      body: JSON.stringify({
        model: options.model,
        temperature: 0,
        ...(json ? { response_format: { type: 'json_object' } } : {}),
        messages: [
          { role: 'system', content: system },
          { role: 'user', content: fitText(user, maxInputChars) },
        ],
      }),
      timeoutMs,
      signal,
      schema: completionSchema,
      malformed: 'the endpoint did not answer with a chat completion',
    });
    return answer.choices[0]?.message.content ?? '';
  }

  return {
    name: 'openai',
    async extract(turn: Turn, signal: AbortSignal): Promise<Extraction> {
      const user = `User: ${turn.userQuery}${turn.agentResponse === undefined ? '' : `\nAssistant: ${turn.agentResponse}`}`;
      const content = await complete(SYSTEM_PROMPT, user, true, signal);
      let answer: unknown;
      try {
        answer = JSON.parse(content);
      } catch (err) {
        throw failure('the model did not answer with JSON', true, err);
      }
      const found = salvageExtraction(answer);
      if (found === undefined) {
        throw failure('the model did not answer with a JSON object', true);
      }
      return found;
    },
    async summarize(messages: readonly Message[], signal: AbortSignal): Promise<string> {
      const transcript = messages.map((m) => `${m.role}: ${m.content}`).join('\n');
      const text = (await complete(SUMMARY_PROMPT, transcript, false, signal)).trim();
      if (text === '') {
        throw failure('the model answered with an empty summary', true);
      }
      return text.length > MAX_SUMMARY ? `${text.slice(0, MAX_SUMMARY - 1)}…` : text;
    },
  };
}
