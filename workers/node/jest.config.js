/**
 * Jest runs the TypeScript sources as ES modules (node --experimental-vm-modules, set by
 * `npm test`), transformed by SWC without type checking: `npm run typecheck` (tsc) does that.
 * Unit tests (test/unit) need nothing; integration tests (test/integration) need RabbitMQ,
 * the built host and plugins, and `npm run build` (they run dist/examples as child processes).
 */
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: {
    '^.+\\.ts$': ['@swc/jest', { jsc: { parser: { syntax: 'typescript' }, target: 'es2022' }, module: { type: 'es6' } }],
  },
  // Sources import './x.js' (NodeNext resolution); Jest must find ./x.ts.
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // Integration tests start hosts and workers: generous on a loaded 2-core machine.
  testTimeout: 60_000,
  // Integration test files share one RabbitMQ and a few CPU cores: run files one at a time.
  maxWorkers: 1,
};
