/**
 * Nothing is silently lost when the host produces events faster than one connection drains
 * them for a moment: every `request` gets its ack (§1: the ack of a request is always sent),
 * and a fast worker's stream reaches a client that reads as fast as it can — complete, in
 * order, with its final response (§1 "Chunks of one request arrive in order", §2.3 "zero or
 * more chunks, then exactly one result or error").
 *
 * Some tests shrink the host's per-socket send buffer (`[host] socket_buffer = 16`, the
 * smallest it takes) so that a burst overflows it deterministically; the protocol's promises
 * do not depend on that setting.
 */

import assert from 'node:assert/strict';

import {
  type Ack,
  connect,
  e2e,
  FakeWorker,
  type Received,
  request,
  startHost,
  type TestContext,
  TYPES,
  uniqueId,
} from './harness.js';

const SMALL_BUFFER = { socket_buffer: 16 };

/** A worker publishes `count` chunks back to back, then the result; the client must get them all. */
async function burst(ctx: TestContext, transport: 'websocket' | 'polling', count: number, hostSettings = {}) {
  const host = await startHost(ctx, { hostSettings });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url, { transport });
  const id = uniqueId();
  // The worker may start streaming before the host has processed the publisher confirm: the
  // host then buffers chunks until it acks (§3.1), which took over 5 s on a loaded 2-core machine.
  const pending = request(client, { id, requestType: TYPES.echo, payload: {} }, { timeout: 60_000, ackTimeout: 60_000 });
  const received = await worker.next();
  for (let i = 0; i < count; i++) {
    worker.channel.publish('', received.replyTo, Buffer.from(JSON.stringify({ i })), {
      correlationId: received.correlationId,
      type: 'chunk',
      contentType: 'application/json',
      headers: { 'x-seq': i },
    });
  }
  await worker.channel.waitForConfirms();
  await worker.result(received, { total: count });
  const { responses } = await pending;
  assert.equal(responses.length, count + 1);
  responses.slice(0, count).forEach((r, i) => {
    if (r.seq !== i || (r.data as { i: number }).i !== i) assert.fail(`chunk ${i} is ${JSON.stringify(r)}`);
  });
  assert.deepEqual(responses[count], { id, type: 'result', data: { total: count } });
  assert.equal(client.lostReason, undefined, 'the connection stays up');
}

e2e('a burst of 50,000 chunks reaches a WebSocket client reading at full speed, complete and in order', (ctx) => burst(ctx, 'websocket', 50_000), {
  timeout: 90_000,
});

e2e('a burst of 10,000 chunks reaches a long-polling client, complete and in order', (ctx) => burst(ctx, 'polling', 10_000), {
  timeout: 90_000,
});

e2e('a burst of 2,000 chunks reaches the client even with a 16-packet send buffer', (ctx) => burst(ctx, 'websocket', 2_000, SMALL_BUFFER), {
  timeout: 90_000,
});

e2e('2,000 concurrent requests with a 16-packet send buffer: every one gets its ack, or the client is dropped — never a silent loss', async (ctx) => {
  const host = await startHost(ctx, { hostSettings: SMALL_BUFFER });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo], { prefetch: 500 });
  const client = await connect(ctx, host.url);
  // The worker answers everything it gets.
  let stop = false;
  const answering = (async () => {
    while (!stop) {
      const r: Received | undefined = await worker.next(200).catch(() => undefined);
      if (!r) continue;
      await worker.result(r, r.json());
      worker.ack(r);
    }
  })();
  try {
    const ids = Array.from({ length: 2000 }, (_, i) => `many-${i}`);
    const acks = await Promise.allSettled(ids.map((id, i) => client.request({ id, requestType: TYPES.echo, payload: i }, 15_000)));
    const missing = acks.flatMap((a, i) => (a.status === 'rejected' ? [ids[i]] : []));
    if (missing.length > 0) {
      // An ack that cannot be sent (the client's buffer is full) makes the host cancel the
      // request and drop the client: the client learns of it at once, instead of waiting.
      assert.notEqual(
        client.lostReason,
        undefined,
        `${missing.length} of 2000 requests never got an ack and the connection stayed up (first: ${missing.slice(0, 3).join(', ')})`,
      );
      return;
    }
    const accepted = ids.filter((_, i) => ((acks[i] as PromiseFulfilledResult<Ack>).value).ok);
    for (const [i, a] of acks.entries()) {
      const ack = (a as PromiseFulfilledResult<Ack>).value;
      if (!ack.ok) assert.ok(['RATE_LIMITED', 'UNAVAILABLE'].includes(ack.error.code), `request ${i}: ${JSON.stringify(ack)}`);
    }
    await client.waitFor(
      () => accepted.every((id) => client.responses(id).some((r) => r.type !== 'chunk')),
      30_000,
      `final responses for all ${accepted.length} accepted requests`,
    );
    assert.equal(client.lostReason, undefined, 'the connection stays up');
  } finally {
    stop = true;
    await answering;
  }
}, { timeout: 90_000 });
