/**
 * The end-to-end harness: runs the real `taskgate` host binary against the real RabbitMQ,
 * with real clients (`socket.io-client`) and workers (the Rust example workers, or a fake
 * worker on `amqplib` that lets a test see and forge every AMQP detail).
 *
 * Why a harness: every conformance test needs the same lifecycle — a private plugins.toml
 * with queue names unique to the test (RabbitMQ is shared with other runs), a host on a
 * free port, clean-up of processes and queues whatever happens, and the host's log when a
 * test fails. Tests are written against `e2e(name, async (ctx) => …)`, which owns all of it.
 *
 * The `Client` wrapper also checks the client-side rules of protocol §1 on every event it
 * sees (no response before the ack or after the final one, chunk `seq` 0, 1, 2 …, exact
 * event shapes); a test fails if any of them was broken, even when it did not look.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import assert from 'node:assert/strict';

import amqp from 'amqplib';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, MessageProperties } from 'amqplib';
import { io, type Socket } from 'socket.io-client';

// ---------------------------------------------------------------------------------------
// Where things are
// ---------------------------------------------------------------------------------------

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (tests/e2e/src → ../../..). */
export const REPO_ROOT = path.resolve(HERE, '../../..');
export const AMQP_URL = process.env.TASKGATE_E2E_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';
export const HOST_BIN = process.env.TASKGATE_BIN ?? path.join(REPO_ROOT, 'target/debug/taskgate');
export const WORKERS_BIN =
  process.env.TASKGATE_WORKERS_BIN ?? path.join(REPO_ROOT, 'target/debug/taskgate-example-workers');
export const PLUGINS_DIR = process.env.TASKGATE_E2E_PLUGINS_DIR ?? path.join(REPO_ROOT, 'build/plugins');
export const TEST_PLUGINS_DIR =
  process.env.TASKGATE_E2E_TEST_PLUGINS_DIR ?? path.join(REPO_ROOT, 'build/test-plugins');
/** Log filter for hosts: enough to diagnose a failure from the dump. */
const HOST_LOG = process.env.TASKGATE_LOG ?? 'info,taskgate_host=debug,lapin=warn,socketioxide=warn,engineioxide=warn';

/** Request types of the example plugins (and the `panicky` test fixture). */
export const TYPES = {
  echo: 'echo',
  wordcount: 'text.wordcount',
  countdown: 'demo.countdown',
  panic: 'test.panic',
  slow: 'test.slow',
} as const;

/** Plugin name → the request type it serves. */
export const PLUGIN_TYPES: Record<string, string> = {
  echo: TYPES.echo,
  wordcount: TYPES.wordcount,
  countdown: TYPES.countdown,
  panicky: TYPES.panic,
  slow: TYPES.slow,
};

export const CANCEL_EXCHANGE = 'taskgate.cancel';
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** JSON for messages, shortened, and safe for values too deep or odd for JSON.stringify. */
export function describe(value: unknown, max = 200): string {
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > max ? `${text.slice(0, max)}…` : text;
  } catch (error) {
    return `<${(error as Error).message}>`;
  }
}

