/**
 * "Bad input never crashes anything": hundreds of malformed `request` envelopes (including
 * 10,000-deep nesting), stray events, Socket.IO-level garbage and connection churn. Every
 * malformed request gets a refusing ack and no response; the same connection then still
 * works, and the host process is still alive.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertAlive,
  connect,
  describe,
  e2e,
  FakeWorker,
  request,
  sleep,
  startHost,
  TYPES,
  uniqueId,
} from './harness.js';

function nestedArrays(depth: number): unknown {
  let v: unknown = [];
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

function nestedObjects(depth: number): unknown {
  let v: unknown = {};
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

const deepArraysJson = (depth: number) => '['.repeat(depth) + ']'.repeat(depth);
const deepObjectsJson = (depth: number) => '{"a":'.repeat(depth) + '{}' + '}'.repeat(depth);

/** One malformed `request`: arguments for socket.io-client, or a raw JSON body it cannot encode. */
type Malformed = { args: unknown[] } | { raw: string; id?: string };

/** Envelopes that must all be refused; the generator mixes shapes, types and sizes. */
function malformedEnvelopes(count: number): Malformed[] {
  const deepId = uniqueId();
  const fixed: Malformed[] = [
    // 10,000-deep nesting, written raw (socket.io-client's encoder overflows its stack on it).
    { raw: deepArraysJson(10_000) },
    { raw: deepObjectsJson(10_000) },
    { raw: `{"id":${deepArraysJson(10_000)},"requestType":"${TYPES.echo}","payload":{}}` },
    { raw: `{"id":"${deepId}","requestType":${deepObjectsJson(10_000)},"payload":{}}`, id: deepId },
    { raw: `{"id":"${uniqueId()}","requestType":"${TYPES.wordcount}","payload":{"text":${deepArraysJson(10_000)}}}` },
    { raw: `{"id":"${uniqueId()}","requestType":"${TYPES.wordcount}","payload":${deepObjectsJson(10_000)}}` },
    { raw: `[${deepArraysJson(10_000)},{"id":"${uniqueId()}","requestType":"${TYPES.echo}"}]` },
    { args: [nestedArrays(100)] },
    { args: [nestedObjects(100)] },
    { args: [{ id: 'x'.repeat(1_000_000), requestType: TYPES.echo, payload: {} }] },
    { args: [{ id: uniqueId(), requestType: 'y'.repeat(1_000_000), payload: {} }] },
    { args: [{ ID: 'wrong-case', RequestType: TYPES.echo }] },
    { args: [{ id: uniqueId(), requesttype: TYPES.echo }] },
    { args: [{ id: uniqueId(), request_type: TYPES.echo }] },
    { args: [`{"id":"looks-like-json","requestType":"${TYPES.echo}"}`] },
    { args: [''] },
    { args: [0] },
    { args: [-1.5e308] },
    { args: [false] },
    { args: [[]] },
    { args: [{}] },
    { args: [null, { id: uniqueId(), requestType: TYPES.echo }] },
  ];
  const gen: Malformed[] = [];
  const badIds = [undefined, null, 0, 1.5, true, {}, [], '', 'i'.repeat(129), ['id']];
  const badTypes = [undefined, null, 0, false, {}, [], 'no.such.type', '', ' ', 'echo\u0000', '💥'];
  for (let i = 0; gen.length + fixed.length < count; i++) {
    const env: Record<string, unknown> = {};
    const id = badIds[i % badIds.length];
    const type = badTypes[Math.floor(i / badIds.length) % badTypes.length];
    // With a good id, the request type is what is wrong (missing, not a string, or unknown).
    env.id = id === undefined ? uniqueId() : id;
    if (type !== undefined) env.requestType = type;
    if (i % 3 === 0) env.payload = { i, junk: 'z'.repeat(i % 50) };
    gen.push({ args: [env] });
  }
  return [...fixed, ...gen];
}

e2e('hundreds of malformed envelopes (incl. 10,000-deep nesting) are refused; the same connection then works', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const envelopes = malformedEnvelopes(400);
  const refusals = new Map<string, number>();
  const send = (m: Malformed) => ('raw' in m ? client.requestRaw(m.raw, m.id, 15_000) : client.emitRequest(m.args, 15_000));
  // In batches, so that some are in flight together.
  for (let i = 0; i < envelopes.length; i += 25) {
    const acks = await Promise.all(envelopes.slice(i, i + 25).map(send));
    acks.forEach((ack, k) => {
      assert.equal(ack.ok, false, `malformed envelope #${i + k} was accepted: ${describe(envelopes[i + k])}`);
      const code = (ack as { error: { code: string } }).error.code;
      assert.ok(
        ['BAD_REQUEST', 'UNKNOWN_REQUEST_TYPE', 'INVALID_PAYLOAD', 'PAYLOAD_TOO_LARGE'].includes(code),
        `envelope #${i + k}: unexpected code ${code}`,
      );
      if (i + k < 7) {
        // The deep envelopes: malformed (or, for the deep wordcount payloads, invalid).
        assert.ok(['BAD_REQUEST', 'INVALID_PAYLOAD'].includes(code), `deep envelope #${i + k}: ${code}`);
      }
      refusals.set(code, (refusals.get(code) ?? 0) + 1);
    });
  }
  ctx.note(`refusals: ${JSON.stringify([...refusals])}`);
  assert.ok((refusals.get('BAD_REQUEST') ?? 0) > 100, `most are BAD_REQUEST: ${JSON.stringify([...refusals])}`);
  await client.expectQuiet(300);
  await worker.expectNothing(0);

  // The same connection still works.
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'still works' });
  const r = await worker.next();
  await worker.result(r, r.json());
  assert.deepEqual((await pending).final, { id, type: 'result', data: 'still works' });
  assertAlive(host);
});

