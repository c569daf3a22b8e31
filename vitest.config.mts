import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration tests start real servers on private ports; files run in parallel
    // workers, each picking free ports.
    pool: 'forks',
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
