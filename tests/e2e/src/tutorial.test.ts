/**
 * The README's "Your first request type", run as written (issue 19: the tutorial cannot drift).
 *
 * The section's code blocks are read from README.md and run in order in an empty temporary
 * directory, against a real host (started here, its plugins directory `plugins/` and its
 * `plugins.toml` in that directory, as the tutorial assumes) and the real RabbitMQ. An HTML
 * comment before each block says what it is:
 *
 * - `<!-- tutorial: run -->`: a shell script, run with `bash -euo pipefail`; it must exit 0;
 * - `<!-- tutorial: file PATH -->`: written to PATH;
 * - `<!-- tutorial: background TEXT -->`: a long-running command (the worker), started and
 *   waited for until it prints TEXT; stopped at the end;
 * - `<!-- tutorial: output -->`: what the previous `run` block prints, exactly;
 * - `<!-- tutorial: install -->`: installing the SDK and the client. Not run (a venv and an
 *   npm install per run would take minutes and the network): the checkout's own builds stand
 *   in, the way an install makes them available — the Python SDK's venv (made by
 *   workers/python/scripts/setup or scripts/test) first on PATH, `@taskgate/client`,
 *   `typescript` and `@types/node` linked into `node_modules/` with their commands in `node_modules/.bin`.
 *   A missing one fails the test and says how to make it.
 *
 * Then the mistakes the tutorial says the types catch (a misspelt request type, a payload of
 * the wrong type, a misspelt key or a missing result field in the worker) are made in copies of
 * its files, and tsc and mypy must refuse each, naming it.
 *
 * A block without a comment fails the test: nothing in the section goes unchecked. The plugin
 * is built into the workspace's target directory (CARGO_TARGET_DIR, default `<repo>/target`) as
 * in new-plugin.test.ts, so only the plugin API and the plugin compile. npm runs offline here:
 * a command that is not installed fails instead of being downloaded.
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { AMQP_URL, e2e, HOST_BIN, Proc, REPO_ROOT, startHost, withTimeout, type TestContext } from './harness.js';

const SECTION = '## Your first request type';
/** The tutorial's plugin serves this queue (its default name: the tutorial's plugins.toml sets none). */
const QUEUE = 'taskgate.math.primes';

type Step =
  | { kind: 'run'; code: string }
  | { kind: 'file'; file: string; code: string }
  | { kind: 'background'; readyText: string; code: string }
  | { kind: 'output'; code: string }
  | { kind: 'install'; code: string };

