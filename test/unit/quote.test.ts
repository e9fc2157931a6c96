import { describe, expect, it } from 'vitest';

import { inlineParameters, quoteLiteral } from '../../src/store/quote.ts';

describe('SQL literals for statements sent in one message', () => {
  it('quotes strings, doubling quotes, and switches to E-strings for backslashes', () => {
    expect(quoteLiteral("it's")).toBe("'it''s'");
    expect(quoteLiteral('a\\b')).toBe(" E'a\\\\b'");
    expect(quoteLiteral(null)).toBe('NULL');
    expect(quoteLiteral(undefined)).toBe('NULL');
    expect(quoteLiteral(12.5)).toBe("'12.5'");
    expect(quoteLiteral(true)).toBe("'true'");
    expect(quoteLiteral(new Date('2026-01-02T03:04:05.678Z'))).toBe("'2026-01-02T03:04:05.678Z'");
    expect(quoteLiteral({ a: "'" })).toBe(`'{"a":"''"}'`);
  });

  it('writes flat arrays as array literals, elements quoted and escaped', () => {
    expect(quoteLiteral([1, 2])).toBe(`'{"1","2"}'`);
    // The element's escape is a backslash, so the whole literal becomes an E-string.
    expect(quoteLiteral(['a,b', 'c"d', null])).toBe(` E'{"a,b","c\\\\"d",NULL}'`);
    expect(quoteLiteral([])).toBe("'{}'");
    expect(() => quoteLiteral([[1]])).toThrow(TypeError);
    expect(() => quoteLiteral([{ a: 1 }])).toThrow(TypeError);
  });

  it('refuses what it cannot write safely', () => {
    expect(() => quoteLiteral(Number.NaN)).toThrow(TypeError);
    expect(() => quoteLiteral('a\0b')).toThrow(TypeError);
    expect(() => quoteLiteral(Symbol('x'))).toThrow(TypeError);
  });

  it('replaces placeholders outside quotes only, by number', () => {
    expect(
      inlineParameters(
        `select $1, '$2', "$3", $10`,
        Array.from({ length: 10 }, (_, i) => i + 1),
      ),
    ).toBe(`select '1', '$2', "$3", '10'`);
    expect(inlineParameters(`select 'it''s', $1`, ['x'])).toBe(`select 'it''s', 'x'`);
    expect(() => inlineParameters('select $2', ['x'])).toThrow(/2/);
    expect(() => inlineParameters('select $$x$$', [])).toThrow(/dollar/);
    expect(() => inlineParameters("select 'open", [])).toThrow(/quote/);
  });
});
