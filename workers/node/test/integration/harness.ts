/**
 * The integration harness: the real `taskgate` host binary on a free port with a plugins.toml
 * of the test's own (queue names unique to the run: RabbitMQ is shared with other test runs),
 * the real RabbitMQ, `socket.io-client` as the browser, and workers either in this process (the
 * SDK itself) or as child processes (the example workers, under Node or Bun). Small pieces of
 * tests/e2e/src/harness.ts, adapted to Jest.
 *
 * `withRun(async (run) => …)` owns a test's resources: processes, clients, queues. They are
 * cleaned up whatever happens, and a failing test's error carries every process's log.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import amqp from 'amqplib';
import type { Channel, ChannelModel } from 'amqplib';
import { io, type Socket } from 'socket.io-client';

import { consoleLogger, createWorker, type Worker, type WorkerOptions } from '../../src/index.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** workers/node. */
export const PACKAGE_ROOT = path.resolve(HERE, '../..');
export const REPO_ROOT = path.resolve(PACKAGE_ROOT, '../..');
export const AMQP_URL = process.env.TASKGATE_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';
export const HOST_BIN = process.env.TASKGATE_BIN ?? path.join(REPO_ROOT, 'target/debug/taskgate');
export const PLUGINS_DIR = process.env.TASKGATE_TEST_PLUGINS_DIR ?? path.join(REPO_ROOT, 'build/plugins');
export const EXAMPLES_DIR = path.join(PACKAGE_ROOT, 'dist/examples');

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns something truthy; fails with `what` after `timeoutMs`. */
export async function waitUntil<T>(check: () => T | Promise<T>, timeoutMs: number, what: string, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

const liveChildren = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process whose output lines are kept, for waiting on them and for failure dumps. */
export class Proc {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | undefined;
  private listeners = new Set<() => void>();

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
        for (const listener of this.listeners) listener();
      });
    }
    this.exited = new Promise((resolve) => {
      this.child.once('error', () => {
        this.exitInfo = { code: null, signal: null };
        liveChildren.delete(this.child);
        resolve(this.exitInfo);
      });
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        liveChildren.delete(this.child);
        for (const listener of this.listeners) listener();
        resolve(this.exitInfo);
      });
    });
  }

  matching(pattern: RegExp): string[] {
    return this.lines.filter((l) => pattern.test(l));
  }

  /** Resolves with the `n`th line (1-based) matching `pattern`, seen already or still to come. */
  waitForLine(pattern: RegExp, timeoutMs: number, n = 1): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.matching(pattern)[n - 1];
        if (found !== undefined) {
          done();
          resolve(found);
        } else if (this.exitInfo) {
          done();
          reject(new Error(`${this.name} exited (${JSON.stringify(this.exitInfo)}) before printing ${pattern}\n${this.tail()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no line matching ${pattern} (#${n}) within ${timeoutMs} ms\n${this.tail()}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  tail(n = 40): string {
    return this.lines.slice(-n).map((l) => `    | ${l}`).join('\n');
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const info = await this.exited;
    clearTimeout(timer);
    return info;
  }
}

/** Our environment without TASKGATE_* settings that would override the test's own. */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('TASKGATE_') || k === 'NODE_OPTIONS') continue;
    env[k] = v;
  }
  env.TASKGATE_LOG = 'info,taskgate_host=debug,lapin=warn,socketioxide=warn,engineioxide=warn';
  env.NO_COLOR = '1';
  return { ...env, ...extra };
}

// ---------------------------------------------------------------------------------------
// One test's resources
// ---------------------------------------------------------------------------------------

export class TestRun {
  /** Unique per test: queue names contain it. */
  readonly id = randomBytes(5).toString('hex');
  readonly procs: Proc[] = [];
  readonly queues = new Set<string>();
  readonly clients: Client[] = [];
  /** Log lines of in-process workers (name → lines), dumped with the processes'. */
  readonly memoryLogs = new Map<string, string[]>();
  private readonly cleanups: Array<() => Promise<unknown>> = [];
  private readonly dirs: string[] = [];
  private connection: ChannelModel | undefined;

  /** The broker this run's queues live on (a test with a private broker changes it). */
  amqpUrl = AMQP_URL;

  queueFor(requestType: string): string {
    return `node-sdk.${this.id}.${requestType}`;
  }

  /**
   * The run's own dead-letter queue (`[host] dead_letter_queue`; also its exchange's name,
   * and `<name>.inbox` the hosts' inbox), so that no run sees another's dead letters.
   * Deleted at the end.
   */
  get deadLetterQueue(): string {
    return `node-sdk.${this.id}.dead-letters`;
  }

  onCleanup(fn: () => Promise<unknown>): void {
    this.cleanups.push(fn);
  }

  async tmpDir(): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), `taskgate-node-${this.id}-`));
    this.dirs.push(dir);
    return dir;
  }

  /** A connection of the test's own, for looking at queues. */
  async amqp(): Promise<ChannelModel> {
    if (!this.connection) {
      this.connection = await amqp.connect(this.amqpUrl, { noDelay: true });
      this.connection.on('error', () => undefined);
    }
    return this.connection;
  }

  /** Runs `op` on a fresh channel (a refused operation closes its channel) and closes it. */
  async onChannel<T>(op: (channel: Channel) => Promise<T>): Promise<T> {
    const channel = await (await this.amqp()).createChannel();
    channel.on('error', () => undefined);
    try {
      return await op(channel);
    } finally {
      await channel.close().catch(() => undefined);
    }
  }

  /** Messages ready in `queue` and its consumers. */
  queueState(queue: string): Promise<{ messageCount: number; consumerCount: number }> {
    return this.onChannel((ch) => ch.checkQueue(queue));
  }

  async cleanup(): Promise<void> {
    for (const client of this.clients) client.close();
    for (const fn of this.cleanups.reverse()) await fn().catch(() => undefined);
    await Promise.all(this.procs.map((p) => p.stop()));
    for (const queue of this.queues) await this.onChannel((ch) => ch.deleteQueue(queue)).catch(() => undefined);
    if (this.queues.has(this.deadLetterQueue)) {
      await this.onChannel((ch) => ch.deleteExchange(this.deadLetterQueue)).catch(() => undefined);
    }
    await this.connection?.close().catch(() => undefined);
    for (const dir of this.dirs) await rm(dir, { recursive: true, force: true });
  }

  dump(): string {
    const parts = [`==== run ${this.id} ====`];
    for (const p of this.procs) {
      parts.push(`---- ${p.name} (${p.exitInfo ? JSON.stringify(p.exitInfo) : 'running'}; ${p.lines.length} lines) ----`);
      parts.push(...(p.lines.length <= 200 ? p.lines : [...p.lines.slice(0, 50), '…', ...p.lines.slice(-150)]));
    }
    for (const [name, lines] of this.memoryLogs) parts.push(`---- ${name} (in process) ----`, ...lines.slice(-200));
    for (const c of this.clients) parts.push(`---- ${c.name} events ----`, ...c.events.map((e) => JSON.stringify(e).slice(0, 300)));
    return parts.join('\n');
  }
}

/** Runs `body` with a fresh `TestRun`; cleans up; a failure carries the processes' logs. */
export async function withRun(body: (run: TestRun) => Promise<void>): Promise<void> {
  const run = new TestRun();
  try {
    await body(run);
  } catch (error) {
    const dump = run.dump();
    await run.cleanup();
    if (error instanceof Error) {
      error.message = `${error.message}\n${dump}`;
      throw error;
    }
    throw new Error(`${String(error)}\n${dump}`);
  }
  await run.cleanup();
}

// ---------------------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------------------

export interface Host {
  url: string;
  /** Request type → queue. */
  queues: Record<string, string>;
  proc: Proc;
}

type TomlScalar = string | number | boolean;
/** A plugin table's keys; an object is written as an inline table (e.g. `retry`). */
export type PluginSettings = Record<string, TomlScalar | Record<string, TomlScalar>>;

function tomlValue(v: TomlScalar | Record<string, TomlScalar>): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'object') return `{ ${Object.entries(v).map(([k, x]) => `${k} = ${tomlValue(x)}`).join(', ')} }`;
  return String(v);
}

/**
 * Starts the host with the echo and countdown plugins (each on a queue unique to the run;
 * `plugins` adds settings) on a free port, and waits until it is connected to RabbitMQ.
 */
export async function startHost(
  run: TestRun,
  plugins: Record<string, PluginSettings> = {},
  amqpUrl: string = AMQP_URL,
): Promise<Host> {
  if (!existsSync(HOST_BIN)) throw new Error(`the host binary is not at ${HOST_BIN}: cargo build --workspace --bins`);
  if (!existsSync(PLUGINS_DIR) || !readdirSync(PLUGINS_DIR).some((f) => f.endsWith('.so'))) {
    throw new Error(`no plugins in ${PLUGINS_DIR}: scripts/build-plugins`);
  }
  const types: Record<string, string> = { echo: 'echo', countdown: 'demo.countdown' };
  const queues: Record<string, string> = {};
  const lines = ['[host]', 'listen = "127.0.0.1:0"', `amqp_url = ${JSON.stringify(amqpUrl)}`, `plugins_dir = ${JSON.stringify(PLUGINS_DIR)}`];
  lines.push(`dead_letter_queue = ${JSON.stringify(run.deadLetterQueue)}`);
  run.queues.add(run.deadLetterQueue);
  run.queues.add(`${run.deadLetterQueue}.inbox`);
  for (const [plugin, type] of Object.entries(types)) {
    const queue = run.queueFor(type);
    queues[type] = queue;
    run.queues.add(queue);
    lines.push('', `[plugins.${plugin}]`, 'enabled = true', `queue = ${JSON.stringify(queue)}`);
    for (const [k, v] of Object.entries(plugins[plugin] ?? {})) lines.push(`${k} = ${tomlValue(v)}`);
  }
  const config = path.join(await run.tmpDir(), 'plugins.toml');
  await writeFile(config, `${lines.join('\n')}\n`);
  const proc = new Proc(`host-${run.procs.length + 1}`, HOST_BIN, ['--config', config], childEnv());
  run.procs.push(proc);
  const line = await proc.waitForLine(/listening on (\S+)/, 30_000);
  const url = `http://${/listening on (\S+)/.exec(line)?.[1]}`;
  await waitUntil(
    async () => (await fetch(`${url}/readyz`).catch(() => undefined))?.status === 200,
    30_000,
    'the host to be connected to RabbitMQ (/readyz)',
    50,
  );
  return { url, queues, proc };
}

// ---------------------------------------------------------------------------------------
// Example workers as processes
// ---------------------------------------------------------------------------------------

/** Bun's binary: the `bun` package's (its postinstall links it), else the platform package's. */
export function bunBinary(): string {
  const candidates = [
    path.join(PACKAGE_ROOT, 'node_modules/.bin/bun'),
    path.join(PACKAGE_ROOT, 'node_modules/bun/bin/bun.exe'),
    path.join(PACKAGE_ROOT, 'node_modules/@oven/bun-linux-x64/bin/bun'),
    path.join(PACKAGE_ROOT, 'node_modules/@oven/bun-linux-x64-baseline/bin/bun'),
  ];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`Bun is not installed (looked at ${candidates.join(', ')}): npm ci in workers/node`);
  return found;
}

export interface ExampleOptions {
  runtime?: 'node' | 'bun';
  prefetch?: number;
  amqpUrl?: string;
  name?: string;
}

/** Starts `dist/examples/<script>.js` on `queues` (request type → queue) and waits for `worker ready`. */
export async function startExample(
  run: TestRun,
  script: 'countdown' | 'echo' | 'all',
  queues: Record<string, string>,
  options: ExampleOptions = {},
): Promise<Proc> {
  const file = path.join(EXAMPLES_DIR, `${script}.js`);
  if (!existsSync(file)) throw new Error(`${file} is missing: npm run build`);
  const args = [file, '--amqp-url', options.amqpUrl ?? AMQP_URL];
  for (const [type, queue] of Object.entries(queues)) args.push('--queue', `${type}=${queue}`);
  if (options.prefetch !== undefined) args.push('--prefetch', String(options.prefetch));
  const runtime = options.runtime ?? 'node';
  const bin = runtime === 'bun' ? bunBinary() : process.execPath;
  const proc = new Proc(options.name ?? `${runtime}-${script}-${run.procs.length + 1}`, bin, args, childEnv({ TASKGATE_LOG: 'debug' }));
  run.procs.push(proc);
  await proc.waitForLine(/worker ready/, 30_000);
  return proc;
}

// ---------------------------------------------------------------------------------------
// The browser side
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

let clientCounter = 0;

/** A socket.io-client connection that records acks and responses. */
export class Client {
  readonly events: Array<{ kind: 'ack'; id: string; ack: Ack } | { kind: 'response'; event: ResponseEvent }> = [];
  private listeners = new Set<() => void>();

  private constructor(
    readonly name: string,
    readonly socket: Socket,
  ) {
    socket.on('response', (event: ResponseEvent) => {
      this.events.push({ kind: 'response', event });
      for (const l of this.listeners) l();
    });
  }

  static async connect(run: TestRun, url: string): Promise<Client> {
    const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, timeout: 10_000 });
    const client = new Client(`client${++clientCounter}`, socket);
    run.clients.push(client);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', (e) => reject(new Error(`connect_error ${e.message}`)));
    });
    return client;
  }

  /** Sends a request and resolves with its ack. */
  request(id: string, requestType: string, payload: unknown, timeoutMs = 15_000): Promise<Ack> {
    return new Promise((resolve, reject) => {
      this.socket.timeout(timeoutMs).emit('request', { id, requestType, payload }, (err: Error | null, ack: Ack) => {
        if (err) return reject(new Error(`no ack for ${id} within ${timeoutMs} ms`));
        this.events.push({ kind: 'ack', id, ack });
        resolve(ack);
      });
    });
  }

  cancel(id: string): void {
    this.socket.emit('cancel', { id });
  }

  responses(id: string): ResponseEvent[] {
    return this.events.flatMap((e) => (e.kind === 'response' && e.event.id === id ? [e.event] : []));
  }

  chunks(id: string): unknown[] {
    return this.responses(id).flatMap((r) => (r.type === 'chunk' ? [r.data] : []));
  }

  /** Waits until `check` holds, re-checking whenever a response arrives. */
  async waitFor<T>(check: () => T, timeoutMs: number, what: string): Promise<NonNullable<T>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = check();
      if (value) return value as NonNullable<T>;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        const listeners = this.listeners;
        function done() {
          clearTimeout(timer);
          listeners.delete(done);
          resolve();
        }
        listeners.add(done);
      });
    }
  }

  /** The final response (result or error) of `id`. */
  final(id: string, timeoutMs = 30_000): Promise<ResponseEvent> {
    return this.waitFor(() => this.responses(id).find((r) => r.type !== 'chunk'), timeoutMs, `the final response of ${id}`);
  }

  /** Every chunk's seq is 0, 1, 2 … in arrival order, and nothing follows the final response. */
  assertOrdered(id: string): void {
    const responses = this.responses(id);
    responses.forEach((r, i) => {
      if (r.type === 'chunk' && r.seq !== i) throw new Error(`${id}: chunk #${i} has seq ${r.seq}: ${JSON.stringify(responses)}`);
      if (r.type !== 'chunk' && i !== responses.length - 1) throw new Error(`${id}: responses after the final one: ${JSON.stringify(responses)}`);
    });
  }

  close(): void {
    this.socket.disconnect();
  }
}

