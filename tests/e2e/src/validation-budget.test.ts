/**
 * A plugin's `validate` runs on the host's I/O thread: a slow one would stall every
 * connection (issue 20, "Also"). Each request type has a validation budget
 * (`validation_budget_ms`, 1 s by default): a payload whose validation takes longer is refused
 * `TIMEOUT` saying so. A type whose validation was once seen slow (and any large payload) is
 * validated off the I/O thread from then on, so other connections are served meanwhile.
 */

import assert from 'node:assert/strict';

import { assertAccepted, assertAlive, assertRefused, connect, copyPluginsDir, e2e, FakeWorker, startHost, TEST_PLUGINS_DIR, TYPES, uniqueId } from './harness.js';
import path from 'node:path';

e2e('a validation over its budget is refused TIMEOUT; while a slow one runs, other connections are served', async (ctx) => {
  const dir = await copyPluginsDir(ctx, [path.join(TEST_PLUGINS_DIR, 'libtaskgate_fixture_slow.so')]);
  const host = await startHost(ctx, { pluginsDir: dir, plugins: { slow: { validation_budget_ms: 300 } } });
  const slowWorker = await FakeWorker.start(ctx, host.queues[TYPES.slow]);
  await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const a = await connect(ctx, host.url, { name: 'slow-caller' });
  const b = await connect(ctx, host.url, { name: 'other' });

  // Within the budget: accepted (and the host has now seen this type's validation take time).
  assertAccepted(await a.request({ id: uniqueId(), requestType: TYPES.slow, payload: { sleepMs: 50 } }), 'a 50 ms validation');
  await slowWorker.next();

  // Over the budget: refused TIMEOUT at the budget, not when the plugin is done.
  const started = Date.now();
  const slow = a.request({ id: uniqueId(), requestType: TYPES.slow, payload: { sleepMs: 2000 } });
  await new Promise((resolve) => setTimeout(resolve, 50));
  const otherStarted = Date.now();
  assertAccepted(await b.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'not stalled' }), 'the other connection');
  const otherTook = Date.now() - otherStarted;
  assert.ok(otherTook < 1000, `the other connection was served while the slow validation ran (${otherTook} ms)`);
  const error = assertRefused(await slow, 'TIMEOUT', 'the 2 s validation');
  const refusedAfter = Date.now() - started;
  assert.match(error.message, /validat.*300 ms/);
  assert.ok(refusedAfter < 1500, `refused at the budget (${refusedAfter} ms)`);
  assertAlive(host);
});
