import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { fitText } from '../../src/memory/extractors/openai.ts';

describe('fitText (what one model call sends of a long conversation)', () => {
  it('leaves text within the limit alone', () => {
    expect(fitText('user: hello', 1000)).toBe('user: hello');
  });

  it('keeps whole lines from the start and the end and says how much it left out', () => {
    const lines = Array.from({ length: 400 }, (_, i) => `user: line ${i} ${'x'.repeat(40)}`);
    const text = lines.join('\n');
    const out = fitText(text, 5000);
    expect(out.length).toBeLessThanOrEqual(5000);
    expect(out.startsWith(`${lines[0]}\n`)).toBe(true);
    expect(out.endsWith(`\n${lines[399]}`)).toBe(true);
    const [head = '', tail = ''] = out.split(/\n\[… \d+ characters left out here …\]\n/);
    // The start is about a third, the end about two thirds; both are whole lines.
    expect(head.length).toBeGreaterThan(1200);
    expect(tail.length).toBeGreaterThan(2 * head.length - 200);
    expect(text.startsWith(head) && text.endsWith(tail)).toBe(true);
    expect(lines).toContain(head.split('\n').at(-1));
    expect(lines).toContain(tail.split('\n')[0]);
    const left = Number(/\[… (\d+) characters/.exec(out)?.[1]);
    expect(head.length + left + tail.length).toBe(text.length);
  });

  it('cuts a line without lines ends between characters, never inside one', () => {
    const text = 'user: ' + '😀'.repeat(5000);
    for (let max = 1000; max < 1010; max++) {
      const out = fitText(text, max);
      expect(out.length).toBeLessThanOrEqual(max);
      expect(() => encodeURIComponent(out)).not.toThrow();
    }
  });

  it('cuts to the limit without its line when the limit leaves no room for the line', () => {
    expect(fitText('a'.repeat(100), 10)).toBe('a'.repeat(10));
    expect(fitText('😀'.repeat(50), 11)).toBe('😀'.repeat(5));
    // A text starting with half a pair (invalid, but it may come) does not make the cut wrap.
    for (let max = 20; max < 60; max++) {
      expect(fitText('\udc00' + 'b'.repeat(100), max).length).toBeLessThanOrEqual(max);
    }
  });

  it('stays within the limit, keeps the start and the end, and never splits a character', () => {
    fc.assert(
      fc.property(
        fc.array(fc.string({ unit: 'grapheme', maxLength: 300 }), { maxLength: 200 }),
        fc.integer({ min: 1000, max: 20_000 }),
        (parts, max) => {
          const text = parts.join('\n');
          const out = fitText(text, max);
          expect(out.length).toBeLessThanOrEqual(Math.max(max, 0));
          if (text.length <= max) {
            expect(out).toBe(text);
            return;
          }
          const match = /\n\[… (\d+) characters left out here …\]\n/.exec(out);
          expect(match).not.toBeNull();
          const head = out.slice(0, match?.index);
          const tail = out.slice((match?.index ?? 0) + (match?.[0].length ?? 0));
          expect(text.startsWith(head) && text.endsWith(tail)).toBe(true);
          expect(head.length + Number(match?.[1]) + tail.length).toBe(text.length);
          // Well-formed UTF-16: no lone surrogate at either cut.
          expect(() => encodeURIComponent(out)).not.toThrow();
        },
      ),
      { numRuns: 200 },
    );
  });
});
