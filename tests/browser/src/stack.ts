/**
 * The whole stack for the browser test: the real `taskgate` host serving the built React demo
 * (its static dir) on a free port, the real RabbitMQ, and the example workers of the SDKs
 * (`WORKERS` below says which serves which type).
 *
 * RabbitMQ is shared with whatever else runs: every run uses its own queue names
 * (`browser.<runId>.<type>`, through a private plugins.toml) and deletes them at the end;
 * every process started here is stopped, whatever happens.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import amqp from 'amqplib';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const AMQP_URL = process.env.TASKGATE_BROWSER_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';
export const HOST_BIN = process.env.TASKGATE_BIN ?? path.join(REPO_ROOT, 'target/debug/taskgate');
export const PLUGINS_DIR = process.env.TASKGATE_BROWSER_PLUGINS_DIR ?? path.join(REPO_ROOT, 'build/plugins');
export const DEMO_DIST = path.join(REPO_ROOT, 'examples/react-demo/dist');
const RUST_WORKERS_BIN =
  process.env.TASKGATE_WORKERS_BIN ?? path.join(REPO_ROOT, 'target/debug/taskgate-example-workers');
const PYTHON_DIR = path.join(REPO_ROOT, 'workers/python');
const NODE_DIR = path.join(REPO_ROOT, 'workers/node');

export const WORDCOUNT = 'text.wordcount';
export const COUNTDOWN = 'demo.countdown';

// ---------------------------------------------------------------------------------------
// Processes

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A child process whose output lines are kept, for waiting on them and for failure reports. */
export class Proc {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly exited: Promise<number | null>;
  private waiters = new Set<(line: string) => void>();

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    options: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
  ) {
    this.child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...cleanEnv(), ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(this.child);
    for (const stream of [this.child.stdout, this.child.stderr]) {
      createInterface({ input: stream! }).on('line', (line) => {
        this.lines.push(line);
        for (const waiter of this.waiters) waiter(line);
      });
    }
    this.exited = new Promise((resolve) => {
      this.child.once('error', (error) => {
        this.lines.push(`failed to start: ${error.message}`);
        live.delete(this.child);
        resolve(null);
      });
      this.child.once('exit', (code) => {
        live.delete(this.child);
        resolve(code);
      });
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && live.has(this.child);
  }

  /** The first line (seen or to come) matching `pattern`; fails if the process exits first. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const m = line.match(pattern);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      const waiter = (line: string) => {
        const m = line.match(pattern);
        if (m) {
          done();
          resolve(m);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no line matching ${pattern} within ${timeoutMs} ms\n${this.tail()}`));
      }, timeoutMs);
      this.waiters.add(waiter);
      void this.exited.then((code) => {
        if (!this.waiters.has(waiter)) return;
        done();
        reject(new Error(`${this.name} exited (${code}) before printing ${pattern}\n${this.tail()}`));
      });
    });
  }

  tail(n = 30): string {
    return this.lines.slice(-n).map((l) => `    | ${l}`).join('\n');
  }

  async stop(): Promise<void> {
    if (!live.has(this.child)) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Our environment without TASKGATE_* settings that would override the test's plugins.toml. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TASKGATE_')) env[k] = v;
  env.NO_COLOR = '1';
  return env;
}

// ---------------------------------------------------------------------------------------
// Workers

/**
 * Which worker serves each of the demo's request types: `text.wordcount` the Python SDK's
 * example (`python`) or the Rust one; `demo.countdown` the Node SDK's example (`node`) or the
 * Rust one. TASKGATE_BROWSER_WORKERS lists the SDKs to use, e.g. `python,node`; `rust` alone
 * uses only the Rust example workers.
 */
export const WORKERS = (() => {
  const kinds = (process.env.TASKGATE_BROWSER_WORKERS ?? 'python,node').split(',').map((k) => k.trim());
  return {
    [WORDCOUNT]: kinds.includes('python') ? 'python' : 'rust',
    [COUNTDOWN]: kinds.includes('node') ? 'node' : 'rust',
  } as const;
})();

export function describeWorkers(): string {
  return Object.entries(WORKERS)
    .map(([type, kind]) => `${type}: ${kind}`)
    .join(', ');
}

function need(file: string, what: string, how: string): void {
  if (!existsSync(file)) throw new Error(`${what} not found at ${file}: ${how}`);
}

/** Starts the workers for `queues` (request type → queue) and waits until each consumes. */
async function startWorkers(queues: Record<string, string>): Promise<Proc[]> {
  const env = { TASKGATE_AMQP_URL: AMQP_URL };
  const procs: Proc[] = [];
  const rustTypes = Object.entries(WORKERS).filter(([, kind]) => kind === 'rust').map(([type]) => type);
  if (rustTypes.length > 0) {
    need(RUST_WORKERS_BIN, 'the Rust example workers', 'cargo build -p taskgate-worker --bins');
    const args = ['--amqp-url', AMQP_URL];
    for (const type of rustTypes) args.push('--queue', `${type}=${queues[type]}`, '--only', type);
    procs.push(new Proc('rust-workers', RUST_WORKERS_BIN, args, { env: { RUST_LOG: 'info' } }));
  }
  if (WORKERS[WORDCOUNT] === 'python') {
    const python = path.join(PYTHON_DIR, '.venv/bin/python');
    need(python, 'the Python worker SDK', 'run workers/python/scripts/test (it makes workers/python/.venv)');
    procs.push(
      new Proc(
        'python-wordcount',
        python,
        ['-m', 'taskgate_worker', 'examples.wordcount:worker', '--queue', `${WORDCOUNT}=${queues[WORDCOUNT]}`],
        { cwd: PYTHON_DIR, env },
      ),
    );
  }
  if (WORKERS[COUNTDOWN] === 'node') {
    const nodeWorker = nodeCountdownCommand(queues[COUNTDOWN]!);
    procs.push(new Proc('node-countdown', nodeWorker.command, nodeWorker.args, { cwd: NODE_DIR, env }));
  }
  await Promise.all(procs.map((p) => p.waitForLine(/worker ready/, 60_000)));
  return procs;
}

/** The Node SDK's example `demo.countdown` worker on `queue`. */
function nodeCountdownCommand(queue: string): { command: string; args: string[] } {
  const script = path.join(NODE_DIR, 'dist/examples/countdown.js');
  need(script, 'the Node worker SDK\'s countdown example', 'build workers/node (npm ci && npm run build)');
  return {
    command: process.execPath,
    args: [script, '--queue', `${COUNTDOWN}=${queue}`],
  };
}

// ---------------------------------------------------------------------------------------
// The stack

export interface Stack {
  /** http://127.0.0.1:PORT/ — the demo page. */
  url: string;
  queues: Record<string, string>;
  procs: Proc[];
  /** Every process's output, for a failure report. */
  logs(): string;
  stop(): Promise<void>;
}

export async function startStack(): Promise<Stack> {
  need(HOST_BIN, 'the host binary', 'cargo build -p taskgate-host');
  need(path.join(PLUGINS_DIR, 'libtaskgate_plugin_wordcount.so'), 'the example plugins', 'scripts/build-plugins');
  need(path.join(DEMO_DIST, 'index.html'), 'the built React demo', 'cd examples/react-demo && npm ci && npm run build');

  const runId = randomBytes(5).toString('hex');
  const queues = { [WORDCOUNT]: `browser.${runId}.${WORDCOUNT}`, [COUNTDOWN]: `browser.${runId}.${COUNTDOWN}` };
  const dir = await mkdtemp(path.join(tmpdir(), `taskgate-browser-${runId}-`));
  const config = path.join(dir, 'plugins.toml');
  await writeFile(
    config,
    [
      '[host]',
      'listen = "127.0.0.1:0"',
      `amqp_url = ${JSON.stringify(AMQP_URL)}`,
      `plugins_dir = ${JSON.stringify(PLUGINS_DIR)}`,
      `static_dir = ${JSON.stringify(DEMO_DIST)}`,
      '',
      '[plugins.wordcount]',
      'enabled = true',
      `queue = ${JSON.stringify(queues[WORDCOUNT])}`,
      '',
      '[plugins.countdown]',
      'enabled = true',
      `queue = ${JSON.stringify(queues[COUNTDOWN])}`,
      '',
    ].join('\n'),
  );

  const procs: Proc[] = [];
  const stack: Stack = {
    url: '',
    queues,
    procs,
    logs: () => procs.map((p) => `---- ${p.name} (${p.lines.length} lines) ----\n${p.tail(80)}`).join('\n'),
    stop: async () => {
      await Promise.all(procs.map((p) => p.stop()));
      await deleteQueues(Object.values(queues));
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    const host = new Proc('host', HOST_BIN, ['--config', config], {
      env: { TASKGATE_LOG: 'info,taskgate_host=debug,lapin=warn,socketioxide=warn,engineioxide=warn' },
    });
    procs.push(host);
    const m = await host.waitForLine(/listening on (\S+)/, 30_000);
    stack.url = `http://${m[1]}/`;
    await waitReady(stack.url, host);
    procs.push(...(await startWorkers(queues)));
    return stack;
  } catch (error) {
    const logs = stack.logs();
    await stack.stop();
    throw new Error(`${(error as Error).message}\n${logs}`);
  }
}

/** Waits for GET /readyz = 200: the host is connected to RabbitMQ and has declared the queues. */
async function waitReady(url: string, host: Proc): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const status = await fetch(new URL('/readyz', url)).then((r) => r.status, () => 0);
    if (status === 200) return;
    if (!host.running) throw new Error('the host exited while starting');
    if (Date.now() > deadline) throw new Error(`the host at ${url} was not ready within 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Deletes this run's queues (never anyone else's). */
async function deleteQueues(queues: string[]): Promise<void> {
  const connection = await amqp.connect(AMQP_URL).catch(() => undefined);
  if (!connection) return;
  try {
    for (const queue of queues) {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await channel.deleteQueue(queue).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
  } finally {
    await connection.close().catch(() => undefined);
  }
}
