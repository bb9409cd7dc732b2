/**
 * Protocol §2.3 from the worker's side: `error` replies (default code WORKER_ERROR, or the
 * worker's own code, with message and details relayed), malformed replies that must not
 * break anything (non-JSON bodies, unknown `type`, missing or forged correlation ids), and
 * at-least-once redelivery of a request whose worker died before acking.
 */

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  assertAccepted,
  assertAlive,
  assertErrorResponse,
  connect,
  e2e,
  FakeWorker,
  request,
  startHost,
  startWorkers,
  TYPES,
  uniqueId,
} from './harness.js';

e2e('WORKER_ERROR: an error reply without a code becomes WORKER_ERROR with the worker\'s message and details', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: {} });
  const received = await worker.next();
  await worker.chunk(received, 'progress', 0);
  await worker.error(received, { message: 'disk on fire', details: { disk: 'sda', temperature: 451 } });
  worker.ack(received);
  const { responses, final } = await pending;
  assert.deepEqual(responses.map((r) => r.type), ['chunk', 'error']);
  assert.deepEqual(final, {
    id,
    type: 'error',
    error: { code: 'WORKER_ERROR', message: 'disk on fire', details: { disk: 'sda', temperature: 451 } },
  });
  await client.expectQuiet(300, id);
});

e2e('WORKER_ERROR: the worker\'s own code replaces WORKER_ERROR; no details means no details key', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  for (const code of ['NOT_FOUND', 'QUOTA_EXCEEDED', 'CANCELLED']) {
    const id = uniqueId();
    const pending = request(client, { id, requestType: TYPES.echo, payload: {} });
    const received = await worker.next();
    await worker.error(received, { code, message: `it is ${code}` });
    const { final } = await pending;
    assert.deepEqual(final, { id, type: 'error', error: { code, message: `it is ${code}` } });
  }
});

e2e('WORKER_ERROR: a null or empty code defaults to WORKER_ERROR; the message is relayed as given', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  for (const [body, expected] of [
    [{ code: null, message: 'null code' }, { code: 'WORKER_ERROR', message: 'null code' }],
    [{ code: '', message: 'empty code' }, { code: 'WORKER_ERROR', message: 'empty code' }],
    [{ message: 'with details', details: [1, 'two'] }, { code: 'WORKER_ERROR', message: 'with details', details: [1, 'two'] }],
  ] as const) {
    const id = uniqueId();
    const pending = request(client, { id, requestType: TYPES.echo, payload: {} });
    const received = await worker.next();
    await worker.error(received, body);
    assert.deepEqual((await pending).final, { id, type: 'error', error: expected });
  }
});

e2e('WORKER_ERROR with the real echo worker ("fail" with and without a code)', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url);
  const a = await request(client, { id: uniqueId(), requestType: TYPES.echo, payload: { fail: { message: 'asked to fail' } } }, { timeout: 15_000 });
  const errA = assertErrorResponse(a.final, 'WORKER_ERROR');
  assert.equal(errA.message, 'asked to fail');
  const b = await request(client, { id: uniqueId(), requestType: TYPES.echo, payload: { fail: { code: 'E_TEAPOT', message: 'short and stout' } } }, { timeout: 15_000 });
  const errB = assertErrorResponse(b.final, 'E_TEAPOT');
  assert.equal(errB.message, 'short and stout');
});

