/**
 * Protocol §1 events and §2.3 replies, the happy paths: an accepted request is acked with
 * exactly `{ ok: true }`, then gets zero or more `chunk`s with `seq` 0, 1, 2 … in order and
 * exactly one final `result`; nothing follows the final response. Checked with a fake worker
 * (exact control of the replies) and with the real Rust example workers.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  connect,
  e2e,
  FakeWorker,
  request,
  startHost,
  startWorkers,
  TYPES,
  uniqueId,
} from './harness.js';

e2e('accepted request: ack is exactly { ok: true }, then exactly one result { id, type, data }, then nothing', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  const id = uniqueId();
  const ack = await client.request({ id, requestType: TYPES.echo, payload: { hello: 'world' } });
  assert.deepEqual(ack, { ok: true });
  const received = await worker.next();
  await worker.result(received, { answer: 42 });
  worker.ack(received);
  const final = await client.final(id);
  assert.deepEqual(final, { id, type: 'result', data: { answer: 42 } });
  await client.expectQuiet(500);
  assert.equal(client.responses(id).length, 1);
});

e2e('a result whose data is null or falsy still carries the data key', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  for (const data of [null, 0, false, '', [], {}]) {
    const id = uniqueId();
    const pending = request(client, { id, requestType: TYPES.echo, payload: {} });
    const received = await worker.next();
    await worker.chunk(received, data, 0);
    await worker.result(received, data);
    const { ack, responses } = await pending;
    assertAccepted(ack);
    assert.deepEqual(responses, [
      { id, type: 'chunk', seq: 0, data },
      { id, type: 'result', data },
    ]);
  }
});

e2e('the ack comes before any response even when the worker answers at once', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  // The worker replies as soon as each request lands, racing the publisher confirm.
  let stop = false;
  const replying = (async () => {
    while (!stop) {
      const received = await worker.next(200).catch(() => undefined);
      if (!received) continue;
      await worker.chunk(received, 'first', 0);
      await worker.result(received, 'done');
      worker.ack(received);
    }
  })();
  const ids = Array.from({ length: 30 }, () => uniqueId());
  const outcomes = await Promise.all(ids.map((id) => request(client, { id, requestType: TYPES.echo, payload: {} })));
  stop = true;
  await replying;
  for (const [i, outcome] of outcomes.entries()) {
    assertAccepted(outcome.ack);
    assert.deepEqual(outcome.responses, [
      { id: ids[i], type: 'chunk', seq: 0, data: 'first' },
      { id: ids[i], type: 'result', data: 'done' },
    ]);
    const order = client.log.filter((e) => (e.kind === 'ack' ? e.id : e.event.id) === ids[i]).map((e) => e.kind);
    assert.deepEqual(order, ['ack', 'response', 'response'], `order of events for ${ids[i]}`);
  }
});

e2e('replies after the final one are not relayed (§1: nothing after a final response)', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  for (const first of ['result', 'error'] as const) {
    const id = uniqueId();
    assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }));
    const received = await worker.next();
    if (first === 'result') await worker.result(received, 'the one');
    else await worker.error(received, { code: 'E_FIRST', message: 'the one' });
    await worker.chunk(received, 'late chunk', 0);
    await worker.chunk(received, 'late chunk', 1);
    await worker.result(received, 'second result');
    await worker.error(received, { message: 'late error' });
    worker.ack(received);
    await client.final(id);
    await client.expectQuiet(500, id);
    assert.equal(client.responses(id).length, 1, `only the first final reply (${first}) is relayed`);
  }
});

e2e('streaming with a fake worker: chunks in order with seq 0,1,2… then the result', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.countdown, payload: { from: 5, intervalMs: 10 } });
  const received = await worker.next();
  for (let i = 0; i < 5; i++) await worker.chunk(received, { remaining: 4 - i }, i);
  await worker.result(received, { done: true });
  worker.ack(received);
  const { ack, responses } = await pending;
  assertAccepted(ack);
  assert.deepEqual(responses, [
    ...[4, 3, 2, 1, 0].map((remaining, seq) => ({ id, type: 'chunk', seq, data: { remaining } })),
    { id, type: 'result', data: { done: true } },
  ]);
  await client.expectQuiet(300);
});

e2e('streaming: 500 chunks published back to back arrive complete and in order', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: {} }, { timeout: 20_000 });
  const received = await worker.next();
  for (let i = 0; i < 500; i++) {
    worker.channel.publish('', received.replyTo, Buffer.from(JSON.stringify({ i })), {
      correlationId: received.correlationId,
      type: 'chunk',
      contentType: 'application/json',
      headers: { 'x-seq': i },
    });
  }
  await worker.channel.waitForConfirms();
  await worker.result(received, { total: 500 });
  const { responses } = await pending;
  assert.equal(responses.length, 501);
  responses.slice(0, 500).forEach((r, i) => assert.deepEqual(r, { id, type: 'chunk', seq: i, data: { i } }));
  assert.deepEqual(responses[500], { id, type: 'result', data: { total: 500 } });
});

e2e('streams of concurrent requests on one connection interleave without mixing', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const [a, b] = [uniqueId('a'), uniqueId('b')];
  const pa = request(client, { id: a, requestType: TYPES.echo, payload: { who: 'a' } });
  const pb = request(client, { id: b, requestType: TYPES.echo, payload: { who: 'b' } });
  const first = await worker.next();
  const second = await worker.next();
  const [ra, rb] = (first.json() as { who: string }).who === 'a' ? [first, second] : [second, first];
  await worker.chunk(ra, 'a0', 0);
  await worker.chunk(rb, 'b0', 0);
  await worker.chunk(ra, 'a1', 1);
  await worker.result(rb, 'b-done');
  await worker.chunk(ra, 'a2', 2);
  await worker.result(ra, 'a-done');
  const [oa, ob] = await Promise.all([pa, pb]);
  assert.deepEqual(oa.responses, [
    { id: a, type: 'chunk', seq: 0, data: 'a0' },
    { id: a, type: 'chunk', seq: 1, data: 'a1' },
    { id: a, type: 'chunk', seq: 2, data: 'a2' },
    { id: a, type: 'result', data: 'a-done' },
  ]);
  assert.deepEqual(ob.responses, [
    { id: b, type: 'chunk', seq: 0, data: 'b0' },
    { id: b, type: 'result', data: 'b-done' },
  ]);
});

e2e('a 1 MiB result is relayed intact', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const big = { blob: 'é✓'.repeat(1 << 18), n: [1, 2, 3] };
  const pending = request(client, { id, requestType: TYPES.echo, payload: {} }, { timeout: 20_000 });
  const received = await worker.next();
  await worker.result(received, big);
  const { final } = await pending;
  assert.deepEqual(final, { id, type: 'result', data: big });
});

e2e('real workers: echo returns the payload for every kind of JSON value', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url);
  const payloads: unknown[] = [
    { hello: 'world', nested: { list: [1, 2.5, -3, true, null], empty: {} } },
    'a string with "quotes", \\ backslashes and ünïcödé 🎉',
    12345,
    -0.5,
    true,
    null,
    [1, 'two', { three: 3 }],
    {},
  ];
  const outcomes = await Promise.all(
    payloads.map((payload) => request(client, { id: uniqueId(), requestType: TYPES.echo, payload }, { timeout: 15_000 })),
  );
  outcomes.forEach((o, i) => {
    assertAccepted(o.ack);
    assert.equal(o.responses.length, 1, `no chunks unless asked: ${JSON.stringify(o.responses)}`);
    assert.deepEqual(o.final, { id: o.final!.id, type: 'result', data: payloads[i] });
  });
  await client.expectQuiet(300);
});

e2e('real workers: text.wordcount counts words, lines and characters', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const { ack, responses, final } = await request(
    client,
    { id, requestType: TYPES.wordcount, payload: { text: 'one two three\nfour five' } },
    { timeout: 15_000 },
  );
  assertAccepted(ack);
  assert.equal(responses.length, 1);
  assert.deepEqual(final, { id, type: 'result', data: { words: 5, lines: 2, chars: 23 } });
});

e2e('real workers: demo.countdown streams remaining n-1…0 with seq 0… then { done: true }', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const { ack, responses } = await request(
    client,
    { id, requestType: TYPES.countdown, payload: { from: 5, intervalMs: 20 } },
    { timeout: 15_000 },
  );
  assertAccepted(ack);
  assert.deepEqual(responses, [
    ...[4, 3, 2, 1, 0].map((remaining, seq) => ({ id, type: 'chunk', seq, data: { remaining } })),
    { id, type: 'result', data: { done: true } },
  ]);
  await client.expectQuiet(300);
});

e2e('real workers: echo with "chunks": 3 streams { index } chunks, then the payload', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const payload = { chunks: 3, note: 'streamed' };
  const { responses } = await request(client, { id, requestType: TYPES.echo, payload }, { timeout: 15_000 });
  assert.deepEqual(responses, [
    { id, type: 'chunk', seq: 0, data: { index: 0 } },
    { id, type: 'chunk', seq: 1, data: { index: 1 } },
    { id, type: 'chunk', seq: 2, data: { index: 2 } },
    { id, type: 'result', data: payload },
  ]);
});

e2e('real workers: 100 concurrent requests over 5 connections each get their own reply', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, host.queues);
  const clients = await Promise.all(Array.from({ length: 5 }, () => connect(ctx, host.url)));
  const jobs = Array.from({ length: 100 }, (_, i) => ({ client: clients[i % 5], id: `same-${Math.floor(i / 5)}`, i }));
  const outcomes = await Promise.all(
    jobs.map(({ client, id, i }) =>
      request(client, { id, requestType: i % 2 ? TYPES.echo : TYPES.wordcount, payload: i % 2 ? { i } : { text: `${'w '.repeat(i)}end` } }, { timeout: 20_000 }),
    ),
  );
  outcomes.forEach((o, i) => {
    assertAccepted(o.ack);
    assert.deepEqual(o.final!.data, i % 2 ? { i } : { words: i + 1, lines: 1, chars: 2 * i + 3 });
  });
});
