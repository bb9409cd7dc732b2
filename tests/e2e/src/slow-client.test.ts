/**
 * A client that stops reading its socket cannot make the host buffer without bound
 * (`[limits] client_backlog_bytes`, `client_stall_ms`; docs/protocol.md §3.9): once the
 * kernel's buffers and socketioxide's packet buffer are full, responses wait in the
 * connection's backlog; past its byte limit, or after a stall with no progress, the
 * client is dropped, its requests leave the host's maps and workers are told to stop
 * them (a cancellation per request on `taskgate.cancel`). Other clients are unaffected.
 */

import assert from 'node:assert/strict';

import {
  assertAlive,
  CancelListener,
  connect,
  e2e,
  FakeWorker,
  type Host,
  type Received,
  request,
  startHost,
  type TestContext,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';
import { RawSocket } from './raw.js';

const CHUNK = 'c'.repeat(64 * 1024);

/** A raw client with three echo requests in flight, then no more reading. */
async function stalledClient(ctx: TestContext, host: Host, worker: FakeWorker) {
  const raw = await RawSocket.connected(host.url, undefined, { pong: false });
  ctx.onCleanup(async () => raw.terminate());
  const acks = [1, 2, 3].map((i) => raw.request({ id: `stalled-${i}`, requestType: TYPES.echo, payload: i }));
  const requests: Received[] = [];
  for (let i = 0; i < 3; i++) requests.push(await worker.next(10_000));
  for (const ack of acks) assert.deepEqual(await raw.ack(ack), { ok: true });
  raw.stopReading();
  return { raw, requests };
}

async function inFlight(host: Host): Promise<number> {
  return ((await host.readyz()).body as { inFlight: number }).inFlight;
}

/** A well-behaved client's request still works. */
async function othersUnaffected(ctx: TestContext, host: Host, worker: FakeWorker) {
  const other = await connect(ctx, host.url, { name: 'reader' });
  const id = uniqueId();
  const pending = request(other, { id, requestType: TYPES.echo, payload: 'still here' });
  const r = await worker.next(10_000);
  await worker.result(r, 'still here');
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'still here' });
}

e2e('a client that never reads is dropped when its backlog passes client_backlog_bytes; its requests are cancelled', async (ctx) => {
  const host = await startHost(ctx, {
    hostSettings: { socket_buffer: 16 },
    sections: { limits: { client_backlog_bytes: 256 * 1024, client_stall_ms: 120_000 } },
  });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo], { prefetch: 10 });
  const cancels = await CancelListener.start(ctx);
  const { requests } = await stalledClient(ctx, host, worker);
  assert.equal(await inFlight(host), 3);

  // Stream 64 KiB chunks at the stalled client until the host gives up on it (at most
  // 100 MiB: far beyond the kernel's socket buffers, socketioxide's 16 packets and the
  // 256 KiB backlog).
  const [first] = requests;
  let sent = 0;
  while (!cancels.find(first.correlationId) && sent < 1600) {
    for (let i = 0; i < 16; i++, sent++) {
      worker.channel.publish('', first.replyTo, Buffer.from(JSON.stringify(CHUNK)), {
        correlationId: first.correlationId,
        type: 'chunk',
        contentType: 'application/json',
        headers: { 'x-seq': sent },
      });
    }
    await worker.channel.waitForConfirms();
  }
  console.log(`slow client: published ${sent} chunks of 64 KiB (${(sent * 64) / 1024} MiB) before the drop`);
  for (const r of requests) await cancels.waitFor(r.correlationId, 30_000);
  await host.proc.waitForLine(/disconnecting a client that does not keep up/, 1000);
  await waitUntil(async () => (await inFlight(host)) === 0, 10_000, 'the host to forget the stalled client\'s requests');
  assert.ok(sent < 1600, 'the host dropped the client long before 100 MiB');
  await othersUnaffected(ctx, host, worker);
  assertAlive(host);
});

e2e('a client whose backlog makes no progress for client_stall_ms is dropped even under the byte limit; its requests are cancelled', async (ctx) => {
  const host = await startHost(ctx, {
    hostSettings: { socket_buffer: 16 },
    sections: { limits: { client_backlog_bytes: 64 * 1024 * 1024, client_stall_ms: 2000 } },
  });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo], { prefetch: 10 });
  const cancels = await CancelListener.start(ctx);
  const { requests } = await stalledClient(ctx, host, worker);

  // Publish until the host has a backlog for the client (its log says so) and more than the
  // loopback socket buffers and engine.io's queue can hold (≈ 10 MiB), then stop: the backlog
  // stays far under 64 MiB, only the stall can end it. (Stopping at the first backlog line
  // was flaky: a backlog that began while the kernel buffers still had room drained into
  // them, and a client with no backlog left was never judged stalled.)
  const [first] = requests;
  let sent = 0;
  const beyondBuffers = 256; // × 64 KiB = 16 MiB
  const backlogged = () => host.logs().some((l) => l.includes('responses wait in the backlog'));
  while (!(backlogged() && sent >= beyondBuffers) && sent < 1600) {
    for (let i = 0; i < 8; i++, sent++) {
      worker.channel.publish('', first.replyTo, Buffer.from(JSON.stringify(CHUNK)), {
        correlationId: first.correlationId,
        type: 'chunk',
        contentType: 'application/json',
        headers: { 'x-seq': sent },
      });
    }
    await worker.channel.waitForConfirms();
  }
  assert.ok(backlogged(), `no backlog after ${sent} chunks`);
  const stalledAt = Date.now();
  for (const r of requests) await cancels.waitFor(r.correlationId, 30_000);
  const after = Date.now() - stalledAt;
  console.log(`stalled client: a backlog after ${sent} chunks of 64 KiB; dropped ${after} ms later`);
  assert.ok(host.logs().some((l) => l.includes('its responses made no progress')), 'dropped for the stall');
  await waitUntil(async () => (await inFlight(host)) === 0, 10_000, 'the host to forget the stalled client\'s requests');
  await othersUnaffected(ctx, host, worker);
});
