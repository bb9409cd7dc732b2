/**
 * Protocol §1, the ack of `request` and the error table: every way the host refuses a
 * request before publishing it (BAD_REQUEST, UNKNOWN_REQUEST_TYPE, INVALID_PAYLOAD,
 * PAYLOAD_TOO_LARGE, DUPLICATE_ID), the exact shape of refusing acks and error objects,
 * and that a refused request never gets a `response` nor reaches a worker.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertAlive,
  assertRefused,
  connect,
  e2e,
  FakeWorker,
  request,
  startHost,
  TYPES,
  uniqueId,
} from './harness.js';

e2e('BAD_REQUEST: malformed envelopes are refused in the ack, get no response and reach no worker', async (ctx) => {
  const host = await startHost(ctx, { plugins: { wordcount: false, countdown: false } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  const cases: Array<[string, unknown[]]> = [
    ['a string instead of an object', ['hello']],
    ['a number', [42]],
    ['null', [null]],
    ['a boolean', [true]],
    ['an array', [[{ id: 'x', requestType: TYPES.echo, payload: {} }]]],
    ['no argument at all', []],
    ['missing id', [{ requestType: TYPES.echo, payload: {} }]],
    ['numeric id', [{ id: 5, requestType: TYPES.echo, payload: {} }]],
    ['null id', [{ id: null, requestType: TYPES.echo, payload: {} }]],
    ['object id', [{ id: { a: 1 }, requestType: TYPES.echo, payload: {} }]],
    ['array id', [{ id: ['a'], requestType: TYPES.echo, payload: {} }]],
    ['boolean id', [{ id: true, requestType: TYPES.echo, payload: {} }]],
    ['empty id', [{ id: '', requestType: TYPES.echo, payload: {} }]],
    ['id of 129 characters', [{ id: 'i'.repeat(129), requestType: TYPES.echo, payload: {} }]],
    ['id of 10,000 characters', [{ id: 'i'.repeat(10_000), requestType: TYPES.echo, payload: {} }]],
    ['missing requestType', [{ id: uniqueId(), payload: {} }]],
    ['numeric requestType', [{ id: uniqueId(), requestType: 7, payload: {} }]],
    ['null requestType', [{ id: uniqueId(), requestType: null, payload: {} }]],
    ['object requestType', [{ id: uniqueId(), requestType: { name: TYPES.echo }, payload: {} }]],
  ];
  for (const [what, args] of cases) {
    const ack = await client.emitRequest(args);
    assertRefused(ack, 'BAD_REQUEST', what);
  }
  await client.expectQuiet(300);
  await worker.expectNothing(0);
  assertAlive(host);
});

e2e('request ids of 1 and of exactly 128 characters are accepted', async (ctx) => {
  const host = await startHost(ctx, { plugins: { wordcount: false, countdown: false } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  for (const id of ['a', 'x'.repeat(128), 'ключ-🔑']) {
    const pending = request(client, { id, requestType: TYPES.echo, payload: { id } });
    const received = await worker.next();
    await worker.result(received, { ok: id.length });
    worker.ack(received);
    const { ack, final } = await pending;
    assertAccepted(ack, `id of ${id.length} characters`);
    assert.deepEqual(final, { id, type: 'result', data: { ok: id.length } });
  }
});

e2e('UNKNOWN_REQUEST_TYPE: types no enabled plugin serves', async (ctx) => {
  // countdown is present in the plugins directory but disabled in plugins.toml.
  const host = await startHost(ctx, { plugins: { countdown: { enabled: false } } });
  const client = await connect(ctx, host.url);
  for (const requestType of ['no.such.type', TYPES.countdown, 'ECHO', ' echo', TYPES.panic]) {
    const ack = await client.request({ id: uniqueId(), requestType, payload: {} });
    const error = assertRefused(ack, 'UNKNOWN_REQUEST_TYPE', `requestType ${JSON.stringify(requestType)}`);
    assert.ok(error.message.length > 0);
  }
  await client.expectQuiet(300);
  // The enabled ones are served.
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: {} }));
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'a b' } }));
});

e2e('INVALID_PAYLOAD: the plugin refuses the payload; details say where (JSON pointers)', async (ctx) => {
  const host = await startHost(ctx);
  const client = await connect(ctx, host.url);
  const cases: Array<[string, string, unknown, string | undefined]> = [
    ['wordcount text is a number', TYPES.wordcount, { text: 5 }, '/text'],
    ['wordcount without text', TYPES.wordcount, {}, undefined],
    ['wordcount payload is a string', TYPES.wordcount, 'just text', undefined],
    ['wordcount payload is null', TYPES.wordcount, null, undefined],
    ['countdown from 0', TYPES.countdown, { from: 0, intervalMs: 10 }, '/from'],
    ['countdown from is a string', TYPES.countdown, { from: 'ten', intervalMs: 10 }, '/from'],
    ['countdown from is negative', TYPES.countdown, { from: -3, intervalMs: 10 }, '/from'],
  ];
  for (const [what, requestType, payload, pointer] of cases) {
    const ack = await client.request({ id: uniqueId(), requestType, payload });
    const error = assertRefused(ack, 'INVALID_PAYLOAD', what);
    assert.ok(error.details !== undefined, `${what}: INVALID_PAYLOAD carries details saying where and why`);
    const problems = (error.details as { problems?: unknown }).problems;
    assert.ok(Array.isArray(problems) && problems.length > 0, `${what}: details.problems is a non-empty list: ${JSON.stringify(error)}`);
    for (const p of problems as Array<Record<string, unknown>>) {
      assert.equal(typeof p.pointer, 'string', `${what}: each problem has a JSON pointer: ${JSON.stringify(p)}`);
      assert.ok(p.pointer === '' || (p.pointer as string).startsWith('/'), `${what}: ${JSON.stringify(p.pointer)} is a JSON pointer`);
      assert.equal(typeof p.message, 'string', `${what}: each problem has a message`);
    }
    if (pointer) {
      assert.ok(
        (problems as Array<{ pointer: string }>).some((p) => p.pointer === pointer),
        `${what}: a problem points at ${pointer}: ${JSON.stringify(problems)}`,
      );
    }
  }
  await client.expectQuiet(300);
  // Valid payloads of the same types are accepted.
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'a b' } }));
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.countdown, payload: { from: 2, intervalMs: 10 } }));
});

e2e('PAYLOAD_TOO_LARGE: over the configured max_payload_bytes; at the limit is fine', async (ctx) => {
  const limit = 100;
  const host = await startHost(ctx, { plugins: { echo: { max_payload_bytes: limit } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  // A JSON string of n characters is n + 2 bytes on the wire.
  const atLimit = 'x'.repeat(limit - 2);
  assertAccepted(await client.request({ id: 'at-limit', requestType: TYPES.echo, payload: atLimit }), 'payload of exactly the limit');
  const received = await worker.next();
  assert.equal(received.body.length, limit);

  for (const [what, payload] of [
    ['one byte over', 'x'.repeat(limit - 1)],
    ['far over', { s: 'y'.repeat(10_000) }],
    ['1 MiB', 'z'.repeat(1 << 20)],
  ] as Array<[string, unknown]>) {
    const error = assertRefused(
      await client.request({ id: uniqueId(), requestType: TYPES.echo, payload }, 10_000),
      'PAYLOAD_TOO_LARGE',
      what,
    );
    assert.ok(error.message.length > 0);
  }
  await worker.expectNothing(300);
  await client.expectQuiet(0);
});

e2e('PAYLOAD_TOO_LARGE with the plugin\'s own limit (no override), over WebSocket and long-polling', async (ctx) => {
  const host = await startHost(ctx);
  // The echo plugin declares 1 MiB; the transports take 64 KiB more (the largest type's limit
  // plus the envelope), so a payload just over it arrives and is refused.
  for (const transport of ['websocket', 'polling'] as const) {
    const client = await connect(ctx, host.url, { transport });
    const ack = await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'z'.repeat((1 << 20) + 1000) }, 15_000);
    assertRefused(ack, 'PAYLOAD_TOO_LARGE', `1 MiB + 1000 bytes echo payload over ${transport}`);
    await client.expectQuiet(200);
  }
});

e2e('DUPLICATE_ID: an id in flight on this connection is refused; other connections may use it; it is free again once final', async (ctx) => {
  const host = await startHost(ctx, { plugins: { wordcount: false, countdown: false } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const alice = await connect(ctx, host.url, { name: 'alice' });
  const bob = await connect(ctx, host.url, { name: 'bob' });

  assertAccepted(await alice.request({ id: 'same', requestType: TYPES.echo, payload: { who: 'alice-1' } }));
  const first = await worker.next();
  assertRefused(
    await alice.request({ id: 'same', requestType: TYPES.echo, payload: { who: 'alice-2' } }),
    'DUPLICATE_ID',
    'same id in flight on the same connection',
  );
  // Even for another request type or an invalid one, the id is taken.
  assertRefused(
    await alice.request({ id: 'same', requestType: TYPES.echo, payload: 'other' }),
    'DUPLICATE_ID',
    'same id again',
  );
  await worker.expectNothing(200);

  // Another connection may use the same id at the same time.
  assertAccepted(await bob.request({ id: 'same', requestType: TYPES.echo, payload: { who: 'bob' } }), 'same id on another connection');
  const second = await worker.next();
  assert.notEqual(second.correlationId, first.correlationId);

  await worker.result(second, second.json());
  await worker.result(first, first.json());
  assert.deepEqual(await alice.final('same'), { id: 'same', type: 'result', data: { who: 'alice-1' } });
  assert.deepEqual(await bob.final('same'), { id: 'same', type: 'result', data: { who: 'bob' } });

  // Finished: the id may be used again on the same connection.
  const again = request(alice, { id: 'same', requestType: TYPES.echo, payload: { who: 'alice-3' } });
  const third = await worker.next();
  await worker.result(third, third.json());
  const { ack, final } = await again;
  assertAccepted(ack, 'reusing a finished id');
  assert.deepEqual(final, { id: 'same', type: 'result', data: { who: 'alice-3' } });
  await alice.expectQuiet(300);
  assert.equal(alice.responses('same').length, 2, 'exactly one response per accepted request');
  assert.equal(bob.responses('same').length, 1);
});

e2e('DUPLICATE_ID: the same id sent twice back to back (before either ack): exactly one is accepted', async (ctx) => {
  const host = await startHost(ctx, { plugins: { wordcount: false, countdown: false } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  for (let round = 0; round < 10; round++) {
    const id = `twice-${round}`;
    const acks = await Promise.all([
      client.request({ id, requestType: TYPES.echo, payload: 1 }),
      client.request({ id, requestType: TYPES.echo, payload: 2 }),
    ]);
    assert.equal(acks.filter((a) => a.ok).length, 1, `round ${round}: one accepted: ${JSON.stringify(acks)}`);
    assertRefused(acks.find((a) => !a.ok)!, 'DUPLICATE_ID', `round ${round}`);
    const received = await worker.next();
    await worker.result(received, 'done');
    await client.final(id);
  }
  await worker.expectNothing(200);
});

e2e('a refused request does not reserve its id', async (ctx) => {
  const host = await startHost(ctx, { plugins: { countdown: false } });
  const client = await connect(ctx, host.url);
  for (const [code, envelope] of [
    ['INVALID_PAYLOAD', { id: 'taken?', requestType: TYPES.wordcount, payload: { text: 5 } }],
    ['UNKNOWN_REQUEST_TYPE', { id: 'taken?', requestType: 'no.such.type', payload: {} }],
    ['BAD_REQUEST', { id: 'taken?', payload: {} }],
  ] as const) {
    assertRefused(await client.request(envelope), code);
  }
  assertAccepted(await client.request({ id: 'taken?', requestType: TYPES.wordcount, payload: { text: 'now valid' } }));
});
