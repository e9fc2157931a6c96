import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createOpenAiExtractor } from '../../src/memory/extractors/openai.ts';
import { type FakeLlm, startFakeLlm } from '../helpers/fake-llm.ts';
import { openHttp } from '../helpers/http.ts';

describe('OpenAI-compatible extractor (against a local chat-completions server)', () => {
  let llm: FakeLlm;

  beforeAll(async () => {
    llm = await startFakeLlm();
  });

  afterAll(async () => {
    await llm.close();
  });

  const signal = () => new AbortController().signal;

  it('sends the model, key and turn, and validates the JSON answer', async () => {
    const extractor = createOpenAiExtractor({ baseUrl: llm.url, model: 'tiny', apiKey: 'sk-test' });
    const out = await extractor.extract(
      { userQuery: 'My name is Ada. I like tea.', agentResponse: 'Hi Ada' },
      signal(),
    );
    expect(out).toEqual({ set: { name: 'Ada' }, unset: [], events: [], memories: ['I like tea'] });
    const last = llm.requests.at(-1);
    expect(last).toMatchObject({ model: 'tiny', authorization: 'Bearer sk-test' });
    expect(last?.messages[1]?.content).toBe('User: My name is Ada. I like tea.\nAssistant: Hi Ada');
  });

  it('maps 5xx, 429, timeouts (as `timeout`) and malformed output to retryable errors and other 4xx to final ones', async () => {
    const extractor = createOpenAiExtractor({ baseUrl: llm.url, model: 'tiny', timeoutMs: 100 });
    llm.failNext(1, 503);
    await expect(extractor.extract({ userQuery: 'x y' }, signal())).rejects.toMatchObject({
      code: 'unavailable',
      retryable: true,
    });
    llm.failNext(1, 429);
    await expect(extractor.extract({ userQuery: 'x y' }, signal())).rejects.toMatchObject({
      retryable: true,
    });
    llm.failNext(1, 400);
    await expect(extractor.extract({ userQuery: 'x y' }, signal())).rejects.toMatchObject({
      code: 'internal',
      retryable: false,
    });
    llm.garbleNext(1);
    await expect(extractor.extract({ userQuery: 'x y' }, signal())).rejects.toMatchObject({
      retryable: true,
    });
    llm.latencyMs = 500;
    await expect(extractor.extract({ userQuery: 'x y' }, signal())).rejects.toMatchObject({
      code: 'timeout',
      retryable: true,
    });
    llm.latencyMs = 0;
    // The timed-out request is still being answered: let it finish before the next test.
    await new Promise((resolve) => setTimeout(resolve, 600));
    const refused = createOpenAiExtractor({ baseUrl: 'http://127.0.0.1:1/v1', model: 'm' });
    await expect(refused.extract({ userQuery: 'x y' }, signal())).rejects.toMatchObject({
      code: 'unavailable',
    });
  });

  it('sends at most maxInputChars of a long conversation: its start and its end', async () => {
    const extractor = createOpenAiExtractor({
      baseUrl: llm.url,
      model: 'tiny',
      maxInputChars: 2000,
    });
    const messages = Array.from({ length: 200 }, (_, i) => ({
      role: 'user' as const,
      content: `I said thing number ${i}.`,
    }));
    expect(await extractor.summarize(messages, signal())).not.toBe('');
    const sent = llm.requests.at(-1)?.messages[1]?.content ?? '';
    expect(sent.length).toBeLessThanOrEqual(2000);
    expect(sent.startsWith('user: I said thing number 0.\n')).toBe(true);
    expect(sent.endsWith('\nuser: I said thing number 199.')).toBe(true);
    expect(sent).toMatch(/\n\[… \d+ characters left out here …\]\n/);
  });

  it('drives ingest end to end, a failed first call being retried by the engine', async () => {
    // A fresh server: a request of the test above that timed out before reaching the shared
    // one (a loaded machine) would leave its failure armed for this test.
    const fresh = await startFakeLlm();
    const h = await openHttp('pglite', 'openai', {
      env: { MNEMO_EXTRACTOR: 'openai', MNEMO_LLM_BASE_URL: fresh.url, MNEMO_LLM_MODEL: 'tiny' },
    });
    try {
      fresh.failNext(1, 502);
      const res = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'u',
        user_query: 'My job is pilot.',
        timeout_ms: 20_000,
      });
      expect(res.body).toMatchObject({
        status: 'succeeded',
        attempts: 2,
        result: { profile: { set: { job: 'pilot' } } },
      });
    } finally {
      await h.dispose();
      await fresh.close();
    }
  });

  it('keeps what a loose answer gets right and leaves out the rest, instead of losing the turn', async () => {
    const fresh = await startFakeLlm();
    const h = await openHttp('pglite', 'openai-loose', {
      env: { MNEMO_EXTRACTOR: 'openai', MNEMO_LLM_BASE_URL: fresh.url, MNEMO_LLM_MODEL: 'tiny' },
    });
    try {
      fresh.answerNext(
        JSON.stringify({
          set: { age: 30, favoriteColor: 'blue', 'Home town': 'Oslo', pets: { cat: 1 }, x: null },
          unset: 'nickname',
          events: [
            { date: '0000-01-01', description: 'year zero' },
            { date: '2024-02-30', description: 'no such day' },
            { date: '2024-05-01', description: 'went\u0000 to Bergen' },
            { date: '2024-05-02' },
          ],
          memories: ['likes tea', 5, '', 'half \ud800 pair'],
        }),
      );
      const res = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'u',
        user_query: 'Lots of things.',
        timeout_ms: 20_000,
      });
      expect(res.body).toMatchObject({ status: 'succeeded', attempts: 1 });
      expect(res.body['result']).toMatchObject({
        profile: {
          set: { age: '30', favorite_color: 'blue', home_town: 'Oslo' },
          unset: ['nickname'],
        },
        events: { added: [{ date: '2024-05-01', description: 'went to Bergen' }] },
        memories: { added: [{ text: 'likes tea' }, { text: 'half \ufffd pair' }] },
        summary: { turn_count: 1 },
      });
      expect(Object.keys(res.body['result'].profile.set)).toHaveLength(3);
      // Not a JSON object at all: retried (and then failed), not stored.
      for (const answer of ['[1, 2]', '[1, 2]', '[1, 2]']) {
        fresh.answerNext(answer);
      }
      const bad = await h.call('POST', '/v1/memory/ingest', {
        user_id: 'u',
        user_query: 'More things.',
        timeout_ms: 20_000,
      });
      expect(bad.body).toMatchObject({
        status: 'failed',
        attempts: 3,
        error: { message: expect.stringContaining('JSON object') },
      });
    } finally {
      await h.dispose();
      await fresh.close();
    }
  });
});
