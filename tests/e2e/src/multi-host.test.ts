/**
 * Protocol §2.5: several hosts share one RabbitMQ and one set of workers. Each host has its
 * own reply queue, so every reply reaches the host (and the connection) that asked.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  CancelListener,
  connect,
  e2e,
  FakeWorker,
  request,
  startHost,
  startWorkers,
  TYPES,
  uniqueId,
} from './harness.js';

e2e('two hosts on the same queues: each has its own reply queue and gets only its own replies', async (ctx) => {
  // Same plugins.toml queues for both (the test's run id), hence the same request queues.
  const a = await startHost(ctx, { name: 'hostA' });
  const b = await startHost(ctx, { name: 'hostB' });
  assert.deepEqual(a.queues, b.queues);
  const worker = await FakeWorker.start(ctx, a.queues[TYPES.echo]);
  const ca = await connect(ctx, a.url, { name: 'clientA' });
  const cb = await connect(ctx, b.url, { name: 'clientB' });

  // The same client id through both hosts.
  assertAccepted(await ca.request({ id: 'same', requestType: TYPES.echo, payload: 'via A' }));
  assertAccepted(await cb.request({ id: 'same', requestType: TYPES.echo, payload: 'via B' }));
  const r1 = await worker.next();
  const r2 = await worker.next();
  const [ra, rb] = r1.json() === 'via A' ? [r1, r2] : [r2, r1];
  assert.notEqual(ra.replyTo, rb.replyTo, 'each host has its own reply queue');
  assert.notEqual(ra.correlationId, rb.correlationId, 'correlation ids are unique across hosts');

  // Answer B first, then A, with streams.
  await worker.chunk(rb, 'B0', 0);
  await worker.chunk(ra, 'A0', 0);
  await worker.result(rb, 'B done');
  await worker.result(ra, 'A done');
  assert.deepEqual(await ca.final('same'), { id: 'same', type: 'result', data: 'A done' });
  assert.deepEqual(await cb.final('same'), { id: 'same', type: 'result', data: 'B done' });
  assert.deepEqual(ca.responses('same').map((r) => r.data), ['A0', 'A done']);
  assert.deepEqual(cb.responses('same').map((r) => r.data), ['B0', 'B done']);

  // A reply sent to the wrong host (A's reply queue, B's correlation id) is dropped by A.
  assertAccepted(await cb.request({ id: 'second', requestType: TYPES.echo, payload: 'via B' }));
  const r3 = await worker.next();
  await worker.result(r3, 'misrouted', { routingKey: ra.replyTo });
  await ca.expectQuiet(300);
  await cb.expectQuiet(0);
  await worker.result(r3, 'routed');
  assert.deepEqual(await cb.final('second'), { id: 'second', type: 'result', data: 'routed' });
});

e2e('two hosts, one set of real workers: 40 concurrent requests through each get their own replies', async (ctx) => {
  const a = await startHost(ctx, { name: 'hostA' });
  const b = await startHost(ctx, { name: 'hostB' });
  await startWorkers(ctx, a.queues);
  const clients = [
    await connect(ctx, a.url, { name: 'a1' }),
    await connect(ctx, a.url, { name: 'a2' }),
    await connect(ctx, b.url, { name: 'b1' }),
    await connect(ctx, b.url, { name: 'b2' }),
  ];
  const jobs = clients.flatMap((client) =>
    Array.from({ length: 20 }, (_, i) => ({ client, id: `job-${i}`, payload: { from: client.name, i, chunks: i % 3 } })),
  );
  const outcomes = await Promise.all(
    jobs.map(({ client, id, payload }) => request(client, { id, requestType: TYPES.echo, payload }, { timeout: 20_000 })),
  );
  outcomes.forEach((o, k) => {
    assertAccepted(o.ack);
    assert.deepEqual(o.final?.data, jobs[k].payload);
    assert.equal(o.responses.length, jobs[k].payload.chunks + 1);
  });
});

e2e('a host stopping does not disturb another host sharing its queues', async (ctx) => {
  const a = await startHost(ctx, { name: 'hostA' });
  const b = await startHost(ctx, { name: 'hostB' });
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, a.queues[TYPES.echo]);
  const cb = await connect(ctx, b.url, { name: 'clientB' });
  const id = uniqueId();
  assertAccepted(await cb.request({ id, requestType: TYPES.echo, payload: 'B' }));
  const rb = await worker.next();
  await a.stop();
  await worker.result(rb, 'still here');
  assert.deepEqual(await cb.final(id), { id, type: 'result', data: 'still here' });
  assert.equal(cancels.find(rb.correlationId), undefined);
  const next = uniqueId();
  const pending = request(cb, { id: next, requestType: TYPES.echo, payload: 'again' });
  const r = await worker.next();
  await worker.result(r, 'again');
  assert.equal((await pending).final?.data, 'again');
});

e2e('quorum queues from plugins.toml: two hosts declare the same quorum queue and share the workers behind it', async (ctx) => {
  const quorum = { queue_arguments: { 'x-queue-type': 'quorum' } };
  const a = await startHost(ctx, { name: 'hostA', plugins: { echo: quorum } });
  const b = await startHost(ctx, { name: 'hostB', plugins: { echo: quorum } });
  const queue = a.queues[TYPES.echo];
  assert.ok(!a.logs().concat(b.logs()).some((l) => l.includes('could not be declared')), 'both declared it without complaint');
  // It is a quorum queue: declaring it as a classic one is refused, as a quorum one accepted.
  const asClassic = await ctx.tryOnChannel((ch) => ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'classic' } }));
  assert.equal(asClassic.ok, false, 'the queue is not a classic queue');
  assert.match(String(!asClassic.ok && asClassic.error.message), /PRECONDITION_FAILED/);
  const asQuorum = await ctx.tryOnChannel((ch) => ch.assertQueue(queue, { durable: true, arguments: ctx.requestQueueArguments() }));
  assert.ok(asQuorum.ok, 'the queue is a quorum queue');

  await startWorkers(ctx, a.queues, { only: [TYPES.echo] });
  const clients = [await connect(ctx, a.url, { name: 'viaA' }), await connect(ctx, b.url, { name: 'viaB' })];
  const outcomes = await Promise.all(
    clients.flatMap((client) =>
      Array.from({ length: 10 }, (_, i) =>
        request(client, { id: `q-${i}`, requestType: TYPES.echo, payload: { via: client.name, i } }, { timeout: 20_000 }),
      ),
    ),
  );
  outcomes.forEach((o, k) => {
    assertAccepted(o.ack);
    assert.deepEqual(o.final?.data, { via: clients[Math.floor(k / 10)].name, i: k % 10 });
  });
});