export function uniqueId(prefix = 'r'): string {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** Polls `check` until it returns something truthy; fails with `what` after `timeoutMs`. */
export async function waitUntil<T>(
  check: () => T | Promise<T>,
  timeoutMs: number,
  what: string,
  intervalMs = 20,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/** Every child still running, killed when this test process exits whatever happens. */
const liveChildren = new Set<ChildProcess>();
function killChildren(): void {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
process.on('exit', killChildren);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killChildren();
    process.exit(130);
  });
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

/** A spawned process whose output lines are kept (for waiting on them and for failure dumps). */
export class Proc {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | undefined;
  stopRequested = false;
  private lineListeners = new Set<(line: string) => void>();

  constructor(
    readonly name: string,
    bin: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(this.child);
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (!stream) continue;
      createInterface({ input: stream }).on('line', (line) => {
        this.lines.push(line);
        for (const listener of this.lineListeners) listener(line);
      });
    }
    this.exited = new Promise<ExitInfo>((resolve) => {
      this.child.once('error', (error) => {
        this.exitInfo = { code: null, signal: null, error };
        liveChildren.delete(this.child);
        resolve(this.exitInfo);
      });
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        liveChildren.delete(this.child);
        resolve(this.exitInfo);
      });
    });
  }

  get alive(): boolean {
    return this.exitInfo === undefined;
  }

  /** Resolves with the first line (already seen or future) matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const m = line.match(pattern);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.lineListeners.delete(listener);
      };
      const listener = (line: string) => {
        const m = line.match(pattern);
        if (m) {
          cleanup();
          resolve(m);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name}: no line matching ${pattern} within ${timeoutMs} ms\n${this.tail()}`));
      }, timeoutMs);
      this.lineListeners.add(listener);
      void this.exited.then((info) => {
        if (!this.lineListeners.has(listener)) return;
        cleanup();
        reject(new Error(`${this.name} exited (${describeExit(info)}) before printing ${pattern}\n${this.tail()}`));
      });
    });
  }

  tail(n = 40): string {
    return this.lines.slice(-n).map((l) => `    | ${l}`).join('\n');
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5000): Promise<ExitInfo> {
    this.stopRequested = true;
    if (this.exitInfo) return this.exitInfo;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const info = await this.exited;
    clearTimeout(timer);
    return info;
  }
}

export function describeExit(info: ExitInfo): string {
  if (info.error) return `failed to start: ${info.error.message}`;
  return info.signal ? `signal ${info.signal}` : `exit code ${info.code}`;
}

/** The environment for children: ours without TASKGATE_* settings that would override the test's config. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('TASKGATE_')) continue;
    env[k] = v;
  }
  env.TASKGATE_LOG = HOST_LOG;
  env.NO_COLOR = '1';
  env.RUST_BACKTRACE = env.RUST_BACKTRACE ?? '1';
  return { ...env, ...extra };
}

// ---------------------------------------------------------------------------------------
// The test context: owns every resource of one test
// ---------------------------------------------------------------------------------------

export class TestContext {
  /** Unique per test: queue names contain it. */
  readonly runId = randomBytes(5).toString('hex');
  readonly hosts: Host[] = [];
  readonly procs: Proc[] = [];
  readonly clients: Client[] = [];
  /** Queues deleted at the end. */
  readonly queues = new Set<string>();
  private closers: Array<() => Promise<unknown>> = [];
  private tmpDirs: string[] = [];
  private amqpConnection: ChannelModel | undefined;
  private notes: string[] = [];

  constructor(readonly name: string) {}

  /** The default queue of `requestType` for this test. */
  queueFor(requestType: string): string {
    return `e2e.${this.runId}.${requestType}`;
  }

  /**
   * The test's own dead-letter queue (`[host] dead_letter_queue`; also the name of its
   * exchange, and `<name>.inbox` the queue hosts consume), so that no test sees another's
   * dead letters. Deleted at the end.
   */
  get deadLetterQueue(): string {
    return `e2e.${this.runId}.dead-letters`;
  }

  /**
   * The arguments a host declares a request queue with by default (§3.11): a quorum queue
   * that lets a request be delivered `deliveries` times, then dead-letters it to the
   * test's dead-letter exchange. What a test must declare the same queue with to be accepted.
   */
  requestQueueArguments(deliveries = 3): Record<string, string | number> {
    return { 'x-queue-type': 'quorum', 'x-delivery-limit': deliveries - 1, 'x-dead-letter-exchange': this.deadLetterQueue };
  }

  note(text: string): void {
    this.notes.push(text);
  }

  async tmpDir(): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), `taskgate-e2e-${this.runId}-`));
    this.tmpDirs.push(dir);
    return dir;
  }

  onCleanup(fn: () => Promise<unknown>): void {
    this.closers.push(fn);
  }

  /** A shared AMQP connection for the test's own channels. */
  async amqp(): Promise<ChannelModel> {
    if (!this.amqpConnection) {
      this.amqpConnection = await amqp.connect(AMQP_URL, { noDelay: true });
      this.amqpConnection.on('error', () => {
        /* channel-level errors are expected in some tests; they surface as rejections */
      });
    }
    return this.amqpConnection;
  }

  /** A fresh channel (a failed operation closes a channel, so tests use one per check). */
  async channel(): Promise<Channel> {
    const ch = await (await this.amqp()).createChannel();
    ch.on('error', () => {
      /* surfaced as a rejected operation */
    });
    return ch;
  }

  /** Runs `op` on a fresh channel and closes it; returns the AMQP error if the broker refused. */
  async tryOnChannel<T>(op: (ch: Channel) => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: Error }> {
    const ch = await this.channel();
    try {
      const value = await op(ch);
      await ch.close().catch(() => undefined);
      return { ok: true, value };
    } catch (error) {
      await ch.close().catch(() => undefined);
      return { ok: false, error: error as Error };
    }
  }

  /** Every protocol rule the clients saw broken. */
  violations(): string[] {
    return this.clients.flatMap((c) => c.violations.map((v) => `${c.name}: ${v}`));
  }

  /** Host processes that died without being asked to. */
  crashes(): string[] {
    return this.hosts
      .filter((h) => h.proc.exitInfo && !h.proc.stopRequested)
      .map((h) => `${h.name} exited unexpectedly (${describeExit(h.proc.exitInfo!)})`);
  }

  /** Stops everything; returns the first problem found (a crashed host), if any. */
  async cleanup(): Promise<Error | undefined> {
    const crashes = this.crashes();
    for (const client of this.clients) client.close();
    for (const close of this.closers.reverse()) {
      await close().catch(() => undefined);
    }
    await Promise.all(this.procs.map((p) => p.stop()));
    if (this.queues.size > 0) {
      for (const queue of this.queues) {
        await this.tryOnChannel((ch) => ch.deleteQueue(queue));
      }
      await this.tryOnChannel((ch) => ch.deleteExchange(this.deadLetterQueue));
    }
    await this.amqpConnection?.close().catch(() => undefined);
    for (const dir of this.tmpDirs) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    return crashes.length > 0 ? new Error(crashes.join('\n')) : undefined;
  }

  /**
   * Printed when a test fails: every process's output (head and tail, with warnings and
   * errors counted) and what the clients saw. The full logs are also written to files
   * under the OS temp dir, whose paths are printed.
   */
  async dump(): Promise<string> {
    const parts: string[] = [`==== ${this.name} (run ${this.runId}) ====`];
    for (const note of this.notes) parts.push(`note: ${note}`);
    const logDir = path.join(tmpdir(), 'taskgate-e2e-logs');
    await mkdir(logDir, { recursive: true }).catch(() => undefined);
    for (const p of this.procs) {
      const state = p.exitInfo ? describeExit(p.exitInfo) : 'running';
      const file = path.join(logDir, `${this.runId}-${p.name}.log`);
      await writeFile(file, `${p.lines.join('\n')}\n`).catch(() => undefined);
      const warnings = p.lines.filter((l) => /\b(WARN|ERROR)\b/.test(l)).length;
      parts.push(`---- ${p.name} (pid ${p.child.pid}, ${state}; ${p.lines.length} lines, ${warnings} WARN/ERROR; full log: ${file}) ----`);
      if (p.lines.length <= 300) {
        parts.push(...p.lines);
      } else {
        parts.push(...p.lines.slice(0, 100), `… ${p.lines.length - 300} lines left out …`, ...p.lines.slice(-200));
      }
    }
    for (const c of this.clients) {
      parts.push(`---- ${c.name} events (${c.log.length}) ----`);
      parts.push(...c.log.slice(-60).map((e) => describe(e, 400)));
    }
    return parts.join('\n');
  }
}

