/**
 * Plugin files the host must not load (issue 20 #7, README "Security"): a library that aborts
 * the process as soon as it is initialised is inspected in a child process first, so it is
 * refused with one log line — at start and when dropped into a running host's directory — and
 * the host stays up; a plugin that is not enabled is never mapped into the host; a file others
 * may write, and a symbolic link out of the plugins directory, are refused with one line each.
 */

import assert from 'node:assert/strict';
import { chmod, copyFile, symlink } from 'node:fs/promises';
import path from 'node:path';

import {
  assertAccepted,
  assertAlive,
  connect,
  copyPluginsDir,
  e2e,
  runHostCli,
  startHost,
  TEST_PLUGINS_DIR,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';
import { metric, scrape } from './prometheus.js';

const ABORTING = 'libtaskgate_fixture_aborting.so';

e2e('a library that aborts when loaded is refused with one line, at start and on hot reload; the host stays up and serves the rest', async (ctx) => {
  const dir = await copyPluginsDir(ctx, [path.join(TEST_PLUGINS_DIR, ABORTING)]);

  const { code, stdout } = await runHostCli(ctx, ['plugins', '--plugins-dir', dir]);
  assert.equal(code, 0, '`taskgate plugins` survives it');
  const reported = stdout.split('\n').find((l) => l.includes(ABORTING));
  assert.match(reported ?? '', /REFUSED.*crashed the process that loaded it.*signal 6 \(SIGABRT\)/, reported);

  const host = await startHost(ctx, { pluginsDir: dir });
  const lines = host.logs().filter((l) => l.includes(ABORTING));
  assert.equal(lines.length, 1, `exactly one log line names ${ABORTING}:\n${lines.join('\n')}`);
  assert.match(lines[0]!, /plugin refused: .*: it crashed the process that loaded it/);
  const client = await connect(ctx, host.url);
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'still here' } }));

  // Dropped into the running host's directory under another name: the same.
  const since = host.logs().length;
  await copyFile(path.join(TEST_PLUGINS_DIR, ABORTING), path.join(dir, 'libdropped_in.so'));
  await waitUntil(() => host.logs().slice(since).some((l) => l.includes('libdropped_in.so')), 30_000, 'the refusal of the dropped-in file');
  assertAlive(host);
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'after the drop' } }));
});

e2e('a plugin that is not enabled is not mapped into the host; `taskgate plugins` still lists it', async (ctx) => {
  const host = await startHost(ctx, { plugins: { countdown: false } });
  const metrics = await scrape(host);
  assert.equal(metric(metrics, 'taskgate_plugin_libraries_mapped'), 2, 'echo and wordcount only');
  const { code, stdout } = await runHostCli(ctx, ['plugins', '--config', host.configPath]);
  assert.equal(code, 0);
  assert.match(stdout, /plugin `countdown` .* — loads, not enabled in plugins.toml/);
});

e2e('a plugin file others may write, and a link out of the plugins directory, are refused with one line each', async (ctx) => {
  const dir = await copyPluginsDir(ctx);
  await chmod(path.join(dir, 'libtaskgate_plugin_wordcount.so'), 0o666);
  await symlink(path.join(TEST_PLUGINS_DIR, 'libtaskgate_fixture_panicky.so'), path.join(dir, 'libpanicky_link.so'));
  const host = await startHost(ctx, { pluginsDir: dir, plugins: { panicky: {} }, expectTypes: 2 });
  const writable = host.logs().filter((l) => l.includes('libtaskgate_plugin_wordcount.so') && /refused/.test(l));
  assert.equal(writable.length, 1, writable.join('\n'));
  assert.match(writable[0]!, /writable by group or others \(mode 0666\)/);
  const link = host.logs().filter((l) => l.includes('libpanicky_link.so'));
  assert.equal(link.length, 1, link.join('\n'));
  assert.match(link[0]!, /symbolic link to .* outside the plugins directory/);
  const client = await connect(ctx, host.url);
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'served' }));
});