/** Sends a request, checks it is accepted, and waits for its final response. */
export async function call(client: Client, id: string, requestType: string, payload: unknown, timeoutMs = 30_000): Promise<ResponseEvent> {
  const ack = await client.request(id, requestType, payload);
  if (!ack.ok) throw new Error(`${id} was refused: ${JSON.stringify(ack)}`);
  const final = await client.final(id, timeoutMs);
  client.assertOrdered(id);
  return final;
}

// ---------------------------------------------------------------------------------------
// A TCP proxy in front of RabbitMQ, to cut a worker's connection (and only its own)
// ---------------------------------------------------------------------------------------

export class TcpProxy {
  private readonly sockets = new Set<net.Socket>();
  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async start(run: TestRun, target: { host: string; port: number }): Promise<TcpProxy> {
    let proxy!: TcpProxy;
    const server = net.createServer((client) => {
      const upstream = net.connect(target.port, target.host);
      proxy.sockets.add(client).add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        proxy.sockets.delete(client);
        proxy.sockets.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new TcpProxy(server, (server.address() as net.AddressInfo).port);
    run.onCleanup(() => proxy.close());
    return proxy;
  }

  /** The AMQP URL that goes through this proxy. */
  url(amqpUrl = AMQP_URL): string {
    const url = new URL(amqpUrl);
    url.hostname = '127.0.0.1';
    url.port = String(this.port);
    return url.toString();
  }

  /** Open connections through the proxy (each is two sockets). */
  get connections(): number {
    return this.sockets.size / 2;
  }

  /** Cuts every connection through the proxy, as a broker restart or a network failure would. */
  cut(): void {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** RabbitMQ's address in `AMQP_URL`. */
export function brokerAddress(amqpUrl = AMQP_URL): { host: string; port: number } {
  const url = new URL(amqpUrl);
  return { host: url.hostname || '127.0.0.1', port: Number(url.port || 5672) };
}

// ---------------------------------------------------------------------------------------
// The SDK in this process
// ---------------------------------------------------------------------------------------

/**
 * Runs an SDK worker in this process (no signal handlers) and waits until it consumes; its log
 * lines go to `run.memoryLogs` (and `lines`). Stopped at clean-up.
 */
export async function startSdkWorker(
  run: TestRun,
  name: string,
  options: WorkerOptions,
  configure: (worker: Worker) => void,
): Promise<{ worker: Worker; lines: string[]; running: Promise<void> }> {
  const lines: string[] = [];
  run.memoryLogs.set(name, lines);
  const worker = createWorker({
    url: AMQP_URL,
    connectionName: `taskgate-node-sdk-test-${run.id}-${name}`,
    logger: consoleLogger({ level: 'debug', format: 'text', write: (line) => lines.push(line) }),
    ...options,
  });
  configure(worker);
  let failure: unknown;
  const running = worker.run({ signals: false });
  running.catch((error: unknown) => (failure = error ?? new Error('run() failed')));
  run.onCleanup(() => worker.stop());
  await waitUntil(
    () => {
      if (failure) throw failure;
      return worker.consuming;
    },
    30_000,
    `${name} to consume`,
  );
  return { worker, lines, running };
}