export interface E2eOptions {
  /** Milliseconds for the whole test, clean-up excluded. */
  timeout?: number;
  skip?: boolean | string;
}

/**
 * Declares one conformance test. The body gets a fresh context; afterwards everything is
 * stopped and deleted, the clients' protocol checks are asserted, a crashed host fails the
 * test, and on failure the logs of every process are printed.
 */
export function e2e(name: string, body: (ctx: TestContext) => Promise<void>, options: E2eOptions = {}): void {
  const timeout = options.timeout ?? 60_000;
  test(name, { timeout: timeout + 30_000, skip: options.skip }, async () => {
    const ctx = new TestContext(name);
    let failure: unknown;
    try {
      await withTimeout(body(ctx), timeout, `test body of "${name}"`);
      const violations = ctx.violations();
      assert.deepEqual(violations, [], `protocol rules broken:\n${violations.join('\n')}`);
    } catch (error) {
      failure = error;
    }
    const crash = await ctx.cleanup();
    failure ??= crash;
    if (failure) {
      process.stderr.write(`${await ctx.dump()}\n`);
      throw failure;
    }
  });
}

// ---------------------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------------------

export interface PluginSettings {
  enabled?: boolean;
  queue?: string;
  timeout_ms?: number;
  max_payload_bytes?: number;
  queue_arguments?: Record<string, string | number | boolean>;
  required_roles?: string[];
  validation_budget_ms?: number;
  delivery_limit?: number;
  /** The retry policy (§3.12), e.g. `{ attempts: 3, backoff: 'exponential', delay_ms: 200 }`. */
  retry?: Record<string, string | number | boolean | string[]>;
  /**
   * `'fail'` (the host's default) or `'queue'` (the suite's default): most tests send requests to
   * types without workers only to see acks, limits and refusals; no-consumers.test.ts is about `'fail'`.
   */
  when_no_workers?: 'fail' | 'queue';
}

export interface HostOptions {
  /**
   * Plugin tables, merged over the default (echo, wordcount and countdown enabled, each on
   * `ctx.queueFor(type)`). `false` leaves a plugin out of plugins.toml.
   */
  plugins?: Record<string, PluginSettings | false>;
  /** Default: the built example plugins. */
  pluginsDir?: string;
  /** Written as `[host] amqp_url`. */
  amqpUrl?: string;
  /** Extra `[host]` keys. */
  hostSettings?: Record<string, string | number | boolean | string[]>;
  /** Other tables, e.g. `{ auth: { mode: 'static', … }, limits: { … } }`. */
  sections?: Record<string, Record<string, unknown>>;
  /** TOML appended verbatim (e.g. per-request-type tables). */
  extraToml?: string;
  /** Extra environment variables for the host process (e.g. a secret, TASKGATE_LOG). */
  env?: Record<string, string>;
  /** Extra command-line flags. */
  args?: string[];
  /** Wait until /readyz says 200 (default true). */
  waitReady?: boolean;
  /** Fail early unless the host serves this many request types (default: one per enabled plugin). */
  expectTypes?: number;
  name?: string;
}

export interface Host {
  name: string;
  /** http://127.0.0.1:PORT */
  url: string;
  /** Request type → its queue, for every enabled plugin. */
  queues: Record<string, string>;
  configPath: string;
  proc: Proc;
  logs(): string[];
  readyz(): Promise<{ status: number; body: unknown }>;
  stop(): Promise<ExitInfo>;
}