e2e('malformed replies (non-JSON, unknown type, no type, missing/forged/unknown correlation ids) break nothing', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url, { name: 'victim' });
  const bystander = await connect(ctx, host.url, { name: 'bystander' });

  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }));
  const received = await worker.next();
  const junk = Buffer.from([0xff, 0xfe, 0x00, 0x7b, 0x22]);
  // Replies for this request that must be ignored (none of them is a valid final reply).
  await worker.reply(received, { x: 1 }, { type: 'bogus' });
  await worker.reply(received, { x: 1 }, { type: null });
  await worker.reply(received, { x: 1 }, { type: 'RESULT' });
  await worker.reply(received, junk, { type: 'chunk', headers: { 'x-seq': 0 } });
  await worker.reply(received, Buffer.from('not json at all'), { type: 'chunk', headers: { 'x-seq': 0 } });
  // Replies for nobody.
  await worker.reply(received, 'forged', { type: 'result', correlationId: randomUUID() });
  await worker.reply(received, 'forged', { type: 'error', correlationId: 'not-a-uuid' });
  await worker.reply(received, 'forged', { type: 'result', correlationId: null });
  await worker.reply(received, 'forged', { type: 'result', correlationId: '' });
  await worker.reply(received, 'forged', { type: 'chunk', correlationId: 'x'.repeat(255), headers: { 'x-seq': 0 } });
  await worker.reply(received, junk, { type: 'result', correlationId: randomUUID(), contentType: null });
  await worker.reply(received, Buffer.alloc(0), { type: 'result', correlationId: randomUUID() });
  await worker.reply(received, { code: 5, message: ['x'] }, { type: 'error', correlationId: randomUUID() });
  // Odd headers on a valid chunk: still a chunk.
  await client.expectQuiet(300);
  assert.equal(client.responses(id).length, 0, 'nothing relayed for ignored replies');

  // The request still completes normally.
  await worker.chunk(received, 'real chunk', 0);
  await worker.result(received, 'real result');
  const final = await client.final(id);
  assert.deepEqual(client.responses(id), [
    { id, type: 'chunk', seq: 0, data: 'real chunk' },
    { id, type: 'result', data: 'real result' },
  ]);
  assert.deepEqual(final, { id, type: 'result', data: 'real result' });
  await client.expectQuiet(300);
  await bystander.expectQuiet(0);

  // The host keeps serving the same and other connections.
  for (const c of [client, bystander]) {
    const next = uniqueId();
    const pending = request(c, { id: next, requestType: TYPES.echo, payload: c.name });
    const r = await worker.next();
    await worker.result(r, r.json());
    assert.deepEqual((await pending).final, { id: next, type: 'result', data: c.name });
  }
  assertAlive(host);
});

e2e('a final reply that is not JSON ends the request with an error rather than hanging it', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const cases: Array<[string, 'result' | 'error', Buffer]> = [
    ['result with a non-JSON body', 'result', Buffer.from('{"truncated": ')],
    ['result with an empty body', 'result', Buffer.alloc(0)],
    ['error with a non-JSON body', 'error', Buffer.from('<html>500</html>')],
    ['error body without a message', 'error', Buffer.from('{"code":"X"}')],
    ['error body that is not an object', 'error', Buffer.from('"just a string"')],
  ];
  for (const [what, type, body] of cases) {
    const id = uniqueId();
    const pending = request(client, { id, requestType: TYPES.echo, payload: {} });
    const received = await worker.next();
    await worker.reply(received, body, { type });
    const { final } = await pending;
    assert.equal(final?.type, 'error', `${what}: a final error, got ${JSON.stringify(final)}`);
    assert.equal(typeof final?.error?.code, 'string', what);
    assert.ok(final?.error?.message, what);
    await worker.result(received, 'too late');
    await client.expectQuiet(200, id);
  }
  assertAlive(host);
});

e2e('redelivery (§2.3 at-least-once): a worker dies before acking; another worker gets the request (redelivered) and its replies reach the client', async (ctx) => {
  const host = await startHost(ctx);
  const first = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: { job: 7 } }));
  const original = await first.next();
  await first.chunk(original, { part: 0 }, 0);
  await first.chunk(original, { part: 1 }, 1);
  await client.waitFor(() => client.responses(id).length === 2, 5000, 'two chunks from the first worker');
  await first.close(); // dies without acking: RabbitMQ requeues the request

  const second = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const again = await second.next();
  assert.equal(again.message.fields.redelivered, true, 'the redelivered flag is set');
  assert.equal(again.correlationId, original.correlationId, 'same correlation id');
  assert.equal(again.replyTo, original.replyTo);
  assert.deepEqual(again.json(), { job: 7 });
  // The second worker starts over.
  for (let seq = 0; seq < 3; seq++) await second.chunk(again, { part: seq }, seq);
  await second.result(again, { job: 7, done: true });
  second.ack(again);
  const final = await client.final(id);
  assert.deepEqual(final, { id, type: 'result', data: { job: 7, done: true } });
  // The client-side checks already assert seq 0, 1, 2 … without gaps or repeats.
  const chunks = client.responses(id).filter((r) => r.type === 'chunk');
  assert.ok(chunks.length >= 3, `chunks: ${JSON.stringify(chunks)}`);
  assert.deepEqual(chunks.at(-1)?.data, { part: 2 });
});
