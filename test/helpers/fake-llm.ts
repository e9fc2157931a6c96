/**
 * A local HTTP server speaking the OpenAI chat-completions protocol, for tests and benchmarks:
 * it answers with the rules extractor's reading of the user's words, after `latencyMs`.
 * `failNext(n, status)` makes the next n requests fail; `garbleNext(n)` returns non-JSON text;
 * `answerNext(content)` gives the next request's answer as written.
 */
import { createServer, type Server } from 'node:http';

import { extractByRules, summarizeByRules } from '../../src/memory/extractors/rules.ts';
import type { Message } from '../../src/memory/types.ts';

export interface FakeLlm {
  url: string;
  requests: {
    model: string;
    authorization: string | undefined;
    messages: { role: string; content: string }[];
  }[];
  latencyMs: number;
  /** The most requests it held at once (being delayed) since the last reset. */
  peakInFlight(): number;
  resetPeak(): void;
  failNext(count: number, status: number): void;
  garbleNext(count: number): void;
  answerNext(content: string): void;
  close(): Promise<void>;
}

export async function startFakeLlm(latencyMs = 0): Promise<FakeLlm> {
  let failures: { count: number; status: number } = { count: 0, status: 500 };
  let garbles = 0;
  const scripted: string[] = [];
  const requests: FakeLlm['requests'] = [];
  const state = { latencyMs, inFlight: 0, peak: 0 };
  const server: Server = createServer((req, res) => {
    let raw = '';
    req.on('data', (chunk: Buffer) => (raw += chunk.toString()));
    req.on('end', () => {
      state.inFlight += 1;
      state.peak = Math.max(state.peak, state.inFlight);
      const answer = () => {
        state.inFlight -= 1;
        if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
          res.writeHead(404).end();
          return;
        }
        const body = JSON.parse(raw) as {
          model: string;
          messages: { role: string; content: string }[];
        };
        requests.push({
          model: body.model,
          authorization: req.headers.authorization,
          messages: body.messages,
        });
        if (failures.count > 0) {
          failures.count -= 1;
          res
            .writeHead(failures.status, { 'content-type': 'application/json' })
            .end('{"error":{"message":"nope"}}');
          return;
        }
        const userText = body.messages.find((m) => m.role === 'user')?.content ?? '';
        const system = body.messages.find((m) => m.role === 'system')?.content ?? '';
        let content: string;
        if (system.startsWith('You summarize')) {
          // A transcript of "role: content" lines: summarized by the rules.
          content = summarizeByRules(
            userText.split('\n').map((line) => {
              const [role = 'user', ...rest] = line.split(': ');
              return { role: role as Message['role'], content: rest.join(': ') };
            }),
          );
        } else {
          const query = /^User: (.*?)(\nAssistant:|$)/s.exec(userText)?.[1] ?? '';
          content = JSON.stringify(extractByRules({ userQuery: query }));
        }
        if (garbles > 0) {
          garbles -= 1;
          content = 'Sure! Here is what I found: profile...';
        }
        content = scripted.shift() ?? content;
        res.writeHead(200, { 'content-type': 'application/json' }).end(
          JSON.stringify({
            id: 'chatcmpl-test',
            object: 'chat.completion',
            model: body.model,
            choices: [{ index: 0, finish_reason: 'stop', message: { role: 'assistant', content } }],
          }),
        );
      };
      if (state.latencyMs > 0) {
        setTimeout(answer, state.latencyMs);
      } else {
        answer();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    get latencyMs() {
      return state.latencyMs;
    },
    set latencyMs(v: number) {
      state.latencyMs = v;
    },
    peakInFlight: () => state.peak,
    resetPeak: () => (state.peak = state.inFlight),
    failNext: (count, status) => (failures = { count, status }),
    garbleNext: (count) => (garbles = count),
    answerNext: (content) => void scripted.push(content),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
