import type { Logger } from '../core/logger.ts';
import type { Store } from '../store/types.ts';
import { sleep } from './signal.ts';
import type { Job } from './types.ts';

/** The abort reason of a wake-up. */
const WOKEN = Symbol('woken');

/** How many finished jobs the waiter remembers for watchers that arrive after the news. */
const RECENT_LIMIT = 4096;

/**
 * Wakes callers waiting for jobs to finish. Transitions announce finished job ids on the
 * `done` channel after commit; one LISTEN per engine serves every waiter, and waiters also
 * re-check on a slow poll, so a lost notification delays but never strands them. Completions
 * in this process hand over the finished rows of watched jobs, which spares the waiter a read.
 */
export class CompletionWaiter {
  readonly #store: Store;
  readonly #channel: string;
  readonly #logger: Logger;
  readonly #waiters = new Map<number, Set<() => void>>();
  /**
   * Jobs seen finishing lately (oldest first), with their row when a local completion gave it
   * for a job watched here, for as long as it is watched: a row can be large (a turn's
   * words), and once its waiters are gone it only costs memory.
   */
  readonly #recent = new Map<number, Job | null>();
  #listening: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;

  constructor(store: Store, channel: string, logger: Logger) {
    this.#store = store;
    this.#channel = channel;
    this.#logger = logger;
  }

  /** Wakes the waiters of `ids` (finished jobs); used for notifications and local completions. */
  wake(ids: Iterable<number>, rows?: ReadonlyMap<number, Job>): void {
    for (const id of ids) {
      const row = this.#waiters.has(id) ? (rows?.get(id) ?? this.#recent.get(id) ?? null) : null;
      this.#recent.delete(id);
      this.#recent.set(id, row);
      const waiters = this.#waiters.get(id);
      if (waiters !== undefined) {
        for (const wake of waiters) {
          wake();
        }
      }
    }
    for (const oldest of this.#recent.keys()) {
      if (this.#recent.size <= RECENT_LIMIT) {
        break;
      }
      this.#recent.delete(oldest);
    }
  }

  /** Of `ids`, those somebody in this process is watching. */
  watched(ids: readonly number[]): number[] {
    return ids.filter((id) => this.#waiters.has(id));
  }

  /**
   * What this process has seen of job `id` finishing lately: its row (from a local
   * completion), `null` (only the news), or undefined (nothing).
   */
  finished(id: number): Job | null | undefined {
    return this.#recent.get(id);
  }

  /**
   * Resolves once the LISTEN is in place: from then on, every job finishing is seen (or the
   * connection dropped, which the waiters' poll covers).
   */
  listening(): Promise<void> {
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
    await this.listening();
    let controller = new AbortController();
    // With a reason of its own, abort() does not build a DOMException (and its stack).
    const wake = () => controller.abort(WOKEN);
    let set = this.#waiters.get(id);
    if (set === undefined) {
      set = new Set();
      this.#waiters.set(id, set);
    }
    set.add(wake);
    const waiters = set;
    return {
      async wait(ms, signal) {
        const onAbort = () => controller.abort(WOKEN);
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
          if (this.#recent.get(id)) {
            this.#recent.set(id, null); // the news stays; the row goes with its last waiter
          }
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
