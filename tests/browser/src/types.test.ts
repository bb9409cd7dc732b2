/**
 * The React demo's generated types (examples/react-demo/src/taskgate-types.ts) are what
 * `taskgate schemas --config plugins.toml | taskgate-codegen --strict` (the demo is strict) makes from the plugins today:
 * a plugin whose schema changed without regenerating them fails here.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { HOST_BIN, REPO_ROOT } from './stack.js';

const CODEGEN = path.join(REPO_ROOT, 'client/dist/codegen/cli.js');
const DEMO_TYPES = path.join(REPO_ROOT, 'examples/react-demo/src/taskgate-types.ts');

test('the React demo’s generated types are up to date with the plugins', () => {
  assert.ok(existsSync(CODEGEN), `build the client first (cd client && npm ci && npm run build): ${CODEGEN}`);
  const schemas = spawnSync(HOST_BIN, ['schemas', '--config', path.join(REPO_ROOT, 'plugins.toml')], {
    encoding: 'utf8',
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TASKGATE_'))),
  });
  assert.equal(schemas.status, 0, `taskgate schemas failed:\n${schemas.stderr}`);
  const parsed = JSON.parse(schemas.stdout) as { requestTypes: Record<string, unknown> };
  assert.ok(parsed.requestTypes['text.wordcount'] && parsed.requestTypes['demo.countdown'], 'the demo’s request types are served');
  const check = spawnSync(process.execPath, [CODEGEN, '--strict', '--output', DEMO_TYPES, '--check'], {
    input: schemas.stdout,
    encoding: 'utf8',
  });
  assert.equal(
    check.status,
    0,
    `${check.stderr}\nregenerate: target/debug/taskgate schemas --config plugins.toml | node client/dist/codegen/cli.js --strict --output examples/react-demo/src/taskgate-types.ts`,
  );
});