/** The section's blocks, in order; throws on a block without a marker or an unknown marker. */
function tutorialSteps(readme: string): Step[] {
  const start = readme.indexOf(`\n${SECTION}\n`);
  assert.ok(start >= 0, `README.md has a section "${SECTION}"`);
  const end = readme.indexOf('\n## ', start + SECTION.length + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const steps: Step[] = [];
  const fence = /(?:<!-- tutorial: ([a-z]+)(?: ([^>]*?))? -->\n)?```[a-z]*\n([\s\S]*?)```\n/g;
  for (const m of section.matchAll(fence)) {
    const [, kind, argument = '', code] = m;
    const line = readme.slice(0, start + (m.index ?? 0)).split('\n').length + 1;
    switch (kind) {
      case 'run':
      case 'output':
      case 'install':
        steps.push({ kind, code });
        break;
      case 'file':
        assert.ok(argument, `README.md:${line}: "tutorial: file" names the file`);
        steps.push({ kind, file: argument, code });
        break;
      case 'background':
        assert.ok(argument, `README.md:${line}: "tutorial: background" names the text that says it is ready`);
        steps.push({ kind, readyText: argument, code });
        break;
      default:
        throw new Error(`README.md:${line}: a tutorial code block without a known <!-- tutorial: … --> marker (${kind})`);
    }
  }
  return steps;
}

/** What `<!-- tutorial: install -->` would have installed, from the checkout; fails if it is not built. */
async function linkCheckoutPackages(dir: string): Promise<string> {
  const venvBin = path.join(REPO_ROOT, 'workers/python/.venv/bin');
  const client = path.join(REPO_ROOT, 'client');
  const needs: Array<[string, string]> = [
    [path.join(venvBin, 'python'), 'the Python SDK venv: run workers/python/scripts/setup'],
    [path.join(venvBin, 'mypy'), 'mypy in the Python SDK venv: run workers/python/scripts/setup'],
    [path.join(client, 'node_modules/typescript/bin/tsc'), 'the client\'s dependencies: `npm ci` in client/'],
    [path.join(client, 'node_modules/@types/node'), 'the client\'s dependencies: `npm ci` in client/'],
    [path.join(client, 'dist/codegen/cli.js'), 'the built client: `npm run build` in client/'],
  ];
  const missing = needs.filter(([file]) => !existsSync(file));
  if (missing.length > 0) {
    throw new Error(`the tutorial needs ${missing.map(([file, how]) => `${file} (${how})`).join('; ')}`);
  }
  const modules = path.join(dir, 'node_modules');
  await mkdir(path.join(modules, '@taskgate'), { recursive: true });
  await mkdir(path.join(modules, '.bin'));
  await symlink(client, path.join(modules, '@taskgate/client'));
  await symlink(path.join(client, 'node_modules/typescript'), path.join(modules, 'typescript'));
  await mkdir(path.join(modules, '@types'));
  await symlink(path.join(client, 'node_modules/@types/node'), path.join(modules, '@types/node'));
  const commands: Record<string, string> = {
    'taskgate-codegen': path.join(client, 'dist/codegen/cli.js'),
    tsc: path.join(client, 'node_modules/typescript/bin/tsc'),
  };
  for (const [name, script] of Object.entries(commands)) {
    const bin = path.join(modules, '.bin', name);
    await writeFile(bin, `#!/bin/sh\nexec node ${JSON.stringify(script)} "$@"\n`);
    await chmod(bin, 0o755);
  }
  return venvBin;
}

/** Runs a shell script in `dir`; returns its exit code and output. */
async function runScript(
  ctx: TestContext,
  dir: string,
  env: NodeJS.ProcessEnv,
  code: string,
): Promise<{ exit: number | null; stdout: string; stderr: string }> {
  const started = Date.now();
  const child = spawn('bash', ['-euo', 'pipefail', '-c', code], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exit = await withTimeout(
    new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', resolve);
    }),
    300_000,
    `the tutorial block\n${code}`,
  ).finally(() => child.kill('SIGKILL'));
  ctx.note(`tutorial block → ${exit} after ${Date.now() - started} ms\n${code}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
  return { exit, stdout, stderr };
}

/** Runs one `run` block; returns its stdout. */
async function runBlock(ctx: TestContext, dir: string, env: NodeJS.ProcessEnv, code: string): Promise<string> {
  const { exit, stdout, stderr } = await runScript(ctx, dir, env, code);
  assert.equal(exit, 0, `the tutorial block\n${code}\nexited ${exit}:\n${stdout}\n${stderr}`);
  return stdout;
}

/** The mistakes the tutorial says the types catch: each one's check fails, naming it. */
async function assertMistakesCaught(ctx: TestContext, dir: string, env: NodeJS.ProcessEnv): Promise<void> {
  const caller = readFileSync(path.join(dir, 'caller.ts'), 'utf8');
  const worker = readFileSync(path.join(dir, 'primes_worker.py'), 'utf8');
  const mistakes: Array<{ what: string; file: string; text: string; check: string; says: RegExp }> = [
    {
      what: 'a misspelt request type',
      file: 'misspelt.ts',
      text: caller.replace('makeBackendRequest("math.primes", { limit: 100 })', 'makeBackendRequest("math.prime", { limit: 100 })'),
      check: 'npx tsc --noEmit --strict --module nodenext --target es2022 --skipLibCheck misspelt.ts taskgate-types.ts',
      says: /Argument of type '"math\.prime"' is not assignable/,
    },
    {
      what: 'a payload of the wrong type',
      file: 'wrong_payload.ts',
      text: caller.replace('{ limit: 100 }', '{ limit: "100" }'),
      check: 'npx tsc --noEmit --strict --module nodenext --target es2022 --skipLibCheck wrong_payload.ts taskgate-types.ts',
      says: /Type 'string' is not assignable to type 'number'/,
    },
    {
      what: 'a misspelt payload key in the worker',
      file: 'misspelt_worker.py',
      text: worker.replace('payload["limit"]', 'payload["limt"]'),
      check: 'mypy --strict misspelt_worker.py taskgate_types.py',
      says: /has no key "limt"/,
    },
    {
      what: 'a result without `largest`',
      file: 'incomplete_worker.py',
      text: worker.replace(', "largest": found[-1]}', '}'),
      check: 'mypy --strict incomplete_worker.py taskgate_types.py',
      says: /Missing key "largest"/,
    },
  ];
  for (const mistake of mistakes) {
    const original = mistake.file.endsWith('.ts') ? caller : worker;
    assert.notEqual(mistake.text, original, `the tutorial's code still has what ${mistake.what} changes`);
    await writeFile(path.join(dir, mistake.file), mistake.text);
    const { exit, stdout, stderr } = await runScript(ctx, dir, env, mistake.check);
    assert.notEqual(exit, 0, `${mistake.what} is caught by \`${mistake.check}\``);
    assert.match(stdout + stderr, mistake.says, `${mistake.what}: the error names it`);
  }
}

