export { DEFAULT_BACKOFF, retryDelayMs } from './backoff.ts';
export { createEngine, type Engine, type EngineOptions, type WaitOptions } from './engine.ts';
export type { EngineMetrics } from './metrics.ts';
export * from './types.ts';
export { Worker, type WorkerOptions } from './worker.ts';
