/**
 * One POST to a model endpoint (OpenAI-compatible chat completions, transcriptions) with the
 * error mapping Mnemo's job retries rely on: network errors, 408, 429 and 5xx are retryable
 * (`unavailable`), and so is no answer within `timeoutMs` (`timeout`); other 4xx are final
 * (`internal`, not retryable); the answer's JSON is validated by the caller's zod schema (a
 * malformed answer is retryable).
 */
import type { z } from 'zod';

import { ErrorCode, MnemoError } from './errors.ts';

/** An error of the model endpoint `label` (e.g. "LLM extractor", "transcriber"). */
export function endpointFailure(
  label: string,
  message: string,
  retryable: boolean,
  cause?: unknown,
): MnemoError {
  return new MnemoError(
    retryable ? ErrorCode.Unavailable : ErrorCode.Internal,
    `${label}: ${message}`,
    { retryable, cause },
  );
}

/** The endpoint's own deadline passed, not the caller's: said so, as the client will read it. */
function timedOut(label: string, timeoutMs: number, cause: unknown): MnemoError {
  return new MnemoError(ErrorCode.Timeout, `${label}: no answer within ${timeoutMs} ms`, {
    retryable: true,
    cause,
  });
}

/** POSTs `body` to `url` and parses the JSON answer with `schema`. */
export async function postToEndpoint<S extends z.ZodType>(options: {
  label: string;
  url: string;
  body: string | FormData;
  headers?: Record<string, string>;
  apiKey?: string | undefined;
  timeoutMs: number;
  signal: AbortSignal;
  schema: S;
  /** Said when the answer does not match `schema`. */
  malformed: string;
}): Promise<z.output<S>> {
  const { label, signal } = options;
  let response: Response;
  try {
    response = await fetch(options.url, {
      method: 'POST',
      headers: {
        ...options.headers,
        ...(options.apiKey === undefined ? {} : { authorization: `Bearer ${options.apiKey}` }),
      },
      body: options.body,
      signal: AbortSignal.any([signal, AbortSignal.timeout(options.timeoutMs)]),
    });
  } catch (err) {
    if (!signal.aborted && (err as Error).name === 'TimeoutError') {
      throw timedOut(label, options.timeoutMs, err);
    }
    throw endpointFailure(
      label,
      signal.aborted ? 'aborted' : `request failed (${(err as Error).name})`,
      true,
      err,
    );
  }
  if (!response.ok) {
    const retryable = response.status === 408 || response.status === 429 || response.status >= 500;
    throw endpointFailure(label, `endpoint answered HTTP ${response.status}`, retryable);
  }
  try {
    return options.schema.parse(await response.json());
  } catch (err) {
    if (!signal.aborted && (err as Error).name === 'TimeoutError') {
      throw timedOut(label, options.timeoutMs, err); // while the answer was being read
    }
    throw endpointFailure(label, options.malformed, true, err);
  }
}
