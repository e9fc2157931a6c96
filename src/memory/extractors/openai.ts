import { z } from 'zod';

import { endpointFailure, postToEndpoint } from '../../core/endpoint.ts';
import type { Extraction, Extractor, Message, Turn } from '../types.ts';
import { MAX_SUMMARY } from '../types.ts';

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

const extractionSchema = z.object({
  set: z.record(z.string().regex(/^[a-z0-9_]{1,100}$/), z.string().max(2000)).default({}),
  unset: z.array(z.string().regex(/^[a-z0-9_]{1,100}$/)).default([]),
  events: z
    .array(z.object({ date: z.iso.date(), description: z.string().min(1).max(2000) }))
    .default([]),
  memories: z.array(z.string().min(1).max(2000)).default([]),
});

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

/** The first `end` code units of `text`, one fewer if the last would be half of a pair. */
function cutBefore(text: string, end: number): string {
  return end > 0 && isLowSurrogate(text.charCodeAt(end))
    ? text.slice(0, end - 1)
    : text.slice(0, end);
}

/**
 * Extracts with any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM).
 * Network errors, timeouts, 408/429/5xx and malformed output are retryable; other 4xx are not.
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
      try {
        const parsed = extractionSchema.safeParse(JSON.parse(content));
        if (!parsed.success) {
          throw new Error(parsed.error.issues.map((i) => i.message).join('; '));
        }
        // A key both set and unset would be written twice in one statement: setting wins.
        const unset = parsed.data.unset.filter((k) => !(k in parsed.data.set));
        return { ...parsed.data, unset };
      } catch (err) {
        throw failure('the model did not answer with the expected JSON', true, err);
      }
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
