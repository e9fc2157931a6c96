import { describe, expect, it } from 'vitest';

import { canonicalJson } from '../../src/core/json.ts';
import { retryDelayMs } from '../../src/engine/backoff.ts';
import { sleep, WakeSignal } from '../../src/engine/signal.ts';

describe('retryDelayMs', () => {
  const policy = { baseMs: 100, maxMs: 1000 };

  it('doubles per attempt with half of the delay random', () => {
    expect(retryDelayMs(1, policy, () => 0)).toBe(50);
    expect(retryDelayMs(1, policy, () => 1)).toBe(100);
    expect(retryDelayMs(3, policy, () => 0)).toBe(200);
    expect(retryDelayMs(3, policy, () => 1)).toBe(400);
  });

  it('never exceeds the cap', () => {
    expect(retryDelayMs(30, policy, () => 1)).toBe(1000);
    expect(retryDelayMs(30, policy, () => 0)).toBe(500);
  });
});

describe('canonicalJson', () => {
  it('gives equal text for equal values whatever the key order', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: null } })).toBe(
      canonicalJson({ a: { c: null, d: [1, { y: 2, z: 1 }] }, b: 1 }),
    );
    expect(canonicalJson({ a: 1 })).not.toBe(canonicalJson({ a: 2 }));
    expect(canonicalJson({ a: undefined, b: 1 })).toBe('{"b":1}');
  });
});

describe('WakeSignal', () => {
  it('remembers a notify that came before the wait', async () => {
    const signal = new WakeSignal();
    signal.notify();
    const started = performance.now();
    await signal.wait(5000);
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it('wakes a waiter, and times out without a notify', async () => {
    const signal = new WakeSignal();
    const waiting = signal.wait(5000);
    signal.notify();
    await waiting;
    const started = performance.now();
    await signal.wait(30);
    expect(performance.now() - started).toBeGreaterThanOrEqual(25);
  });

  it('sleep ends early when its signal aborts', async () => {
    const controller = new AbortController();
    const started = performance.now();
    const sleeping = sleep(5000, controller.signal);
    controller.abort();
    await sleeping;
    expect(performance.now() - started).toBeLessThan(1000);
  });
});
