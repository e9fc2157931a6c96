/**
 * A reusable wake-up: `wait()` resolves on the next `notify()` (or after `timeoutMs`).
 * A notify with nobody waiting is remembered, so a wake-up between two waits is not lost.
 */
export class WakeSignal {
  #pending = false;
  #resolve: (() => void) | undefined;

  notify(): void {
    if (this.#resolve !== undefined) {
      const resolve = this.#resolve;
      this.#resolve = undefined;
      resolve();
    } else {
      this.#pending = true;
    }
  }

  wait(timeoutMs?: number): Promise<void> {
    if (this.#pending) {
      this.#pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      this.#resolve = () => {
        if (timer !== undefined) {
          clearTimeout(timer);
        }
        resolve();
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.#resolve = undefined;
          resolve();
        }, timeoutMs);
      }
    });
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