export function tomlValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)} = ${tomlValue(v)}`);
    return `{ ${entries.join(', ')} }`;
  }
  throw new Error(`cannot write ${String(value)} as TOML`);
}

/** The plugins.toml text for `options`; returns the text and request type → queue. */
export function pluginsToml(
  ctx: TestContext,
  options: HostOptions,
): { text: string; queues: Record<string, string>; enabled: number } {
  const plugins: Record<string, PluginSettings | false> = {
    echo: {},
    wordcount: {},
    countdown: {},
    ...options.plugins,
  };
  const lines = ['[host]', `listen = "127.0.0.1:0"`];
  lines.push(`amqp_url = ${tomlValue(options.amqpUrl ?? AMQP_URL)}`);
  lines.push(`plugins_dir = ${tomlValue(options.pluginsDir ?? PLUGINS_DIR)}`);
  const hostSettings = { dead_letter_queue: ctx.deadLetterQueue, ...options.hostSettings };
  for (const [k, v] of Object.entries(hostSettings)) lines.push(`${k} = ${tomlValue(v)}`);
  const queues: Record<string, string> = {};
  let enabled = 0;
  for (const [plugin, settings] of Object.entries(plugins)) {
    if (settings === false) continue;
    const type = PLUGIN_TYPES[plugin] ?? plugin;
    const merged: PluginSettings = { enabled: true, queue: ctx.queueFor(type), when_no_workers: 'queue', ...settings };
    lines.push('', `[plugins.${plugin}]`);
    for (const [k, v] of Object.entries(merged)) {
      if (v !== undefined) lines.push(`${k} = ${tomlValue(v)}`);
    }
    if (merged.enabled && merged.queue) {
      queues[type] = merged.queue;
      enabled += 1;
    }
  }
  for (const [table, keys] of Object.entries(options.sections ?? {})) {
    lines.push('', `[${table}]`);
    for (const [k, v] of Object.entries(keys)) {
      if (v !== undefined) lines.push(`${k} = ${tomlValue(v)}`);
    }
  }
  if (options.extraToml) lines.push('', options.extraToml);
  return { text: `${lines.join('\n')}\n`, queues, enabled };
}

function assertBuilt(file: string, what: string, how: string): void {
  if (!existsSync(file)) throw new Error(`${what} not found at ${file}: ${how}`);
}

export function pluginFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f.endsWith('.so'));
}

let hostCounter = 0;

/** Writes a plugins.toml for this test, starts the host on a free port and waits until it is ready. */
export async function startHost(ctx: TestContext, options: HostOptions = {}): Promise<Host> {
  assertBuilt(HOST_BIN, 'the host binary', 'build it with `cargo build -p taskgate-host` or set TASKGATE_BIN');
  const pluginsDir = options.pluginsDir ?? PLUGINS_DIR;
  const { text, queues, enabled } = pluginsToml(ctx, options);
  const expectTypes = options.expectTypes ?? enabled;
  if (expectTypes > 0 && pluginFiles(pluginsDir).length === 0) {
    throw new Error(`no plugin libraries in ${pluginsDir}: build them with scripts/build-plugins`);
  }
  const dir = await ctx.tmpDir();
  const configPath = path.join(dir, 'plugins.toml');
  await writeFile(configPath, text);
  for (const queue of Object.values(queues)) ctx.queues.add(queue);
  ctx.queues.add(ctx.deadLetterQueue);
  ctx.queues.add(`${ctx.deadLetterQueue}.inbox`);

  const name = options.name ?? `host${++hostCounter}`;
  const proc = new Proc(name, HOST_BIN, ['--config', configPath, ...(options.args ?? [])], childEnv(options.env));
  ctx.procs.push(proc);
  const host: Host = {
    name,
    url: '',
    queues,
    configPath,
    proc,
    logs: () => [...proc.lines],
    readyz: async () => {
      const res = await fetch(`${host.url}/readyz`);
      const body = await res.json().catch(() => undefined);
      return { status: res.status, body };
    },
    stop: () => proc.stop(),
  };
  ctx.hosts.push(host);
  ctx.note(`${name} config ${configPath}:\n${text}`);

  // Text or JSON logs (`--log-format json`): the address ends at a space or a quote.
  const m = await proc.waitForLine(/listening on ([^\s"]+)/, 15_000);
  host.url = `http://${m[1]}`;
  if (options.waitReady ?? true) {
    const body = await waitUntil(
      async () => {
        const r = await host.readyz().catch(() => undefined);
        return r?.status === 200 ? (r.body ?? {}) : undefined;
      },
      20_000,
      `${name} /readyz to answer 200 (broker connected)`,
      50,
    );
    const served = (body as { requestTypes?: unknown }).requestTypes;
    if (typeof served === 'number' && served < expectTypes) {
      throw new Error(
        `${name} serves ${served} request types, expected ${expectTypes}: are the plugins in ${pluginsDir} built and loadable?`,
      );
    }
  }
  return host;
}

