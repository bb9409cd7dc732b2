// Jest runs the TypeScript sources through ts-jest as CommonJS (the package itself is ESM,
// built by tsc): `.js` suffixes of relative imports are mapped back to the `.ts` files.
/** @type {import('jest').Config} */
export default {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts', '**/*.test.tsx'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: { module: 'commonjs', moduleResolution: 'node', jsx: 'react-jsx', esModuleInterop: true, isolatedModules: true } }],
  },
};
