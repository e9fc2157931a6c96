import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Test files spawn worker processes of their own; two cores are shared by all of them.
    maxWorkers: 2,
  },
});
