/**
 * The plugin author's path, end to end (issue 19's proof, the plugin half): `taskgate new
 * plugin` writes a crate into a temporary directory outside the workspace, Cargo builds it
 * there (against the plugin API of this very host, with the host's resolved dependencies),
 * the library is dropped into a running host's plugins directory, the host loads it, and a
 * request is served through a worker. A range written once, as a schemars attribute, is
 * enforced by the host in the schema's words; the plugin's `check` still says what a schema
 * cannot.
 *
 * The build shares the workspace's target directory (CARGO_TARGET_DIR, default
 * `<repo>/target`): every dependency is already built there, only the API crate and the plugin
 * are compiled (seconds, not minutes).
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, rename } from 'node:fs/promises';
import path from 'node:path';

import {
  assertRefused,
  connect,
  e2e,
  FakeWorker,
  REPO_ROOT,
  request,
  runHostCli,
  startHost,
  uniqueId,
  waitUntil,
  withTimeout,
  type TestContext,
} from './harness.js';

const NAME = 'scaffolded';
const REQUEST_TYPE = `${NAME}.count`;
const LIBRARY = `libtaskgate_plugin_${NAME}.so`;

/** `cargo <command>` in `dir`, into the workspace's target directory; returns that directory. */
async function cargo(ctx: TestContext, dir: string, command: 'build' | 'test'): Promise<string> {
  const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(REPO_ROOT, 'target');
  const started = Date.now();
  const child = spawn('cargo', [command, '--quiet'], {
    cwd: dir,
    env: { ...process.env, CARGO_TARGET_DIR: targetDir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const code = await withTimeout(
    new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', resolve);
    }),
    240_000,
    `cargo ${command} of the scaffolded plugin`,
  ).finally(() => child.kill('SIGKILL'));
  ctx.note(`cargo ${command} in ${dir} → ${code} after ${Date.now() - started} ms\n${output}`);
  assert.equal(code, 0, `cargo ${command} of the scaffolded plugin:\n${output}`);
  return targetDir;
}

e2e(
  'taskgate new plugin: a crate outside the workspace builds, a running host loads it, its schema is enforced and a worker serves it',
  async (ctx) => {
    // 1. Scaffold outside the workspace (the temporary directory is not under the repository).
    const crate = path.join(await ctx.tmpDir(), NAME);
    assert.ok(!crate.startsWith(REPO_ROOT), `${crate} is outside the workspace`);
    const created = await runHostCli(ctx, ['new', 'plugin', NAME, '--dir', crate]);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, new RegExp(`request type \`${REQUEST_TYPE.replace('.', '\\.')}\``));
    const cargoToml = readFileSync(path.join(crate, 'Cargo.toml'), 'utf8');
    const version = (await runHostCli(ctx, ['--version'])).stdout.match(/plugin API (\S+)\)/)?.[1];
    assert.ok(version, 'taskgate --version names the plugin API');
    assert.ok(cargoToml.includes(`version = "=${version}"`), `the API is pinned to ${version}:\n${cargoToml}`);
    // A bad name or an existing directory: refused, nothing written.
    const bad = await runHostCli(ctx, ['new', 'plugin', 'Bad.Name', '--dir', path.join(crate, '..', 'bad')]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /invalid plugin name `Bad\.Name`/);
    assert.ok(!existsSync(path.join(crate, '..', 'bad')));
    const again = await runHostCli(ctx, ['new', 'plugin', NAME, '--dir', crate]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already exists/);

    // 2. Its unit tests pass, and it builds, where it is.
    await cargo(ctx, crate, 'test');
    const targetDir = await cargo(ctx, crate, 'build');
    const built = path.join(targetDir, 'debug', LIBRARY);
    assert.ok(existsSync(built), `${built} was built`);

    // 3. A running host, its plugin enabled in plugins.toml but not yet in the directory.
    const pluginsDir = path.join(await ctx.tmpDir(), 'plugins');
    await mkdir(pluginsDir);
    const host = await startHost(ctx, {
      pluginsDir,
      plugins: { echo: false, wordcount: false, countdown: false, [NAME]: {} },
      expectTypes: 0,
    });
    const queue = host.queues[NAME];
    assert.ok(queue);
    // Dropped in the careful way (copy, then rename): the host loads it by itself.
    await copyFile(built, path.join(pluginsDir, `${LIBRARY}.tmp`));
    await rename(path.join(pluginsDir, `${LIBRARY}.tmp`), path.join(pluginsDir, LIBRARY));
    await waitUntil(
      async () => {
        const { body } = await host.readyz();
        const plugins = (body as { plugins?: Array<{ name: string; requestTypes: string[] }> })?.plugins ?? [];
        return plugins.some((p) => p.name === NAME && p.requestTypes.includes(REQUEST_TYPE)) || undefined;
      },
      30_000,
      `the host serves ${REQUEST_TYPE}`,
      50,
    );

    // 4. A request, served by a worker.
    const worker = await FakeWorker.start(ctx, queue);
    const client = await connect(ctx, host.url);
    const id = uniqueId();
    const pending = request(client, { id, requestType: REQUEST_TYPE, payload: { from: 1, to: 5 } });
    const delivered = await worker.next();
    assert.deepEqual(delivered.json(), { from: 1, to: 5 });
    await worker.chunk(delivered, { done: 2 }, 0);
    await worker.result(delivered, { count: 5 });
    worker.ack(delivered);
    const outcome = await pending;
    assert.deepEqual(outcome.final, { id, type: 'result', data: { count: 5 } });
    assert.deepEqual(
      outcome.responses.filter((r) => r.type === 'chunk').map((r) => (r as { data: unknown }).data),
      [{ done: 2 }],
    );

    // 5. The range is the schema's alone (the plugin's check says nothing about it): refused
    //    by the host, in the schema's words, and never published.
    const tooBig = await client.request({ id: uniqueId(), requestType: REQUEST_TYPE, payload: { from: 1, to: 20_000_000 } });
    const refusal = assertRefused(tooBig, 'INVALID_PAYLOAD', 'a range violation');
    assert.deepEqual(refusal.details, {
      problems: [{ pointer: '/to', message: '20000000 is greater than the maximum of 10000000' }],
    });
    const negative = await client.request({ id: uniqueId(), requestType: REQUEST_TYPE, payload: { from: -5, to: 1 } });
    const negativeRefusal = assertRefused(negative, 'INVALID_PAYLOAD', 'a negative number');
    assert.equal(
      (negativeRefusal.details as { problems: Array<{ message: string }> }).problems[0].message,
      '-5 is less than the minimum of 0',
      "the schema's words, not serde's",
    );
    const unknown = await client.request({ id: uniqueId(), requestType: REQUEST_TYPE, payload: { from: 1, to: 2, extra: 1 } });
    assert.deepEqual(assertRefused(unknown, 'INVALID_PAYLOAD', 'an unknown field').details, {
      problems: [{ pointer: '', message: "Additional properties are not allowed ('extra' was unexpected)" }],
    });
    // What a schema cannot say is the plugin's check.
    const reversed = await client.request({ id: uniqueId(), requestType: REQUEST_TYPE, payload: { from: 5, to: 2 } });
    assert.deepEqual(assertRefused(reversed, 'INVALID_PAYLOAD', 'to < from').details, {
      problems: [{ pointer: '/to', message: 'must be at least `from`' }],
    });
    await worker.expectNothing(300);
  },
  { timeout: 300_000 },
);
