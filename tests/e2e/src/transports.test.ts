/**
 * Protocol §1 transports: Socket.IO v5 on the default path and namespace, over WebSocket and
 * over HTTP long-polling (and the default polling → WebSocket upgrade), with the handshake's
 * `auth: { token }` accepted when the host does not require authentication.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  connect,
  connectPolling,
  e2e,
  FakeWorker,
  request,
  startHost,
  startWorkers,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';

e2e('HTTP long-polling: request, chunks and result work; the transport stays polling', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connectPolling(ctx, host.url);
  assert.equal(client.transport, 'polling');

  const id = uniqueId();
  const payload = { text: 'über long-polling ✓', blob: 'p'.repeat(200_000) };
  const pending = request(client, { id, requestType: TYPES.echo, payload }, { timeout: 15_000 });
  const received = await worker.next();
  assert.deepEqual(received.json(), payload, 'a 200 KB payload arrives intact over long-polling');
  for (let seq = 0; seq < 20; seq++) await worker.chunk(received, { seq }, seq);
  await worker.result(received, payload);
  const { ack, responses, final } = await pending;
  assertAccepted(ack);
  assert.equal(responses.length, 21);
  responses.slice(0, 20).forEach((r, seq) => assert.deepEqual(r, { id, type: 'chunk', seq, data: { seq } }));
  assert.deepEqual(final, { id, type: 'result', data: payload });
  assert.equal(client.transport, 'polling');
});

e2e('HTTP long-polling with the real workers: countdown stream and refusals', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connectPolling(ctx, host.url);
  const id = uniqueId();
  const { responses } = await request(client, { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }, { timeout: 15_000 });
  assert.deepEqual(responses, [
    { id, type: 'chunk', seq: 0, data: { remaining: 2 } },
    { id, type: 'chunk', seq: 1, data: { remaining: 1 } },
    { id, type: 'chunk', seq: 2, data: { remaining: 0 } },
    { id, type: 'result', data: { done: true } },
  ]);
  const refused = await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 5 } });
  assert.equal(refused.ok, false);
});

e2e('the default client (polling, then upgrade to WebSocket) works, with an auth token in the handshake', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url, { transport: 'default', auth: { token: 'any-token' } });
  await waitUntil(() => client.transport === 'websocket', 5000, 'the upgrade to WebSocket');
  const id = uniqueId();
  const { final } = await request(client, { id, requestType: TYPES.echo, payload: { chunks: 2, via: 'upgrade' } }, { timeout: 15_000 });
  assert.deepEqual(final, { id, type: 'result', data: { chunks: 2, via: 'upgrade' } });
});
