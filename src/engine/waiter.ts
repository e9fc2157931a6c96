import type { Logger } from '../core/logger.ts';
import type { Store } from '../store/types.ts';
import { sleep } from './signal.ts';

/**
 * Wakes callers waiting for jobs to finish. Transitions announce finished job ids on the
 * `done` channel after commit; one LISTEN per engine serves every waiter, and waiters also
 * re-check on a slow poll, so a lost notification delays but never strands them.
 */
export class CompletionWaiter {
  readonly #store: Store;
  readonly #channel: string;
  readonly #logger: Logger;
  readonly #waiters = new Map<number, Set<() => void>>();
  #listening: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;

  constructor(store: Store, channel: string, logger: Logger) {
    this.#store = store;
    this.#channel = channel;
    this.#logger = logger;
  }

  /** Wakes the waiters of `ids` (finished jobs); used for notifications and local completions. */
  wake(ids: Iterable<number>): void {
    for (const id of ids) {
      const waiters = this.#waiters.get(id);
      if (waiters !== undefined) {
        for (const wake of waiters) {
          wake();
        }
      }
    }
  }

  #ensureListening(): Promise<void> {
    this.#listening ??= this.#store
      .listen(this.#channel, (payload) => this.wake(payload.split(',').map(Number)))
      .then((unlisten) => {
        this.#unlisten = unlisten;
      })
      .catch((err: unknown) => {
        this.#listening = undefined;
        this.#logger.warn({ err }, 'cannot listen for finished jobs; waiters poll');
      });
    return this.#listening;
  }

  /**
   * Starts watching job `id`: a wake-up that arrives before `wait` is called is kept, so a
   * caller can watch, then read the job, then wait, without missing a finish in between.
   */
  async watch(
    id: number,
  ): Promise<{ wait(ms: number, signal?: AbortSignal): Promise<void>; close(): void }> {
    await this.#ensureListening();
    let controller = new AbortController();
    const wake = () => controller.abort();
    let set = this.#waiters.get(id);
    if (set === undefined) {
      set = new Set();
      this.#waiters.set(id, set);
    }
    set.add(wake);
    const waiters = set;
    return {
      async wait(ms, signal) {
        const onAbort = () => controller.abort();
        signal?.addEventListener('abort', onAbort, { once: true });
        try {
          await sleep(ms, controller.signal);
        } finally {
          signal?.removeEventListener('abort', onAbort);
          // Re-arm for the next wait.
          if (controller.signal.aborted) {
            controller = new AbortController();
          }
        }
      },
      close: () => {
        waiters.delete(wake);
        if (waiters.size === 0 && this.#waiters.get(id) === waiters) {
          this.#waiters.delete(id);
        }
      },
    };
  }

  async close(): Promise<void> {
    await this.#listening;
    await this.#unlisten?.();
    this.#unlisten = undefined;
    this.#listening = undefined;
  }
}
