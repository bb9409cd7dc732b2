/**
 * Protocol §2.3/§2.4 when the client goes away: the host publishes a cancellation for each of
 * its requests in flight, drops the workers' later replies, and keeps serving everyone else.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertAlive,
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

e2e('a client disconnecting mid-request makes the host cancel its requests; others keep being served', async (ctx) => {
  const host = await startHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const leaving = await connect(ctx, host.url, { name: 'leaving' });
  const staying = await connect(ctx, host.url, { name: 'staying' });

  // Three requests of the leaving client in flight, one of them mid-stream; one of the staying client.
  const leavingIds = [uniqueId(), uniqueId(), uniqueId()];
  for (const id of leavingIds) assertAccepted(await leaving.request({ id, requestType: TYPES.echo, payload: 'leaving' }));
  const stayingId = uniqueId();
  assertAccepted(await staying.request({ id: stayingId, requestType: TYPES.echo, payload: 'staying' }));
  const received = await Promise.all([worker.next(), worker.next(), worker.next(), worker.next()]);
  const theirs = received.filter((r) => r.json() === 'leaving');
  const mine = received.find((r) => r.json() === 'staying')!;
  await worker.chunk(theirs[0], 'partial', 0);
  await leaving.waitFor(() => leaving.allResponses().length === 1, 5000, 'a chunk');

  leaving.close();
  for (const r of theirs) {
    const c = await cancels.waitFor(r.correlationId, 5000);
    assert.equal(c.body.length, 0);
  }
  assert.equal(cancels.find(mine.correlationId), undefined, 'the staying client\'s request is not cancelled');

  // Late replies for the gone client are dropped; the staying client is unaffected.
  for (const r of theirs) {
    await worker.chunk(r, 'late', 1);
    await worker.result(r, 'late');
  }
  await worker.chunk(mine, 'mine', 0);
  await worker.result(mine, 'mine done');
  const final = await staying.final(stayingId);
  assert.deepEqual(final, { id: stayingId, type: 'result', data: 'mine done' });
  assert.deepEqual(staying.responses(stayingId).map((r) => r.type), ['chunk', 'result']);

  // New clients are served too.
  const newcomer = await connect(ctx, host.url, { name: 'newcomer' });
  const id = uniqueId();
  const pending = request(newcomer, { id, requestType: TYPES.echo, payload: 'new' });
  const r = await worker.next();
  await worker.result(r, 'welcome');
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'welcome' });
  assertAlive(host);
});

e2e('a client that disconnects right after sending (before the ack) still gets its request cancelled', async (ctx) => {
  const host = await startHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  client.socket.emit('request', { id: uniqueId(), requestType: TYPES.echo, payload: 'hit and run' }, () => undefined);
  client.close();
  const received = await worker.next(5000);
  await cancels.waitFor(received.correlationId, 5000);
  await worker.result(received, 'nobody listens');
  assertAlive(host);
});

e2e('a client disconnecting mid-stream stops the real countdown worker', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues, { only: [TYPES.countdown], prefetch: 1 });
  const leaving = await connect(ctx, host.url, { name: 'leaving' });
  const id = uniqueId();
  assertAccepted(await leaving.request({ id, requestType: TYPES.countdown, payload: { from: 50, intervalMs: 100 } }));
  await leaving.waitFor(() => leaving.responses(id).length >= 2, 10_000, 'two chunks');
  leaving.close();

  const other = await connect(ctx, host.url, { name: 'other' });
  const started = Date.now();
  const next = await request(other, { id: uniqueId(), requestType: TYPES.countdown, payload: { from: 2, intervalMs: 10 } }, { timeout: 10_000 });
  assert.deepEqual(next.final?.data, { done: true });
  assert.ok(Date.now() - started < 2500, `the worker stopped the abandoned countdown early (next one took ${Date.now() - started} ms)`);
});
