/**
 * A RabbitMQ node of the test's own, for the consumer-timeout test (the same approach as
 * workers/python/tests/integration/private_broker.py).
 *
 * The consumer timeout is a broker setting. RabbitMQ 3.12+ can set it per queue, which a test
 * could scope to its own queue; the Debian RabbitMQ here is 3.10, where it is one global
 * `consumer_timeout` read when a channel opens. Lowering it on the shared broker would change it
 * for everyone, so the test starts a throwaway node from the same installation: its own node
 * name, ports, data directory and config (a 2 s consumer timeout, a fast channel tick so that
 * the timeout is noticed promptly), loopback only, no plugins. It is stopped and deleted afterwards.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { sleep } from './harness.js';

const SERVER = process.env.TASKGATE_RABBITMQ_SERVER ?? '/usr/lib/rabbitmq/bin/rabbitmq-server';

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export class PrivateBroker {
  private process: ChildProcess | undefined;

  private constructor(
    readonly dir: string,
    readonly port: number,
  ) {}

  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.port}/%2f`;
  }

  static available(): boolean {
    return existsSync(SERVER);
  }

  static async start(consumerTimeoutMs: number, timeoutMs = 90_000): Promise<PrivateBroker> {
    const dir = await mkdtemp(path.join(tmpdir(), 'taskgate-node-rabbit-'));
    const broker = new PrivateBroker(dir, await freePort());
    const distPort = await freePort();
    await writeFile(path.join(dir, 'rabbitmq-env.conf'), '');
    await writeFile(
      path.join(dir, 'rabbitmq.conf'),
      `listeners.tcp.1 = 127.0.0.1:${broker.port}\nconsumer_timeout = ${consumerTimeoutMs}\nloopback_users.guest = true\n`,
    );
    // The channel checks its consumer timeout on each tick (default: every 60 s).
    await writeFile(path.join(dir, 'advanced.config'), '[{rabbit, [{channel_tick_interval, 500}]}].\n');
    await writeFile(path.join(dir, 'enabled_plugins'), '[].\n');
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('RABBITMQ_') && !k.startsWith('TASKGATE_')) env[k] = v;
    Object.assign(env, {
      HOME: dir, // its own Erlang cookie
      RABBITMQ_CONF_ENV_FILE: path.join(dir, 'rabbitmq-env.conf'),
      RABBITMQ_NODENAME: `taskgate-node-test-${randomBytes(4).toString('hex')}@localhost`,
      RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: path.join(dir, 'advanced.config'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
      RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(dir, 'log'),
      RABBITMQ_PID_FILE: path.join(dir, 'pid'),
      RABBITMQ_DIST_PORT: String(distPort),
      ERL_EPMD_ADDRESS: '127.0.0.1',
    });
    const out = openSync(path.join(dir, 'server.out'), 'w');
    // Its own process group: the launcher script and the Erlang VM are stopped together.
    broker.process = spawn(SERVER, [], { env, stdio: ['ignore', out, out], detached: true });
    closeSync(out);
    const deadline = Date.now() + timeoutMs;
    while (!(await listening(broker.port))) {
      if (broker.process.exitCode !== null || Date.now() > deadline) {
        const output = readFileSync(path.join(dir, 'server.out'), 'utf8').slice(-3000);
        await broker.stop();
        throw new Error(`the private RabbitMQ node did not start:\n${output}`);
      }
      await sleep(200);
    }
    return broker;
  }

  async stop(): Promise<void> {
    const child = this.process;
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, 30_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
