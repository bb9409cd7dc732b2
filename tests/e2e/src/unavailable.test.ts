/**
 * Protocol §1 `UNAVAILABLE` ("the broker is unreachable or refused the publish") and §2.2's
 * mandatory flag: a host without a broker refuses requests promptly instead of hanging, and
 * says so on /readyz; a request whose queue is gone is returned by the broker and refused;
 * a host whose broker connection is dropped reconnects and serves again.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';

import {
  assertAccepted,
  assertAlive,
  assertRefused,
  connect,
  e2e,
  FakeWorker,
  request,
  sleep,
  startHost,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';

const run = promisify(execFile);
const UNREACHABLE = 'amqp://guest:guest@127.0.0.1:1/%2f';

e2e('UNAVAILABLE: with the broker unreachable, requests are refused within seconds and /readyz is 503', async (ctx) => {
  const host = await startHost(ctx, { args: ['--amqp-url', UNREACHABLE], waitReady: false });
  // Give it time to try (and fail) to connect.
  await sleep(500);
  for (let i = 0; i < 3; i++) {
    const ready = await host.readyz();
    assert.equal(ready.status, 503, `/readyz is 503 while the broker is unreachable: ${JSON.stringify(ready.body)}`);
    await sleep(100);
  }
  const health = await fetch(`${host.url}/healthz`);
  assert.equal(health.status, 200, '/healthz (liveness) is still 200');

  const client = await connect(ctx, host.url);
  const started = Date.now();
  const acks = await Promise.all(
    Array.from({ length: 10 }, (_, i) =>
      client.request({ id: uniqueId(), requestType: i % 2 ? TYPES.echo : TYPES.wordcount, payload: i % 2 ? {} : { text: 'x' } }, 15_000),
    ),
  );
  const elapsed = Date.now() - started;
  acks.forEach((ack, i) => assertRefused(ack, 'UNAVAILABLE', `request ${i}`));
  assert.ok(elapsed < 3000, `refused promptly (took ${elapsed} ms)`);

  // Envelope and payload checks still answer with their own codes.
  assertRefused(await client.request({ id: '', requestType: TYPES.echo, payload: {} }), 'BAD_REQUEST');
  assertRefused(await client.request({ id: uniqueId(), requestType: 'no.such.type', payload: {} }), 'UNKNOWN_REQUEST_TYPE');
  await client.expectQuiet(300);
  assertAlive(host);
});

e2e('UNAVAILABLE: a request whose queue no longer exists is returned by the broker (mandatory) and refused', async (ctx) => {
  const host = await startHost(ctx);
  const deleted = await ctx.tryOnChannel((ch) => ch.deleteQueue(host.queues[TYPES.echo]));
  assert.ok(deleted.ok);
  const client = await connect(ctx, host.url);
  const started = Date.now();
  const ack = await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: {} }, 10_000);
  assertRefused(ack, 'UNAVAILABLE', 'unroutable request');
  assert.ok(Date.now() - started < 3000, 'refused promptly');
  await client.expectQuiet(300);
  // Other types are not affected.
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.wordcount]);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.wordcount, payload: { text: 'still fine' } });
  const received = await worker.next();
  await worker.result(received, { words: 2, lines: 1, chars: 10 });
  const outcome = await pending;
  assertAccepted(outcome.ack);
  assert.deepEqual(outcome.final, { id, type: 'result', data: { words: 2, lines: 1, chars: 10 } });
});

/** The broker-side name of the host process's AMQP connection, found through its local port. */
async function brokerConnectionOf(pid: number): Promise<string> {
  const { stdout: sockets } = await run('ss', ['-tnpH', 'state', 'established', 'dport', '= :5672']);
  const line = sockets.split('\n').find((l) => l.includes(`pid=${pid},`));
  assert.ok(line, `the host (pid ${pid}) has a connection to port 5672:\n${sockets}`);
  const localPort = line.trim().split(/\s+/)[2].split(':').pop();
  const { stdout: conns } = await run('rabbitmqctl', ['-q', 'list_connections', 'pid', 'peer_port'], { timeout: 30_000 });
  const conn = conns
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find(([, port]) => port === localPort);
  assert.ok(conn, `rabbitmq lists a connection from port ${localPort}:\n${conns}`);
  return conn[0];
}

const hasRabbitmqctl = ['/usr/sbin/rabbitmqctl', '/usr/bin/rabbitmqctl', '/usr/local/sbin/rabbitmqctl'].some(existsSync);

e2e(
  'a host whose broker connection is closed by the broker reconnects and serves again',
  async (ctx) => {
    const host = await startHost(ctx);
    const client = await connect(ctx, host.url);
    const conn = await brokerConnectionOf(host.proc.child.pid!);
    await run('rabbitmqctl', ['-q', 'close_connection', conn, 'e2e: connection loss test'], { timeout: 30_000 });
    await waitUntil(() => host.proc.lines.some((l) => /lost the broker connection|reconnect/i.test(l)), 10_000, 'the host to notice the loss');
    // Ready again once reconnected, with its queues and reply queue declared again.
    await waitUntil(async () => (await host.readyz()).status === 200, 20_000, '/readyz 200 after reconnecting');
    const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
    const id = uniqueId();
    const pending = request(client, { id, requestType: TYPES.echo, payload: 'after reconnect' }, { ackTimeout: 15_000 });
    const received = await worker.next(10_000);
    await worker.result(received, received.json());
    const outcome = await pending;
    assertAccepted(outcome.ack);
    assert.deepEqual(outcome.final, { id, type: 'result', data: 'after reconnect' });
    assertAlive(host);
  },
  { skip: hasRabbitmqctl ? false : 'rabbitmqctl is not available' },
);
