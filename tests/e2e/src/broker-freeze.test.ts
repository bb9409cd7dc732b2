/**
 * A half-open broker link (issue 20, "Also"): the TCP connection between the host and RabbitMQ
 * stays open but carries nothing more (a TCP proxy in between freezes it). The host learns of it
 * from the first publish whose confirm does not come: it refuses that request `UNAVAILABLE` within
 * the request type's timeout, checks the connection at once, finds it dead, drops it and reconnects
 * — within seconds, not after two missed heartbeats — and serves again.
 */

import assert from 'node:assert/strict';

import { AMQP_URL, connect, e2e, request, startHost, startWorkers, TYPES, uniqueId } from './harness.js';
import { TcpProxy } from './tcp-proxy.js';

e2e('a frozen broker link: the first confirm that times out makes the host check the link, reconnect within seconds and serve again', async (ctx) => {
  const broker = new URL(AMQP_URL);
  const proxy = await TcpProxy.start(ctx, `http://${broker.hostname}:${broker.port || 5672}`);
  const viaProxy = new URL(AMQP_URL);
  viaProxy.hostname = '127.0.0.1';
  viaProxy.port = String(proxy.port);
  const host = await startHost(ctx, { amqpUrl: viaProxy.toString(), plugins: { echo: { timeout_ms: 2000 } } });
  await startWorkers(ctx, host.queues, { only: [TYPES.echo] });
  const client = await connect(ctx, host.url);
  const echo = async () => request(client, { id: uniqueId(), requestType: TYPES.echo, payload: { text: 'x' } }, { ackTimeout: 15_000, timeout: 15_000 });

  assert.equal((await echo()).final?.type, 'result', 'served before the freeze');

  proxy.freeze();
  const frozenAt = Date.now();
  const frozen = await echo();
  assert.equal(frozen.ack.ok, false, 'a publish on the frozen link is refused');
  assert.equal(!frozen.ack.ok && frozen.ack.error.code, 'UNAVAILABLE');
  const refusedAfter = Date.now() - frozenAt;
  assert.ok(refusedAfter < 4000, `refused within the type's 2 s timeout (${refusedAfter} ms)`);

  // Reconnected within seconds of the refusal (two missed heartbeats would take far longer).
  await host.proc.waitForLine(/connected to the broker.*session=2/, 6000);
  const reconnectedAfter = Date.now() - frozenAt;
  assert.ok(
    host.logs().some((l) => /did not answer/.test(l)),
    'the host says why it dropped the connection',
  );
  assert.equal((await echo()).final?.type, 'result', `served again (${reconnectedAfter} ms after the freeze)`);
});
