import { z } from 'zod';

import { ErrorCode, MnemoError } from '../core/errors.ts';

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

function failure(message: string, retryable: boolean, cause?: unknown): MnemoError {
  return new MnemoError(
    retryable ? ErrorCode.Unavailable : ErrorCode.Internal,
    `transcriber: ${message}`,
    { retryable, cause },
  );
}

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
      let response: Response;
      try {
        response = await fetch(url, {
          method: 'POST',
          headers:
            options.apiKey === undefined ? {} : { authorization: `Bearer ${options.apiKey}` },
          body: form,
          signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
        });
      } catch (err) {
        throw failure(
          signal.aborted ? 'aborted' : `request failed (${(err as Error).name})`,
          true,
          err,
        );
      }
      if (!response.ok) {
        const retryable =
          response.status === 408 || response.status === 429 || response.status >= 500;
        throw failure(`endpoint answered HTTP ${response.status}`, retryable);
      }
      try {
        return answerSchema.parse(await response.json()).text;
      } catch (err) {
        throw failure('the endpoint did not answer with {"text"}', true, err);
      }
    },
  };
}
