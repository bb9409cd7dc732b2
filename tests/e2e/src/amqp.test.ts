/**
 * Protocol §2.1 and §2.2 from the worker's side: the request queues the host declares, and
 * every property, header and the body of the request message, as a fake worker consuming
 * the queue with amqplib receives them.
 */

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  assertAccepted,
  connect,
  e2e,
  FakeWorker,
  type Received,
  request,
  startHost,
  TYPES,
  UUID_RE,
  uniqueId,
} from './harness.js';

const REPLY_QUEUE_RE = /^taskgate\.reply\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function utf8(body: Buffer): string {
  return new TextDecoder('utf-8', { fatal: true }).decode(body);
}

/** The properties every request message has, whatever its type (§2.2). */
function assertCommonProperties(r: Received, opts: { type: string; queue: string; clientId: string; sentAt: number; ackedAt: number }) {
  const { properties: p, message } = r;
  assert.equal(message.fields.exchange, '', 'published to the default exchange');
  assert.equal(message.fields.routingKey, opts.queue, 'routing key = the type\'s queue');
  assert.equal(message.fields.redelivered, false);
  assert.equal(p.contentType, 'application/json', 'content_type');
  assert.equal(p.deliveryMode, 2, 'delivery_mode 2 (persistent)');
  assert.match(String(p.correlationId), UUID_RE, 'correlation_id is a UUID');
  assert.notEqual(p.correlationId, opts.clientId, 'correlation_id is not the client\'s id');
  assert.match(String(p.replyTo), REPLY_QUEUE_RE, 'reply_to is the host\'s reply queue taskgate.reply.<uuid>');
  assert.equal(p.type, opts.type, 'type = the request type');
  assert.equal(typeof p.timestamp, 'number', `timestamp is set: ${JSON.stringify(p.timestamp)}`);
  const nowSec = opts.sentAt / 1000;
  assert.ok(Math.abs(p.timestamp - nowSec) <= 5, `timestamp ${p.timestamp} is the publish time in seconds (now ≈ ${nowSec})`);
  assert.equal(typeof p.expiration, 'string', 'expiration is set');
  assert.match(p.expiration, /^[1-9][0-9]*$/, 'expiration is milliseconds as a decimal string');
  const deadline = r.headers['x-deadline-ms'];
  assert.equal(typeof deadline, 'number', `header x-deadline-ms is an integer: ${JSON.stringify(r.headers)}`);
  const timeout = Number(p.expiration);
  // The deadline is fixed between the emit and the ack.
  assert.ok(
    (deadline as number) >= opts.sentAt + timeout - 1000 && (deadline as number) <= opts.ackedAt + timeout + 1000,
    `x-deadline-ms ${deadline} ≈ now + ${timeout} ms (sent at ${opts.sentAt})`,
  );
  assert.equal(typeof r.headers['x-stream'], 'boolean', `header x-stream is a boolean: ${JSON.stringify(r.headers)}`);
  assert.doesNotThrow(() => utf8(r.body), 'the body is UTF-8');
}

e2e('request message properties (§2.2): content type, persistence, ids, reply_to, type, timestamp, expiration, headers, body', async (ctx) => {
  const host = await startHost(ctx, { plugins: { echo: { timeout_ms: 12_345 } } });
  const echo = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const wordcount = await FakeWorker.start(ctx, host.queues[TYPES.wordcount]);
  const countdown = await FakeWorker.start(ctx, host.queues[TYPES.countdown]);
  const client = await connect(ctx, host.url);

  const send = async (worker: FakeWorker, requestType: string, payload: unknown, clientId = uniqueId()) => {
    const sentAt = Date.now();
    assertAccepted(await client.request({ id: clientId, requestType, payload }));
    const ackedAt = Date.now();
    const received = await worker.next();
    assertCommonProperties(received, { type: requestType, queue: worker.queue, clientId, sentAt, ackedAt });
    return received;
  };

  // echo: any JSON, forwarded as is; the configured timeout is the expiration.
  const payload = { a: 1, text: 'ünïcödé ✓ 🎉', list: [null, true, 2.5], nested: { deep: { x: 'y' } } };
  const e1 = await send(echo, TYPES.echo, payload);
  assert.equal(e1.properties.expiration, '12345', 'expiration = the type\'s timeout_ms from plugins.toml');
  assert.deepEqual(JSON.parse(utf8(e1.body)), payload, 'the body is the payload');

  // A client id that is itself a UUID is still not the correlation id.
  const uuidId = randomUUID();
  const e2 = await send(echo, TYPES.echo, 'second', uuidId);
  assert.notEqual(e2.correlationId, uuidId);
  assert.notEqual(e2.correlationId, e1.correlationId, 'correlation ids are unique per request');
  assert.equal(e2.replyTo, e1.replyTo, 'one reply queue per host');
  assert.deepEqual(JSON.parse(utf8(e2.body)), 'second');

  // wordcount: not streaming; the body is the (possibly normalised) validated payload.
  const w = await send(wordcount, TYPES.wordcount, { text: 'count these words' });
  assert.equal(w.headers['x-stream'], false, 'x-stream is false for a type that does not stream');
  const wBody = JSON.parse(utf8(w.body)) as { text?: unknown };
  assert.equal(wBody.text, 'count these words', 'the normalised body keeps the text');

  // countdown: streams.
  const c = await send(countdown, TYPES.countdown, { from: 3, intervalMs: 10 });
  assert.equal(c.headers['x-stream'], true, 'x-stream is true for a streaming type');
  const cBody = JSON.parse(utf8(c.body)) as { from?: unknown };
  assert.equal(cBody.from, 3);

  // The same client id on two connections: two different correlation ids.
  const other = await connect(ctx, host.url);
  assertAccepted(await client.request({ id: 'shared', requestType: TYPES.echo, payload: 1 }));
  assertAccepted(await other.request({ id: 'shared', requestType: TYPES.echo, payload: 2 }));
  const s1 = await echo.next();
  const s2 = await echo.next();
  const ids = new Set([e1, e2, w, c, s1, s2].map((r) => r.correlationId));
  assert.equal(ids.size, 6, 'every request has its own correlation id');
});

