/**
 * A local HTTP server speaking the OpenAI audio-transcriptions protocol (multipart `file` and
 * `model`, JSON answer `{"text"}`), for tests and benchmarks. What it answers for a file is
 * scripted by the file's SHA-256: a text, a delay, or an HTTP failure; unscripted files are
 * answered "(unscripted)" after `defaultDelayMs`.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';

import { encodeWav } from '../../src/sync/audio.ts';

export interface SttAnswer {
  text?: string;
  delayMs?: number;
  /** Answer with this HTTP status instead. */
  status?: number;
}

export interface FakeStt {
  url: string;
  /** Files received, by hash, in arrival order. */
  received: string[];
  script(wav: Buffer, answer: SttAnswer): void;
  defaultDelayMs: number;
  close(): Promise<void>;
}

export function wavHash(wav: Buffer): string {
  return createHash('sha256').update(wav).digest('hex');
}

/** A second of noise at 16 kHz, distinct per `seed` (so each has its own hash). */
export function speechWav(seed: number, seconds = 0.2): Buffer {
  const samples = new Int16Array(Math.round(16_000 * seconds));
  let x = seed * 7919 + 1;
  for (let i = 0; i < samples.length; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    samples[i] = (x % 20_000) - 10_000;
  }
  return encodeWav(samples, 16_000);
}

/** Silence (all zero samples). */
export function silentWav(seconds = 0.2): Buffer {
  return encodeWav(new Int16Array(Math.round(16_000 * seconds)), 16_000);
}

export async function startFakeStt(defaultDelayMs = 0): Promise<FakeStt> {
  const scripts = new Map<string, SttAnswer>();
  const received: string[] = [];
  const state = { defaultDelayMs };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      void (async () => {
        if (req.method !== 'POST' || req.url !== '/v1/audio/transcriptions') {
          res.writeHead(404).end();
          return;
        }
        // The multipart body, split by hand (cheap: the benchmark measures Mnemo, not this
        // server): the `file` part's bytes, and whether a `model` part came with it.
        const boundary = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(req.headers['content-type'] ?? '');
        const body = Buffer.concat(chunks);
        const delimiter = Buffer.from(`--${boundary?.[1] ?? boundary?.[2] ?? ''}`);
        const parts: Buffer[] = [];
        for (let at = body.indexOf(delimiter); at >= 0;) {
          const next = body.indexOf(delimiter, at + delimiter.length);
          if (next < 0) {
            break;
          }
          parts.push(body.subarray(at + delimiter.length + 2, next - 2)); // CRLF around
          at = next;
        }
        const named = (name: string) =>
          parts.find((p) => p.subarray(0, 200).toString('latin1').includes(`name="${name}"`));
        const filePart = named('file');
        if (filePart === undefined || named('model') === undefined) {
          res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":{}}');
          return;
        }
        const file = filePart.subarray(filePart.indexOf('\r\n\r\n') + 4);
        const hash = wavHash(file);
        received.push(hash);
        const answer = scripts.get(hash) ?? { text: '(unscripted)' };
        setTimeout(() => {
          if (answer.status !== undefined) {
            res
              .writeHead(answer.status, { 'content-type': 'application/json' })
              .end('{"error":{"message":"scripted failure"}}');
            return;
          }
          res
            .writeHead(200, { 'content-type': 'application/json' })
            .end(JSON.stringify({ text: answer.text ?? '' }));
        }, answer.delayMs ?? state.defaultDelayMs);
      })();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    received,
    script: (wav, answer) => scripts.set(wavHash(wav), answer),
    get defaultDelayMs() {
      return state.defaultDelayMs;
    },
    set defaultDelayMs(v: number) {
      state.defaultDelayMs = v;
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
