import { describe, expect, it } from 'vitest';

import { extractByRules } from '../../src/memory/extractors/rules.ts';

describe('rules extractor', () => {
  it('reads profile attributes in snake_case, location and age', () => {
    const out = extractByRules({
      userQuery:
        'My favorite color is blue. My name is Ada Lovelace! I live in London. I am 36 years old.',
    });
    expect(out.set).toEqual({
      favorite_color: 'blue',
      name: 'Ada Lovelace',
      location: 'London',
      age: '36',
    });
    expect(out.memories).toEqual([]);
  });

  it('takes the last of several values and lets forget remove an attribute', () => {
    expect(extractByRules({ userQuery: 'I moved to Paris. I moved to Rome.' }).set).toEqual({
      location: 'Rome',
    });
    const out = extractByRules({ userQuery: 'Forget my favorite color.' });
    expect(out).toMatchObject({ set: {}, unset: ['favorite_color'] });
    // Forgotten, then said again: the last word wins, and the key is in one list only.
    for (const [query, set] of [
      ['Forget my location. I live in Paris.', { location: 'Paris' }],
      ['Forget my age. I am 30 years old.', { age: '30' }],
      ['Forget my pet. My pet is a cat.', { pet: 'a cat' }],
    ] as const) {
      expect(extractByRules({ userQuery: query })).toMatchObject({ set, unset: [] });
    }
    // Letters of any script make the key; accents are kept (composed), not dropped.
    expect(extractByRules({ userQuery: 'My Größe is 180. My город is Oslo.' }).set).toEqual({
      größe: '180',
      город: 'Oslo',
    });
    expect(extractByRules({ userQuery: 'I live in Paris. Forget my location.' })).toMatchObject({
      set: {},
      unset: ['location'],
    });
  });

  it('reads temporal events in both word orders and rejects impossible dates', () => {
    const out = extractByRules({
      userQuery:
        'On 2024-05-01, I ran a marathon. I visited Kyoto on 2023-11-20. I left on 2024-02-30.',
    });
    expect(out.events).toEqual([
      { date: '2024-05-01', description: 'I ran a marathon' },
      { date: '2023-11-20', description: 'I visited Kyoto' },
    ]);
    expect(out.memories).toEqual(['I left on 2024-02-30']);
  });

  it('reads a dated move as an event, and leaves over-long attribute names to memory', () => {
    expect(extractByRules({ userQuery: 'I moved to Oslo on 2024-05-01.' })).toMatchObject({
      set: {},
      events: [{ date: '2024-05-01', description: 'I moved to Oslo' }],
    });
    const long = extractByRules({ userQuery: `My ${'very '.repeat(40)}long thing is x.` });
    expect(long.set).toEqual({});
    expect(long.memories).toHaveLength(1);
    expect(extractByRules({ userQuery: 'On 0000-01-01 I was born.' }).events).toEqual([]);
  });

  it('keeps other declarative sentences as memories, once each, and skips questions and exclamations', () => {
    const out = extractByRules({
      userQuery: 'I prefer tea over coffee. What time is it? Wow! i prefer  tea over coffee. Hello',
    });
    expect(out.memories).toEqual(['I prefer tea over coffee']);
  });
});
