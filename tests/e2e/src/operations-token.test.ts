/**
 * `/readyz` and `/metrics` show the host id, the reply queue's name and plugin versions (security
 * review, issue 20 #4). With `[host] operations_token_env` (or `_file`) they answer only a request
 * that carries `Authorization: Bearer <token>`; `/healthz`, which shows nothing, stays open for
 * load balancers. Without the key nothing changes.
 */

import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

import { e2e, pluginsToml, runHostCli, startHost, waitUntil } from './harness.js';

const TOKEN = 'ops-token-for-the-e2e-test-1234567890';

e2e('operations token: /readyz and /metrics need the bearer token; /healthz does not', async (ctx) => {
  const host = await startHost(ctx, {
    hostSettings: { operations_token_env: 'E2E_OPS_TOKEN' },
    env: { E2E_OPS_TOKEN: TOKEN },
    waitReady: false,
  });
  const bearer = { Authorization: `Bearer ${TOKEN}` };
  await waitUntil(async () => (await fetch(`${host.url}/readyz`, { headers: bearer })).status === 200 || undefined, 20_000, '/readyz with the token');
  for (const route of ['/readyz', '/metrics']) {
    const without = await fetch(`${host.url}${route}`);
    assert.equal(without.status, 401, `${route} without a token`);
    assert.equal(without.headers.get('www-authenticate'), 'Bearer');
    const body = await without.text();
    assert.ok(!body.includes('taskgate.reply.'), `${route}: nothing revealed`);
    assert.equal((await fetch(`${host.url}${route}`, { headers: { Authorization: 'Bearer wrong' } })).status, 401, `${route} with a wrong token`);
    assert.equal((await fetch(`${host.url}${route}`, { headers: bearer })).status, 200, `${route} with the token`);
  }
  assert.equal((await fetch(`${host.url}/healthz`)).status, 200);
  assert.ok(!host.logs().join('\n').includes(TOKEN), 'the token is never logged');
});

e2e('operations token: one shorter than 16 characters stops the host with a message naming the key', async (ctx) => {
  const dir = await ctx.tmpDir();
  const { text } = pluginsToml(ctx, { hostSettings: { operations_token_env: 'E2E_OPS_SHORT' } });
  const config = path.join(dir, 'plugins.toml');
  await writeFile(config, text);
  process.env.E2E_OPS_SHORT = 'short';
  try {
    const run = await runHostCli(ctx, ['--config', config], 20_000);
    assert.notEqual(run.code, 0, 'the host must not start');
    assert.match(run.stderr, /operations_token/);
    assert.ok(!run.stderr.includes(': short') && !run.stderr.includes('"short"'), run.stderr);
  } finally {
    delete process.env.E2E_OPS_SHORT;
  }
});
