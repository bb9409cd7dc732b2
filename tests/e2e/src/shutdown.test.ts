/**
 * Graceful shutdown on SIGTERM: new requests are refused `UNAVAILABLE` (and `/readyz` turns
 * 503) while requests in flight finish within the grace period; after it, the rest end
 * `UNAVAILABLE` and workers are told to stop them; the process closes its broker connection
 * (its exclusive reply queue goes with it) and exits 0.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertErrorResponse,
  assertRefused,
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
  waitUntil,
  type Host,
} from './harness.js';

/** SIGTERM, as an orchestrator sends it (the harness does not count the exit as a crash). */
function sigterm(host: Host): number {
  host.proc.stopRequested = true;
  host.proc.child.kill('SIGTERM');
  return Date.now();
}

async function replyQueueOf(host: Host): Promise<string> {
  const body = (await host.readyz()).body as { replyQueue?: string };
  assert.match(String(body.replyQueue), /^taskgate\.reply\./);
  return body.replyQueue!;
}

e2e('SIGTERM mid-request: that request still completes, new ones are refused UNAVAILABLE, the process exits 0', async (ctx) => {
  const host = await startHost(ctx, { args: ['--shutdown-grace', '30s'] });
  await startWorkers(ctx, host.queues, { only: [TYPES.echo] });
  const replyQueue = await replyQueueOf(host);
  const client = await connect(ctx, host.url);

  const slow = uniqueId();
  const pending = request(client, { id: slow, requestType: TYPES.echo, payload: { delayMs: 3000, chunks: 2 } }, { timeout: 30_000 });
  await waitUntil(() => client.log.some((e) => e.kind === 'ack' && e.id === slow), 5000, 'the slow request to be accepted');
  const signalled = sigterm(host);
  await host.proc.waitForLine(/shutting down: new requests are refused/, 10_000);

  // Refused at once while draining; liveness stays, readiness goes.
  const refused = await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'late' });
  const error = assertRefused(refused, 'UNAVAILABLE', 'a request during shutdown');
  assert.match(error.message, /shutting down/);
  const ready = await host.readyz();
  assert.equal(ready.status, 503);
  assert.equal((ready.body as { shuttingDown?: boolean }).shuttingDown, true);
  assert.equal((await fetch(`${host.url}/healthz`)).status, 200);

  // The request in flight finishes normally, with its chunks.
  const outcome = await pending;
  assertAccepted(outcome.ack);
  assert.deepEqual(outcome.final?.data, { delayMs: 3000, chunks: 2 });
  assert.equal(outcome.responses.length, 3);

  const exit = await host.proc.exited;
  const took = Date.now() - signalled;
  assert.equal(exit.code, 0, `exit code (signal ${exit.signal})`);
  assert.ok(took < 20_000, `exited in time (${took} ms)`);
  assert.ok(host.logs().some((l) => /broker connection closed/.test(l)), 'the broker connection was closed');
  // The exclusive reply queue went with the connection.
  const probe = await ctx.tryOnChannel((ch) => ch.checkQueue(replyQueue));
  assert.equal(probe.ok, false, `${replyQueue} is gone`);
});

e2e('after the grace period, requests still in flight end UNAVAILABLE, workers are told, and the process exits 0', async (ctx) => {
  const host = await startHost(ctx, { args: ['--shutdown-grace', '1s'] });
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const ids = [uniqueId(), uniqueId()];
  for (const id of ids) assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: 'never answered' }));
  const received = [await worker.next(), await worker.next()];
  // One of them streams a chunk first: it still ends with exactly one final error.
  await worker.chunk(received[0], 'partial', 0);
  await client.waitFor(() => client.responses(ids[0]).length === 1, 5000, 'the chunk');

  const signalled = sigterm(host);
  for (const id of ids) {
    const error = assertErrorResponse(await client.final(id, 15_000), 'UNAVAILABLE', id);
    assert.match(error.message, /shutting down/);
  }
  const ended = Date.now() - signalled;
  assert.ok(ended >= 900, `the grace period was given (${ended} ms)`);
  for (const r of received) await cancels.waitFor(r.correlationId, 10_000);
  const exit = await host.proc.exited;
  assert.equal(exit.code, 0);
  assert.ok(Date.now() - signalled < 15_000, 'exited in time');
  // A late reply from the worker goes nowhere and breaks nothing.
  await worker.result(received[1], 'too late').catch(() => undefined);
  await sleep(200);
  assert.equal(client.responses(ids[1]).length, 1);
});

e2e('SIGTERM with nothing in flight exits 0 promptly', async (ctx) => {
  const host = await startHost(ctx);
  await connect(ctx, host.url);
  const signalled = sigterm(host);
  const exit = await host.proc.exited;
  assert.equal(exit.code, 0);
  assert.ok(Date.now() - signalled < 5000, `took ${Date.now() - signalled} ms`);
});
