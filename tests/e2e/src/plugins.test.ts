/**
 * Plugins as the operator and the client see them: `taskgate plugins` lists what the plugins
 * directory holds (request types, queues) and refuses a file that is not a plugin with a
 * reason; the host started on that directory logs one line naming the refused file and
 * serves the good plugins. A plugin that panics is answered with INTERNAL (§1 error table)
 * and does not take the host down.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

import {
  assertAccepted,
  assertAlive,
  assertRefused,
  connect,
  copyPluginsDir,
  e2e,
  FakeWorker,
  request,
  runHostCli,
  startHost,
  TEST_PLUGINS_DIR,
  TYPES,
  uniqueId,
} from './harness.js';

const GARBAGE = 'garbage.so';

async function pluginsDirWithGarbage(ctx: Parameters<typeof copyPluginsDir>[0]): Promise<string> {
  const dir = await copyPluginsDir(ctx);
  await writeFile(path.join(dir, GARBAGE), randomBytes(8192));
  return dir;
}

e2e('`taskgate plugins` lists the example plugins with their request types and queues, and refuses a garbage .so with a reason', async (ctx) => {
  const dir = await pluginsDirWithGarbage(ctx);
  const tmp = await ctx.tmpDir();
  const config = path.join(tmp, 'plugins.toml');
  const queues = {
    [TYPES.echo]: ctx.queueFor(TYPES.echo),
    [TYPES.wordcount]: ctx.queueFor(TYPES.wordcount),
    [TYPES.countdown]: ctx.queueFor(TYPES.countdown),
  };
  await writeFile(
    config,
    [
      '[host]',
      `plugins_dir = ${JSON.stringify(dir)}`,
      '[plugins.echo]',
      'enabled = true',
      `queue = ${JSON.stringify(queues[TYPES.echo])}`,
      '[plugins.wordcount]',
      'enabled = true',
      `queue = ${JSON.stringify(queues[TYPES.wordcount])}`,
      '[plugins.countdown]',
      'enabled = true',
      `queue = ${JSON.stringify(queues[TYPES.countdown])}`,
      '',
    ].join('\n'),
  );
  const { code, stdout } = await runHostCli(ctx, ['plugins', '--config', config]);
  assert.equal(code, 0, '`taskgate plugins` exits 0');
  for (const [type, queue] of Object.entries(queues)) {
    const line = stdout.split('\n').find((l) => l.includes(type) && l.includes(queue));
    assert.ok(line, `lists request type ${type} with its queue ${queue}:\n${stdout}`);
  }
  for (const plugin of ['echo', 'wordcount', 'countdown']) {
    assert.ok(stdout.includes(plugin), `lists plugin ${plugin}`);
  }
  const garbageLines = stdout.split('\n').filter((l) => l.includes(GARBAGE));
  assert.ok(garbageLines.length >= 1, `names ${GARBAGE}:\n${stdout}`);
  const refusal = garbageLines.join(' ');
  assert.match(refusal, /refused|not a (taskgate )?plugin|cannot load|failed/i, `says ${GARBAGE} is refused: ${refusal}`);
  assert.ok(refusal.replace(GARBAGE, '').replace(/refused/i, '').replace(/[\s:—-]/g, '').length > 5, `gives a reason: ${refusal}`);
  // No queue is declared by listing.
  const check = await ctx.tryOnChannel((ch) => ch.checkQueue(queues[TYPES.echo]));
  assert.equal(check.ok, false, '`taskgate plugins` does not declare queues');
});

e2e('a host whose plugins directory holds a garbage .so logs one refusal line naming it and serves the good plugins', async (ctx) => {
  const dir = await pluginsDirWithGarbage(ctx);
  const host = await startHost(ctx, { pluginsDir: dir });
  const lines = host.logs().filter((l) => l.includes(GARBAGE));
  assert.equal(lines.length, 1, `exactly one log line names ${GARBAGE}:\n${lines.join('\n')}`);
  assert.match(lines[0], /refus|not a (taskgate )?plugin|cannot load|failed/i);

  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'served' });
  const r = await worker.next();
  await worker.result(r, r.json());
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'served' });
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'a' } }));
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.countdown, payload: { from: 1, intervalMs: 1 } }));
  assertAlive(host);
});

function panickyFiles(): string[] {
  let files: string[] = [];
  try {
    files = readdirSync(TEST_PLUGINS_DIR).filter((f) => f.endsWith('.so') && /panick/i.test(f));
  } catch {
    /* reported below */
  }
  if (files.length === 0) {
    throw new Error(`the panicky test plugin is not in ${TEST_PLUGINS_DIR}: build it with scripts/build-plugins`);
  }
  return files.map((f) => path.join(TEST_PLUGINS_DIR, f));
}

e2e('a plugin that panics: INTERNAL in the ack, and the host keeps serving it and the others', async (ctx) => {
  const dir = await copyPluginsDir(ctx, panickyFiles());
  const host = await startHost(ctx, { pluginsDir: dir, plugins: { panicky: {} } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  for (let i = 0; i < 5; i++) {
    const error = assertRefused(
      await client.request({ id: uniqueId(), requestType: TYPES.panic, payload: { panic: true } }),
      'INTERNAL',
      `panicking validation #${i}`,
    );
    assert.ok(error.message.length > 0);
  }
  await client.expectQuiet(300);
  assertAlive(host);

  // The same plugin without a panic, and the other plugins, still work.
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.panic, payload: {} }), 'test.panic with {}');
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'after the panic' });
  const r = await worker.next();
  await worker.result(r, r.json());
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'after the panic' });
  // And another connection too.
  const other = await connect(ctx, host.url);
  assertAccepted(await other.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'still' } }));
  assertAlive(host);
});

e2e('plugins built against another plugin API (incompatible layout, outdated version) are refused: one log line each, the rest is served', async (ctx) => {
  let fixtures: string[] = [];
  try {
    fixtures = readdirSync(TEST_PLUGINS_DIR).filter((f) => f.endsWith('.so') && /incompatible|outdated/.test(f));
  } catch {
    /* reported below */
  }
  assert.ok(fixtures.length >= 2, `the incompatible and outdated fixtures are in ${TEST_PLUGINS_DIR} (scripts/build-plugins)`);
  const dir = await copyPluginsDir(ctx, fixtures.map((f) => path.join(TEST_PLUGINS_DIR, f)));

  const config = path.join(await ctx.tmpDir(), 'plugins.toml');
  await writeFile(config, `[host]\nplugins_dir = ${JSON.stringify(dir)}\n[plugins.echo]\nenabled = true\n`);
  const { code, stdout } = await runHostCli(ctx, ['plugins', '--config', config]);
  assert.equal(code, 0);
  for (const f of fixtures) {
    const line = stdout.split('\n').find((l) => l.includes(f));
    assert.ok(line && /refused/i.test(line), `\`taskgate plugins\` reports ${f} as refused: ${line}`);
    assert.match(line, /rebuild it against taskgate-plugin-api \d+\.\d+\.\d+/, `and says which plugin API to build against: ${line}`);
  }

  const host = await startHost(ctx, { pluginsDir: dir });
  for (const f of fixtures) {
    const lines = host.logs().filter((l) => l.includes(f));
    assert.equal(lines.length, 1, `exactly one log line names ${f}:\n${lines.join('\n')}`);
  }
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'served' });
  const r = await worker.next();
  await worker.result(r, r.json());
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'served' });
  assertAlive(host);
});