e2e('a 10,000-deep payload gets an answer (accepted or refused) and breaks nothing', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const deepId = uniqueId();
  const ack = await client.requestRaw(`{"id":"${deepId}","requestType":"${TYPES.echo}","payload":${deepArraysJson(10_000)}}`, deepId, 10_000);
  if (ack.ok) {
    const r = await worker.next();
    assert.equal(r.body.toString(), deepArraysJson(10_000), 'forwarded unchanged');
    await worker.result(r, 'deep done');
    await client.final(deepId);
  } else {
    assert.ok(['BAD_REQUEST', 'INVALID_PAYLOAD', 'PAYLOAD_TOO_LARGE'].includes(ack.error.code), JSON.stringify(ack));
  }
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'next' });
  const r = await worker.next();
  await worker.result(r, 'ok');
  assert.equal((await pending).final?.data, 'ok');
  assertAlive(host);
});

e2e('stray events, requests without an ack callback and binary attachments do not break the connection', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const s = client.socket;
  s.emit('response', { id: 'x', type: 'result', data: 1 });
  s.emit('unknown-event', { a: 1 });
  s.emit('request'); // no ack callback, no body
  s.emit('request', 'junk'); // no ack callback
  s.emit('request', { id: 5 }); // no ack callback
  s.emit('cancel', { id: 'nothing' }, () => undefined); // ack callback where none is expected
  const binAck = await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: Buffer.from('bin') } }, 5000);
  assert.equal(binAck.ok, false, `a binary attachment is not a valid wordcount payload: ${JSON.stringify(binAck)}`);
  await sleep(300);
  // Anything accepted (the binary echo, if the host accepts it) gets through; drain it.
  await worker.expectNothing(0);
  await client.expectQuiet(0);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'fine' });
  const r = await worker.next();
  await worker.result(r, 'fine');
  assert.equal((await pending).final?.data, 'fine');
  assertAlive(host);
});

e2e('Socket.IO-level garbage on one connection does not affect the host or other connections', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const bystander = await connect(ctx, host.url, { name: 'bystander' });
  // Socket.IO packets (the engine.io message framing is added by writeRaw).
  const garbage = [
    '2["request",{', // truncated JSON
    '27["request",{"id":', // truncated JSON, with an ack id
    '2[', // truncated array
    'x', // unknown packet type
    '9', // invalid packet type
    '2{"not":"an array"}',
    '2[]', // event without a name
    '2[42,{}]', // non-string event name
    '2["request"]', // no body, no ack
    `2["request",${deepArraysJson(10_000)}]`,
    `2["request",${'['.repeat(100_000)}`,
    `${'2'.repeat(400)}["request",{}]`, // absurd ack id
    '51-["request",{"_placeholder":true,"num":0}]', // binary event whose attachment never comes
    '3999["request"]', // an ack for nothing
    '1', // disconnect
    '0/no-such-namespace,', // connect to a namespace that does not exist
    '\u0000\u0001\u0002',
  ];
  for (const packet of garbage) {
    const c = await connect(ctx, host.url, { name: 'vandal' });
    // Write raw engine.io message packets, bypassing the Socket.IO encoder.
    c.writeRaw(packet);
    await sleep(50);
    c.close();
  }
  // Client churn: connections that come and go, some with requests in flight.
  for (let i = 0; i < 30; i++) {
    const c = await connect(ctx, host.url, { name: `churn${i}` });
    if (i % 2 === 0) c.socket.emit('request', { id: `churn-${i}`, requestType: TYPES.echo, payload: i }, () => undefined);
    c.close();
  }
  const id = uniqueId();
  const pending = request(bystander, { id, requestType: TYPES.echo, payload: 'bystander' }, { timeout: 15_000 });
  // Skip the churn requests that reached the queue.
  for (;;) {
    const r = await worker.next(10_000);
    if (r.json() === 'bystander') {
      await worker.result(r, 'unharmed');
      break;
    }
    worker.ack(r);
  }
  assert.equal((await pending).final?.data, 'unharmed');
  assertAlive(host);
  const health = await fetch(`${host.url}/healthz`);
  assert.equal(health.status, 200);
  const fresh = await connect(ctx, host.url, { name: 'fresh' });
  assertAccepted(await fresh.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'a' } }));
});