e2e('the expiration and x-deadline-ms follow each type\'s own timeout', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { echo: { timeout_ms: 1500 }, wordcount: { timeout_ms: 60_000 } },
  });
  const echo = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const wordcount = await FakeWorker.start(ctx, host.queues[TYPES.wordcount]);
  const client = await connect(ctx, host.url);
  const t0 = Date.now();
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: {} }));
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'x' } }));
  const e = await echo.next();
  const w = await wordcount.next();
  assert.equal(e.properties.expiration, '1500');
  assert.equal(w.properties.expiration, '60000');
  assert.ok(Math.abs((e.headers['x-deadline-ms'] as number) - (t0 + 1500)) < 1000, 'echo deadline ≈ now + 1.5 s');
  assert.ok(Math.abs((w.headers['x-deadline-ms'] as number) - (t0 + 60_000)) < 1000, 'wordcount deadline ≈ now + 60 s');
});

e2e('§2.1: the host declares each request queue durable, with the plugin\'s queue arguments from plugins.toml', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { echo: { queue_arguments: { 'x-queue-type': 'classic' } } },
  });
  const echoQ = host.queues[TYPES.echo];
  const wcQ = host.queues[TYPES.wordcount];
  for (const q of [echoQ, wcQ, host.queues[TYPES.countdown]]) {
    const check = await ctx.tryOnChannel((ch) => ch.checkQueue(q));
    assert.ok(check.ok, `queue ${q} exists once the host is ready`);
  }
  // Re-declaring with the same attributes is accepted; with others it is refused (406),
  // which tells what the host declared.
  // By default (§3.11) a quorum queue that counts deliveries and dead-letters poison requests.
  const defaults = ctx.requestQueueArguments();
  assert.ok((await ctx.tryOnChannel((ch) => ch.assertQueue(wcQ, { durable: true, arguments: defaults }))).ok, `${wcQ} is a durable quorum queue with a delivery limit`);
  assert.ok(!(await ctx.tryOnChannel((ch) => ch.assertQueue(wcQ, { durable: false, arguments: defaults }))).ok, `${wcQ} is not transient`);
  assert.ok(
    !(await ctx.tryOnChannel((ch) => ch.assertQueue(wcQ, { durable: true, arguments: ctx.requestQueueArguments(5) }))).ok,
    `${wcQ} has the default delivery limit, 3`,
  );
  // An explicit queue type is kept as it is: a classic queue, without a delivery limit.
  assert.ok(
    (await ctx.tryOnChannel((ch) => ch.assertQueue(echoQ, { durable: true, arguments: { 'x-queue-type': 'classic' } }))).ok,
    `${echoQ} is a durable classic queue`,
  );
  assert.ok(
    !(await ctx.tryOnChannel((ch) => ch.assertQueue(echoQ, { durable: true, arguments: { 'x-queue-type': 'quorum' } }))).ok,
    `${echoQ} is not a quorum queue`,
  );
  assert.ok(host.logs().some((l) => l.includes(`its queue \`${echoQ}\` is not a quorum queue`)), 'the host warns that it does not count deliveries');

  // And requests flow through the classic queue.
  const worker = await FakeWorker.start(ctx, echoQ);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'via classic' });
  const received = await worker.next();
  await worker.result(received, received.json());
  worker.ack(received);
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'via classic' });
});

e2e('§2.4: the host declares the cancellation exchange taskgate.cancel as a durable fanout', async (ctx) => {
  await startHost(ctx);
  assert.ok((await ctx.tryOnChannel((ch) => ch.checkExchange('taskgate.cancel'))).ok, 'the exchange exists');
  assert.ok(
    (await ctx.tryOnChannel((ch) => ch.assertExchange('taskgate.cancel', 'fanout', { durable: true }))).ok,
    'it is a durable fanout exchange',
  );
  assert.ok(
    !(await ctx.tryOnChannel((ch) => ch.assertExchange('taskgate.cancel', 'direct', { durable: true }))).ok,
    'it is not a direct exchange',
  );
  assert.ok(
    !(await ctx.tryOnChannel((ch) => ch.assertExchange('taskgate.cancel', 'fanout', { durable: false }))).ok,
    'it is not transient',
  );
});

e2e('request messages wait in the durable queue until a worker comes (published before any consumer)', async (ctx) => {
  const host = await startHost(ctx);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: { early: true } }));
  const count = await ctx.tryOnChannel((ch) => ch.checkQueue(host.queues[TYPES.echo]));
  assert.ok(count.ok && count.value.messageCount === 1, `the request waits in ${host.queues[TYPES.echo]}: ${JSON.stringify(count)}`);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const received = await worker.next();
  assert.deepEqual(received.json(), { early: true });
  await worker.result(received, 'late worker');
  assert.deepEqual(await client.final(id), { id, type: 'result', data: 'late worker' });
});
