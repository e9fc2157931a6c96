import { z } from 'zod';

import { postToEndpoint } from '../core/endpoint.ts';

/** Turns speech into text. Implementations must honour `signal`. */
export interface Transcriber {
  transcribe(wav: Buffer, signal: AbortSignal): Promise<string>;
}

/** Settings of the OpenAI-compatible transcriber. */
export interface OpenAiTranscriberOptions {
  /** e.g. `https://api.openai.com/v1` or a local whisper server's `/v1`. */
  baseUrl: string;
  model: string;
  apiKey?: string | undefined;
  /** Per request. @defaultValue 60000 */
  timeoutMs?: number;
}

const answerSchema = z.object({ text: z.string() });

/**
 * Transcribes with any OpenAI-compatible `POST /audio/transcriptions` endpoint (multipart:
 * `file`, `model`; JSON answer `{"text"}`). Network errors, timeouts, 408/429/5xx and
 * malformed answers are retryable; other 4xx are not.
 */
export function createOpenAiTranscriber(options: OpenAiTranscriberOptions): Transcriber {
  const url = `${options.baseUrl.replace(/\/+$/, '')}/audio/transcriptions`;
  const timeoutMs = options.timeoutMs ?? 60_000;
  return {
    async transcribe(wav, signal) {
      const form = new FormData();
      form.append('file', new Blob([wav], { type: 'audio/wav' }), 'segment.wav');
      form.append('model', options.model);
      form.append('response_format', 'json');
      const answer = await postToEndpoint({
        label: 'transcriber',
        url,
        apiKey: options.apiKey,
        body: form,
        timeoutMs,
        signal,
        schema: answerSchema,
        malformed: 'the endpoint did not answer with {"text"}',
      });
      return answer.text;
    },
  };
}