e2e(
  'the README tutorial "Your first request type" runs as written: plugin, hot reload, typed Python worker, strict TypeScript caller',
  async (ctx) => {
    const steps = tutorialSteps(readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8'));
    for (const kind of ['run', 'file', 'background', 'output', 'install'] as const) {
      assert.ok(steps.some((s) => s.kind === kind), `the tutorial has a "${kind}" block`);
    }

    // The tutorial's directory: empty but for the running host's plugins directory and plugins.toml.
    const dir = await ctx.tmpDir();
    const pluginsDir = path.join(dir, 'plugins');
    await mkdir(pluginsDir);
    const host = await startHost(ctx, {
      pluginsDir,
      plugins: { echo: false, wordcount: false, countdown: false },
      expectTypes: 0,
    });
    // Appending to it through the link changes the file the host watches.
    await symlink(host.configPath, path.join(dir, 'plugins.toml'));
    ctx.queues.add(QUEUE);

    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PATH: [path.dirname(HOST_BIN), path.join(dir, 'node_modules/.bin'), process.env.PATH].join(path.delimiter),
      CARGO_TARGET_DIR: process.env.CARGO_TARGET_DIR ?? path.join(REPO_ROOT, 'target'),
      TASKGATE_URL: host.url,
      TASKGATE_AMQP_URL: AMQP_URL,
      npm_config_offline: 'true',
      npm_config_update_notifier: 'false',
      NO_COLOR: '1',
    };
    let lastOutput: string | undefined;
    for (const step of steps) {
      switch (step.kind) {
        case 'install': {
          const venvBin = await linkCheckoutPackages(dir);
          env.PATH = `${venvBin}${path.delimiter}${env.PATH}`;
          env.VIRTUAL_ENV = path.dirname(venvBin);
          break;
        }
        case 'file':
          await mkdir(path.dirname(path.join(dir, step.file)), { recursive: true });
          await writeFile(path.join(dir, step.file), step.code);
          break;
        case 'run':
          lastOutput = await runBlock(ctx, dir, env, step.code);
          break;
        case 'output':
          assert.ok(lastOutput !== undefined, 'an output block follows a run block');
          assert.equal(lastOutput.trim(), step.code.trim(), 'what the README says the command prints');
          break;
        case 'background': {
          const proc = new Proc('tutorial-worker', 'bash', ['-c', 'cd "$0" && exec bash -euo pipefail -c "$1"', dir, step.code], env);
          ctx.procs.push(proc);
          await proc.waitForLine(new RegExp(step.readyText), 30_000);
          break;
        }
      }
    }
    await assertMistakesCaught(ctx, dir, env);
  },
  { timeout: 600_000 },
);
