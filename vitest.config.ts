// Test runner settings: real sockets everywhere, so give each test room and never run files in one shared process state.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    globals: false,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Two cores on the CI machine: more workers only add contention to socket-heavy suites.
    maxWorkers: 2,
  },
});
