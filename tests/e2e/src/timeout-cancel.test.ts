/**
 * Protocol §1 `TIMEOUT` and `cancel` / `CANCELLED`, and §2.4 cancellation: a request without
 * a final reply within its type's timeout ends with TIMEOUT; a client's `cancel` ends it with
 * CANCELLED; in both cases the host publishes a cancellation (empty body, the correlation id)
 * on the `taskgate.cancel` fanout exchange, and later worker replies are dropped (§2.3).
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertErrorResponse,
  CancelListener,
  connect,
  e2e,
  FakeWorker,
  request,
  sleep,
  startHost,
  startWorkers,
  TYPES,
  uniqueId,
} from './harness.js';

e2e('TIMEOUT: no final reply within the type\'s timeout_ms → error TIMEOUT, a cancellation for workers, late replies dropped', async (ctx) => {
  const timeoutMs = 1500;
  const host = await startHost(ctx, { plugins: { echo: { timeout_ms: timeoutMs } } });
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }));
  const acceptedAt = Date.now();
  const received = await worker.next();
  const final = await client.final(id, timeoutMs + 5000);
  const elapsed = Date.now() - acceptedAt;
  assertErrorResponse(final, 'TIMEOUT');
  assert.ok(elapsed >= timeoutMs - 300, `not before the timeout (after ${elapsed} ms)`);
  assert.ok(elapsed <= timeoutMs + 2500, `soon after the timeout (after ${elapsed} ms)`);

  const cancellation = await cancels.waitFor(received.correlationId);
  assert.equal(cancellation.body.length, 0, 'the cancellation has an empty body');

  // The worker answers too late: nothing more reaches the client.
  await worker.chunk(received, 'late', 0);
  await worker.result(received, 'late');
  await client.expectQuiet(500, id);
  assert.equal(client.responses(id).length, 1);

  // The id is free again.
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }), 'reusing a timed-out id');
});

e2e('TIMEOUT counts from the request, not from the last chunk', async (ctx) => {
  const timeoutMs = 1500;
  const host = await startHost(ctx, { plugins: { echo: { timeout_ms: timeoutMs } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }));
  const received = await worker.next();
  const started = Date.now();
  for (let seq = 0; Date.now() - started < timeoutMs + 800; seq++) {
    await worker.chunk(received, { seq }, seq).catch(() => undefined);
    await sleep(250);
    if (client.responses(id).some((r) => r.type !== 'chunk')) break;
  }
  const responses = client.responses(id);
  const final = responses.find((r) => r.type !== 'chunk');
  assertErrorResponse(final, 'TIMEOUT');
  assert.ok(responses.filter((r) => r.type === 'chunk').length >= 3, 'chunks were relayed until the timeout');
  await client.expectQuiet(300, id);
});

e2e('TIMEOUT with the real echo worker: a reply slower than the timeout is dropped', async (ctx) => {
  const host = await startHost(ctx, { plugins: { echo: { timeout_ms: 1000 } } });
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const { final } = await request(client, { id, requestType: TYPES.echo, payload: { delayMs: 2500 } }, { timeout: 5000 });
  assertErrorResponse(final, 'TIMEOUT');
  await client.expectQuiet(2500, id);
  // The worker is fine and serves the next request.
  const next = await request(client, { id: uniqueId(), requestType: TYPES.echo, payload: 'quick' }, { timeout: 5000 });
  assert.equal(next.final?.data, 'quick');
});

e2e('CANCEL: the client cancels → error CANCELLED, workers get the cancellation, a late result is not delivered', async (ctx) => {
  const host = await startHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }));
  const received = await worker.next();
  await worker.chunk(received, 'partial', 0);
  await client.waitFor(() => client.responses(id).length === 1, 5000, 'the first chunk');
  const cancelledAt = Date.now();
  client.cancel(id);
  const final = await client.final(id, 5000);
  assert.ok(Date.now() - cancelledAt < 2000, 'CANCELLED promptly');
  assertErrorResponse(final, 'CANCELLED');
  assert.deepEqual(client.responses(id).map((r) => r.type), ['chunk', 'error']);

  const cancellation = await cancels.waitFor(received.correlationId);
  assert.equal(cancellation.body.length, 0, 'the cancellation has an empty body');
  assert.equal(cancellation.correlationId, received.correlationId);

  // The worker did not notice in time and finishes anyway: dropped.
  await worker.chunk(received, 'late', 1);
  await worker.result(received, 'late result');
  await worker.error(received, { code: 'CANCELLED', message: 'stopped' });
  await client.expectQuiet(500, id);

  // A second cancel of the same, now finished, id changes nothing.
  client.cancel(id);
  await client.expectQuiet(300, id);
  // The id is free again.
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }), 'reusing a cancelled id');
});

e2e('CANCEL right after the request (before its ack) still ends it with CANCELLED', async (ctx) => {
  const host = await startHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const ids = Array.from({ length: 20 }, () => uniqueId());
  const acks = ids.map((id) => {
    const ack = client.request({ id, requestType: TYPES.echo, payload: { id } });
    client.cancel(id);
    return ack;
  });
  for (const [i, ack] of (await Promise.all(acks)).entries()) {
    // A cancel that overtakes its request may refuse it or accept-then-cancel it; either way
    // the client is told it ended, and the request does not run to completion.
    if (ack.ok) assertErrorResponse(await client.final(ids[i], 5000), 'CANCELLED', `request ${i}`);
  }
  // Every request that reached the queue is cancelled for the workers too.
  await sleep(300);
  for (const r of worker.received) {
    await cancels.waitFor(r.correlationId, 3000);
    await worker.result(r, 'too late');
  }
  await client.expectQuiet(500);
  assert.ok(
    acks.length === 20 && ids.every((id) => client.responses(id).length <= 1),
    'at most one (final) response per request',
  );
});

e2e('cancel is scoped to the connection, and unknown, finished or malformed cancels are harmless', async (ctx) => {
  const host = await startHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const alice = await connect(ctx, host.url, { name: 'alice' });
  const bob = await connect(ctx, host.url, { name: 'bob' });

  // Harmless cancels.
  alice.cancel('never-sent');
  alice.socket.emit('cancel', {});
  alice.socket.emit('cancel', 'not an object');
  alice.socket.emit('cancel', null);
  alice.socket.emit('cancel', { id: 5 });
  alice.socket.emit('cancel');
  alice.socket.emit('cancel', { id: 'x'.repeat(100_000) });

  // Both have a request with the same id in flight; alice cancels hers.
  assertAccepted(await alice.request({ id: 'same', requestType: TYPES.echo, payload: 'alice' }));
  assertAccepted(await bob.request({ id: 'same', requestType: TYPES.echo, payload: 'bob' }));
  const r1 = await worker.next();
  const r2 = await worker.next();
  const [ra, rb] = r1.json() === 'alice' ? [r1, r2] : [r2, r1];
  alice.cancel('same');
  assertErrorResponse(await alice.final('same', 5000), 'CANCELLED');
  await cancels.waitFor(ra.correlationId);
  await bob.expectQuiet(300);
  assert.equal(cancels.find(rb.correlationId), undefined, 'bob\'s request is not cancelled');
  await worker.result(rb, 'bob done');
  assert.deepEqual(await bob.final('same'), { id: 'same', type: 'result', data: 'bob done' });

  // Cancelling a finished request sends nothing more.
  bob.cancel('same');
  await bob.expectQuiet(300);
  assert.equal(bob.responses('same').length, 1);

  // Alice's connection still works.
  const id = uniqueId();
  const pending = request(alice, { id, requestType: TYPES.echo, payload: 'ok' });
  const r3 = await worker.next();
  await worker.result(r3, 'fine');
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'fine' });
});

e2e('CANCEL with the real countdown worker: the stream stops and the worker stops early', async (ctx) => {
  const host = await startHost(ctx);
  // One countdown at a time: the second one only starts once the first is acked.
  await startWorkers(ctx, host.queues, { only: [TYPES.countdown], prefetch: 1 });
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.countdown, payload: { from: 50, intervalMs: 100 } }));
  await client.waitFor(() => client.responses(id).length >= 2, 10_000, 'two chunks');
  client.cancel(id);
  assertErrorResponse(await client.final(id, 5000), 'CANCELLED');
  const count = client.responses(id).length;
  await client.expectQuiet(600, id);
  assert.equal(client.responses(id).length, count, 'no chunk after CANCELLED');

  // Had the worker not stopped, the next countdown would wait ~4.5 s for its slot.
  const started = Date.now();
  const next = await request(client, { id: uniqueId(), requestType: TYPES.countdown, payload: { from: 2, intervalMs: 10 } }, { timeout: 10_000 });
  assert.deepEqual(next.final?.data, { done: true });
  assert.ok(Date.now() - started < 2500, `the worker stopped the cancelled countdown early (next one took ${Date.now() - started} ms)`);
});
