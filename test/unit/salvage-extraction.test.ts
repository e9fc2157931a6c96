import { describe, expect, it } from 'vitest';

import { salvageExtraction } from '../../src/memory/extractors/openai.ts';

describe('salvageExtraction (a model’s JSON answer, item by item)', () => {
  it('keeps keys of any script and camelCase as snake_case, and an unset named like a prototype member', () => {
    expect(
      salvageExtraction({
        set: { Âge: 30, favoriteColor: 'blue', Город: 'Oslo', '!!!': 'x' },
        unset: ['constructor', 'toString', 'favorite_color'],
      }),
    ).toEqual({
      set: { âge: '30', favorite_color: 'blue', город: 'Oslo' },
      unset: ['constructor', 'to_string'],
      events: [],
      memories: [],
    });
  });

  it('answers undefined for what is not a JSON object', () => {
    for (const answer of [null, [1], 'text', 3]) {
      expect(salvageExtraction(answer)).toBeUndefined();
    }
  });
});