/** Runs a `taskgate` subcommand to completion. */
export async function runHostCli(
  ctx: TestContext,
  args: string[],
  timeoutMs = 20_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  assertBuilt(HOST_BIN, 'the host binary', 'build it with `cargo build -p taskgate-host` or set TASKGATE_BIN');
  const child = spawn(HOST_BIN, args, { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await withTimeout(
    new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (c) => resolve(c));
    }),
    timeoutMs,
    `taskgate ${args.join(' ')}`,
  ).finally(() => {
    child.kill('SIGKILL');
    liveChildren.delete(child);
  });
  ctx.note(`taskgate ${args.join(' ')} → ${code}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
  return { code, stdout, stderr };
}

/** A private copy of the example plugins (plus `extra` files) for tests that change the directory. */
export async function copyPluginsDir(ctx: TestContext, extra: string[] = []): Promise<string> {
  const dir = path.join(await ctx.tmpDir(), 'plugins');
  await mkdir(dir);
  const files = pluginFiles(PLUGINS_DIR);
  if (files.length === 0) throw new Error(`no plugin libraries in ${PLUGINS_DIR}: build them with scripts/build-plugins`);
  for (const f of files) await copyFile(path.join(PLUGINS_DIR, f), path.join(dir, f));
  for (const file of extra) await copyFile(file, path.join(dir, path.basename(file)));
  return dir;
}

// ---------------------------------------------------------------------------------------
// The Rust example workers
// ---------------------------------------------------------------------------------------

export interface WorkersOptions {
  only?: string[];
  prefetch?: number;
  name?: string;
  /** Extra environment variables, e.g. `{ TASKGATE_LOG: 'info,taskgate_worker=debug' }`. */
  env?: Record<string, string>;
}

let workersCounter = 0;

/** Starts the example workers binary on `queues` (request type → queue) and waits for `worker ready`. */
export async function startWorkers(
  ctx: TestContext,
  queues: Record<string, string>,
  options: WorkersOptions = {},
): Promise<Proc> {
  assertBuilt(
    WORKERS_BIN,
    'the example workers binary',
    'build it with `cargo build -p taskgate-worker --bins` or set TASKGATE_WORKERS_BIN',
  );
  const args = ['--amqp-url', AMQP_URL];
  for (const type of [TYPES.echo, TYPES.wordcount, TYPES.countdown]) {
    if (queues[type]) args.push('--queue', `${type}=${queues[type]}`);
  }
  for (const only of options.only ?? []) args.push('--only', only);
  if (options.prefetch !== undefined) args.push('--prefetch', String(options.prefetch));
  const proc = new Proc(options.name ?? `workers${++workersCounter}`, WORKERS_BIN, args, childEnv({
    RUST_LOG: process.env.RUST_LOG ?? 'info',
    ...options.env,
  }));
  ctx.procs.push(proc);
  await proc.waitForLine(/worker ready/, 30_000);
  return proc;
}

// ---------------------------------------------------------------------------------------
// The fake worker: amqplib, manual acks, every reply under the test's control
// ---------------------------------------------------------------------------------------

/** One request message as a worker receives it. */
export interface Received {
  message: ConsumeMessage;
  properties: MessageProperties;
  headers: Record<string, unknown>;
  body: Buffer;
  correlationId: string;
  replyTo: string;
  receivedAt: number;
  /** The body parsed as JSON (throws if it is not). */
  json(): unknown;
}

export interface ReplyOptions {
  /** `null` leaves the property out; default: the request's correlation id. */
  correlationId?: string | null;
  /** `null` leaves the `type` property out. */
  type?: string | null;
  headers?: Record<string, unknown>;
  contentType?: string | null;
  /** Default: the request's reply_to. */
  routingKey?: string;
}

let fakeCounter = 0;

export class FakeWorker {
  readonly received: Received[] = [];
  private pending: Received[] = [];
  private waiters = new Set<() => void>();
  private closed = false;

  private constructor(
    readonly name: string,
    private readonly connection: ChannelModel,
    readonly channel: ConfirmChannel,
    readonly queue: string,
  ) {}

  /** Consumes `queue` (declared by the host) with manual acks. */
  static async start(ctx: TestContext, queue: string, options: { prefetch?: number } = {}): Promise<FakeWorker> {
    const connection = await amqp.connect(AMQP_URL, { noDelay: true });
    connection.on('error', () => undefined);
    const channel = await connection.createConfirmChannel();
    channel.on('error', () => undefined);
    await channel.prefetch(options.prefetch ?? 100);
    const worker = new FakeWorker(`fake-worker${++fakeCounter}`, connection, channel, queue);
    await channel.consume(queue, (message) => message && worker.onMessage(message), { noAck: false });
    ctx.onCleanup(() => worker.close());
    return worker;
  }

  private onMessage(message: ConsumeMessage): void {
    const received: Received = {
      message,
      properties: message.properties,
      headers: (message.properties.headers ?? {}) as Record<string, unknown>,
      body: message.content,
      correlationId: message.properties.correlationId,
      replyTo: message.properties.replyTo,
      receivedAt: Date.now(),
      json: () => JSON.parse(message.content.toString('utf8')),
    };
    this.received.push(received);
    this.pending.push(received);
    for (const w of this.waiters) w();
  }

  /** The next request not yet taken by `next`. */
  async next(timeoutMs = 5000): Promise<Received> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no request on ${this.queue} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        const waiters = this.waiters;
        function done() {
          clearTimeout(timer);
          waiters.delete(done);
          resolve();
        }
        this.waiters.add(done);
      });
    }
    return this.pending.shift()!;
  }

  /** Fails if a request arrives within `ms`. */
  async expectNothing(ms: number): Promise<void> {
    await sleep(ms);
    assert.equal(this.pending.length, 0, `${this.name}: unexpected request ${JSON.stringify(this.pending[0]?.properties)}`);
  }

  /** Publishes one reply (confirmed by the broker before this resolves). */
  async reply(request: Received | undefined, body: unknown, options: ReplyOptions = {}): Promise<void> {
    const content = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body), 'utf8');
    const correlationId = options.correlationId === undefined ? request?.correlationId : options.correlationId;
    const routingKey = options.routingKey ?? request?.replyTo;
    if (!routingKey) throw new Error('reply needs a request or a routingKey');
    const props: Record<string, unknown> = {};
    if (options.contentType !== null) props.contentType = options.contentType ?? 'application/json';
    if (correlationId !== null && correlationId !== undefined) props.correlationId = correlationId;
    if (options.type !== null && options.type !== undefined) props.type = options.type;
    if (options.headers) props.headers = options.headers;
    this.channel.publish('', routingKey, content, props);
    await this.channel.waitForConfirms();
  }

  chunk(request: Received, data: unknown, seq: number, options: ReplyOptions = {}): Promise<void> {
    return this.reply(request, data, { type: 'chunk', ...options, headers: { 'x-seq': seq, ...options.headers } });
  }

  result(request: Received, data: unknown, options: ReplyOptions = {}): Promise<void> {
    return this.reply(request, data, { type: 'result', ...options });
  }

  error(request: Received, error: unknown, options: ReplyOptions = {}): Promise<void> {
    return this.reply(request, error, { type: 'error', ...options });
  }

  ack(request: Received): void {
    this.channel.ack(request.message);
  }

  /** Closes the connection without acking: unacked requests go back to the queue (a worker that died). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.connection.close().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------
// Watching the cancellation fanout (§2.4)
// ---------------------------------------------------------------------------------------

export interface Cancellation {
  correlationId: string;
  body: Buffer;
  properties: MessageProperties;
  at: number;
}

export class CancelListener {
  readonly seen: Cancellation[] = [];

  private constructor() {}

  /** Binds an exclusive queue of our own to the `taskgate.cancel` fanout exchange. */
  static async start(ctx: TestContext): Promise<CancelListener> {
    const listener = new CancelListener();
    const ch = await ctx.channel();
    await ch.assertExchange(CANCEL_EXCHANGE, 'fanout', { durable: true });
    const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
    await ch.bindQueue(queue, CANCEL_EXCHANGE, '');
    await ch.consume(
      queue,
      (m) => {
        if (!m) return;
        listener.seen.push({
          correlationId: m.properties.correlationId,
          body: m.content,
          properties: m.properties,
          at: Date.now(),
        });
      },
      { noAck: true },
    );
    ctx.onCleanup(() => ch.close());
    return listener;
  }

  find(correlationId: string): Cancellation | undefined {
    return this.seen.find((c) => c.correlationId === correlationId);
  }

  waitFor(correlationId: string, timeoutMs = 5000): Promise<Cancellation> {
    return waitUntil(() => this.find(correlationId), timeoutMs, `a cancellation for ${correlationId} on ${CANCEL_EXCHANGE}`);
  }
}

// ---------------------------------------------------------------------------------------
// Socket.IO clients
// ---------------------------------------------------------------------------------------

export interface ErrorObject {
  code: string;
  message: string;
  details?: unknown;
}

export type Ack = { ok: true } | { ok: false; error: ErrorObject };

export interface ResponseEvent {
  id: string;
  type: 'chunk' | 'result' | 'error';
  seq?: number;
  data?: unknown;
  error?: ErrorObject;
}

export type LogEntry =
  | { kind: 'ack'; id: unknown; ack: unknown; at: number }
  | { kind: 'response'; event: ResponseEvent; at: number };

export interface ConnectOptions {
  /** `default`: socket.io-client's default (long-polling first, then upgrade to WebSocket). */
  transport?: 'websocket' | 'polling' | 'default';
  auth?: Record<string, unknown>;
  name?: string;
}

const sameKeys = (value: object, keys: string[]) =>
  JSON.stringify(Object.keys(value).sort()) === JSON.stringify([...keys].sort());

/** Checks an error object's shape (§1 "Error object"); returns what is wrong, if anything. */
export function errorObjectProblem(error: unknown): string | undefined {
  if (!error || typeof error !== 'object' || Array.isArray(error)) return `error is not an object: ${JSON.stringify(error)}`;
  const e = error as Record<string, unknown>;
  if (typeof e.code !== 'string' || e.code === '') return `error.code is not a non-empty string: ${JSON.stringify(error)}`;
  if (typeof e.message !== 'string') return `error.message is not a string: ${JSON.stringify(error)}`;
  const extra = Object.keys(e).filter((k) => !['code', 'message', 'details'].includes(k));
  if (extra.length > 0) return `error has keys beyond code/message/details: ${extra.join(', ')}`;
  return undefined;
}

let clientCounter = 0;

/**
 * A socket.io-client connection that records every ack and `response`, and checks §1's
 * rules as events arrive (any breach lands in `violations`, which fails the test).
 */
export class Client {
  readonly log: LogEntry[] = [];
  readonly violations: string[] = [];
  /** Per id: whether a request with this id is accepted and not finished, and the next chunk seq. */
  private state = new Map<string, { active: boolean; nextSeq: number }>();
  /** Per id: how many responses it had when its latest request was accepted. */
  private acceptedAt = new Map<string, number>();
  private listeners = new Set<() => void>();
  /** Why the connection ended, when it was not this client's own `close()`. */
  lostReason: string | undefined;
  private closing = false;

  private constructor(
    readonly name: string,
    readonly socket: Socket,
  ) {
    socket.on('response', (event: unknown) => this.onResponse(event));
    socket.on('disconnect', (reason: string) => {
      if (!this.closing) this.lostReason = reason;
      this.changed();
    });
  }

  get transport(): string | undefined {
    return this.socket.io.engine?.transport?.name;
  }

  private changed(): void {
    for (const l of this.listeners) l();
  }

  private onResponse(raw: unknown): void {
    const at = Date.now();
    const event = raw as ResponseEvent;
    this.log.push({ kind: 'response', event, at });
    this.changed();
    if (!raw || typeof raw !== 'object' || typeof event.id !== 'string') {
      this.violations.push(`response without a string id: ${JSON.stringify(raw)}`);
      return;
    }
    switch (event.type) {
      case 'chunk':
        if (!sameKeys(event, ['id', 'type', 'seq', 'data'])) this.violations.push(`chunk shape: ${JSON.stringify(raw)}`);
        break;
      case 'result':
        if (!sameKeys(event, ['id', 'type', 'data'])) this.violations.push(`result shape: ${JSON.stringify(raw)}`);
        break;
      case 'error': {
        if (!sameKeys(event, ['id', 'type', 'error'])) this.violations.push(`error response shape: ${JSON.stringify(raw)}`);
        const problem = errorObjectProblem(event.error);
        if (problem) this.violations.push(`error response: ${problem}`);
        break;
      }
      default:
        this.violations.push(`response with unknown type: ${JSON.stringify(raw)}`);
        return;
    }
    const st = this.state.get(event.id);
    if (!st) {
      this.violations.push(`response for id ${JSON.stringify(event.id)} that this connection never sent`);
      return;
    }
    if (!st.active) {
      this.violations.push(
        `response for ${JSON.stringify(event.id)} while no accepted request with that id was in flight ` +
          `(before its ack, after its final response, or for a refused request): ${JSON.stringify(raw)}`,
      );
      return;
    }
    if (event.type === 'chunk') {
      if (event.seq !== st.nextSeq) {
        this.violations.push(`chunk of ${event.id} has seq ${JSON.stringify(event.seq)}, expected ${st.nextSeq}`);
      }
      st.nextSeq = (typeof event.seq === 'number' ? event.seq : st.nextSeq) + 1;
    } else {
      st.active = false;
    }
  }

  private onAck(id: unknown, ack: unknown): void {
    this.log.push({ kind: 'ack', id, ack, at: Date.now() });
    this.changed();
    const a = ack as Record<string, unknown> | null;
    if (!a || typeof a !== 'object' || typeof a.ok !== 'boolean') {
      this.violations.push(`ack is not { ok: boolean, … }: ${JSON.stringify(ack)}`);
      return;
    }
    if (a.ok) {
      if (!sameKeys(a, ['ok'])) this.violations.push(`accepting ack is not exactly { ok: true }: ${JSON.stringify(ack)}`);
      if (typeof id !== 'string') {
        this.violations.push(`request with id ${JSON.stringify(id)} was accepted`);
        return;
      }
      const st = this.state.get(id)!;
      if (st.active) this.violations.push(`a second request with id ${id} was accepted while the first was in flight`);
      st.active = true;
      st.nextSeq = 0;
      this.acceptedAt.set(id, this.responses(id).length);
    } else {
      if (!sameKeys(a, ['ok', 'error'])) this.violations.push(`refusing ack is not exactly { ok: false, error }: ${JSON.stringify(ack)}`);
      const problem = errorObjectProblem(a.error);
      if (problem) this.violations.push(`refusing ack: ${problem}`);
    }
  }

  /**
   * Emits `request` with an acknowledgement callback and resolves with the ack. The ack is
   * recorded in the callback itself, so its order relative to `response` events is exact
   * (the same as `emitWithAck`, without a promise tick in between).
   */
  request(envelope: unknown, timeoutMs = 5000): Promise<Ack> {
    return this.emitRequest([envelope], timeoutMs);
  }

  /** Emits `request` with arbitrary arguments (none, several, non-objects) and an ack callback. */
  emitRequest(args: unknown[], timeoutMs = 5000): Promise<Ack> {
    const env = args[0] as { id?: unknown } | undefined;
    const id = env && typeof env === 'object' && !Array.isArray(env) ? env.id : undefined;
    if (typeof id === 'string' && !this.state.has(id)) this.state.set(id, { active: false, nextSeq: 0 });
    return new Promise((resolve, reject) => {
      this.socket.timeout(timeoutMs).emit('request', ...args, (err: Error | null, ack: Ack) => {
        if (err) {
          reject(new Error(`${this.name}: no ack within ${timeoutMs} ms for request ${describe(args)}`));
          return;
        }
        this.onAck(id, ack);
        resolve(ack);
      });
    });
  }

  /** How many responses `id` had when its latest request was accepted (its later ones belong to that request). */
  responsesBeforeAccept(id: string): number {
    return this.acceptedAt.get(id) ?? 0;
  }

  /**
   * Sends a `request` whose body is `json` written verbatim into a Socket.IO EVENT packet
   * (`2<ackId>["request",<json>]`), bypassing socket.io-client's encoder — for bodies it
   * cannot encode (10,000-deep nesting overflows its binary check) or invalid JSON. The ack
   * arrives through the client's normal ack table. `id` is the request id the body carries,
   * if any, for the protocol checks.
   */
  requestRaw(json: string, id?: string, timeoutMs = 5000): Promise<Ack> {
    if (typeof id === 'string' && !this.state.has(id)) this.state.set(id, { active: false, nextSeq: 0 });
    const ackId = Client.rawAckIds++;
    const acks = (this.socket as unknown as { acks: Record<number, (ack: Ack) => void> }).acks;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        delete acks[ackId];
        reject(new Error(`${this.name}: no ack within ${timeoutMs} ms for raw request ${json.slice(0, 200)}`));
      }, timeoutMs);
      acks[ackId] = (ack: Ack) => {
        clearTimeout(timer);
        this.onAck(id, ack);
        resolve(ack);
      };
      this.writeRaw(`2${ackId}["request",${json}]`);
    });
  }

  /** Writes one raw Socket.IO packet (the engine.io message framing is added). */
  writeRaw(packet: string): void {
    (this.socket.io.engine as unknown as { write(msg: string): void }).write(packet);
  }

  private static rawAckIds = 1_000_000_000;

  cancel(id: unknown): void {
    this.socket.emit('cancel', { id });
  }

  /** All `response` events for `id`, in arrival order. */
  responses(id: string): ResponseEvent[] {
    return this.log.flatMap((e) => (e.kind === 'response' && e.event?.id === id ? [e.event] : []));
  }

  allResponses(): ResponseEvent[] {
    return this.log.flatMap((e) => (e.kind === 'response' ? [e.event] : []));
  }

  /** Waits until `check` holds, re-checking whenever an event arrives. */
  async waitFor<T>(check: () => T, timeoutMs: number, what: string): Promise<NonNullable<T>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = check();
      if (value) return value as NonNullable<T>;
      if (this.lostReason) {
        const seen = this.log.slice(-5).map((e) => describe(e, 300));
        throw new Error(
          `${this.name}: the connection was closed (${this.lostReason}) while waiting for ${what}; last events:\n${seen.join('\n')}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const seen = this.log.slice(-10).map((e) => JSON.stringify(e).slice(0, 300));
        throw new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}; last events:\n${seen.join('\n')}`);
      }
      await new Promise<void>((resolve) => {
        const listeners = this.listeners;
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          listeners.delete(done);
          resolve();
        }
        listeners.add(done);
      });
    }
  }

  /** The first final response (`result` or `error`) for `id` from `fromIndex` of its responses on. */
  final(id: string, timeoutMs = 10_000, fromIndex = 0): Promise<ResponseEvent> {
    return this.waitFor(
      () => this.responses(id).slice(fromIndex).find((r) => r.type !== 'chunk'),
      timeoutMs,
      `the final response for ${id}`,
    );
  }

  /** Fails if any `response` for `id` (or any at all, without an id) arrives within `ms`. */
  async expectQuiet(ms: number, id?: string): Promise<void> {
    const before = id ? this.responses(id).length : this.allResponses().length;
    await sleep(ms);
    const after = id ? this.responses(id) : this.allResponses();
    assert.equal(
      after.length,
      before,
      `${this.name}: unexpected response(s) ${JSON.stringify(after.slice(before)).slice(0, 500)}`,
    );
  }

  close(): void {
    this.closing = true;
    this.socket.disconnect();
  }

  static async connect(ctx: TestContext, url: string, options: ConnectOptions = {}): Promise<Client> {
    const transport = options.transport ?? 'websocket';
    const socket = io(url, {
      ...(transport === 'default' ? {} : { transports: [transport], upgrade: false }),
      reconnection: false,
      forceNew: true,
      timeout: 5000,
      auth: options.auth,
    });
    const client = new Client(options.name ?? `client${++clientCounter}`, socket);
    ctx.clients.push(client);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', (e) => reject(new Error(`${client.name}: connect_error ${e.message}`)));
    });
    return client;
  }
}

/**
 * Tries to connect and expects the host to refuse the handshake: resolves with the
 * `connect_error` message (e.g. "unauthorized"); fails if the client connects.
 */
export async function connectRefusal(ctx: TestContext, url: string, options: ConnectOptions = {}): Promise<string> {
  try {
    const client = await Client.connect(ctx, url, options);
    client.close();
  } catch (error) {
    const message = (error as Error).message;
    const m = message.match(/connect_error (.*)$/s);
    if (m) return m[1];
    throw error;
  }
  throw new Error(`the host accepted a connection it should have refused (${describe(options.auth)})`);
}

/** `connect(ctx, url)`: a WebSocket client; `connectPolling` for HTTP long-polling. */
export const connect = (ctx: TestContext, url: string, options: ConnectOptions = {}) => Client.connect(ctx, url, options);
export const connectPolling = (ctx: TestContext, url: string, options: ConnectOptions = {}) =>
  Client.connect(ctx, url, { ...options, transport: 'polling' });

export interface RequestOutcome {
  ack: Ack;
  /** The responses of this request, in order (empty when refused). */
  responses: ResponseEvent[];
  final: ResponseEvent | undefined;
}

/**
 * Sends one request and, when accepted, waits for its final response.
 * `timeout` bounds each of the two waits.
 */
export async function request(
  client: Client,
  envelope: { id: string; requestType: string; payload?: unknown },
  options: { timeout?: number; ackTimeout?: number } = {},
): Promise<RequestOutcome> {
  const ack = await client.request(envelope, options.ackTimeout ?? 5000);
  if (!ack.ok) return { ack, responses: [], final: undefined };
  // Responses may have arrived in the same tick as the ack: count from the ack itself.
  const start = client.responsesBeforeAccept(envelope.id);
  const final = await client.final(envelope.id, options.timeout ?? 10_000, start);
  const responses = client.responses(envelope.id).slice(start);
  return { ack, responses: responses.slice(0, responses.indexOf(final) + 1), final };
}

// ---------------------------------------------------------------------------------------
// Assertions shared by the tests
// ---------------------------------------------------------------------------------------

export function assertAccepted(ack: Ack, what = 'request'): void {
  assert.deepEqual(ack, { ok: true }, `${what} should be accepted with exactly { ok: true }`);
}

/** The ack refuses with `code`; returns the error object. */
export function assertRefused(ack: Ack, code: string, what = 'request'): ErrorObject {
  assert.equal(ack.ok, false, `${what} should be refused with ${code}, got ${JSON.stringify(ack)}`);
  const error = (ack as { error: ErrorObject }).error;
  assert.equal(errorObjectProblem(error), undefined, `${what}: ${errorObjectProblem(error)}`);
  assert.equal(error.code, code, `${what}: expected ${code}, got ${JSON.stringify(error)}`);
  assert.ok(error.message.length > 0, `${what}: the host's error message says what is wrong`);
  assert.deepEqual(Object.keys(ack).sort(), ['error', 'ok'], `${what}: refusing ack has exactly ok and error`);
  return error;
}

/** A final `error` response with `code`; returns the error object. */
export function assertErrorResponse(event: ResponseEvent | undefined, code: string, what = 'request'): ErrorObject {
  assert.ok(event, `${what}: no final response`);
  assert.equal(event.type, 'error', `${what}: expected an error response, got ${JSON.stringify(event)}`);
  assert.equal(errorObjectProblem(event.error), undefined);
  assert.equal(event.error!.code, code, `${what}: expected ${code}, got ${JSON.stringify(event.error)}`);
  return event.error!;
}

export function assertAlive(host: Host): void {
  assert.ok(host.proc.alive, `${host.name} is not running: ${host.proc.exitInfo && describeExit(host.proc.exitInfo)}`);
}
