/**
 * The host's limits through real sockets (`[limits]` and `[host]` of plugins.toml,
 * docs/protocol.md §3.1 and §3.9): the payload ceiling and the transport's message
 * limit (PAYLOAD_TOO_LARGE, or the transport cutting the connection), requests in flight
 * and per second per connection (RATE_LIMITED), connections per host, the origins
 * allowed to open Socket.IO connections, and the size of worker replies (WORKER_ERROR).
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  assertAccepted,
  assertAlive,
  assertErrorResponse,
  assertRefused,
  connect,
  connectPolling,
  connectRefusal,
  e2e,
  FakeWorker,
  request,
  sleep,
  startHost,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';
import { RawSocket, upgradeStatus } from './raw.js';

e2e('PAYLOAD_TOO_LARGE: [limits] max_payload_bytes caps every request type; a lower per-type limit still applies', async (ctx) => {
  const host = await startHost(ctx, {
    sections: { limits: { max_payload_bytes: 1000 } },
    plugins: { wordcount: { max_payload_bytes: 200 } },
  });
  await host.proc.waitForLine(/payload limit cut to \[limits\] max_payload_bytes/, 5000);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  // A JSON string of n characters is n + 2 bytes.
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'x'.repeat(998) }), 'echo at the ceiling');
  await worker.next();
  const over = assertRefused(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'x'.repeat(999) }), 'PAYLOAD_TOO_LARGE');
  assert.deepEqual(over.details, { size: 1001, limit: 1000 });
  const typed = assertRefused(
    await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'w '.repeat(150) } }),
    'PAYLOAD_TOO_LARGE',
  );
  assert.equal((typed.details as { limit: number }).limit, 200);
  await worker.expectNothing(200);
});

for (const transport of ['websocket', 'polling'] as const) {
  e2e(`over ${transport}: a message over the transport's limit is cut off before it reaches the host; a payload between the ceiling and that limit is answered PAYLOAD_TOO_LARGE`, async (ctx) => {
    // Ceiling 10,000 bytes; the transport limit becomes the ceiling + 64 KiB for the envelope.
    const host = await startHost(ctx, {
      sections: { limits: { max_payload_bytes: 10_000 } },
      hostSettings: { max_message_bytes: 20_000 },
    });
    await host.proc.waitForLine(/max_message_bytes=75536/, 5000);
    const conn = transport === 'websocket' ? connect : connectPolling;
    const client = await conn(ctx, host.url, { name: 'oversize' });
    assertRefused(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'y'.repeat(50_000) }, 10_000), 'PAYLOAD_TOO_LARGE');
    const refusedBefore = host.logs().filter((l) => l.includes('request refused')).length;

    // 9 MiB: far over the limit. The transport drops the connection; the host never parses it.
    const id = uniqueId();
    const huge = client.request({ id, requestType: TYPES.echo, payload: 'z'.repeat(9 << 20) }, 10_000);
    await assert.rejects(huge, /no ack/);
    await waitUntil(() => client.lostReason, 10_000, 'the oversized client to be disconnected');
    assert.equal(host.logs().filter((l) => l.includes('request refused')).length, refusedBefore, 'the 9 MiB request never reached the gateway');

    // Everyone else is unaffected.
    const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
    const other = await connect(ctx, host.url, { name: 'other' });
    const pending = request(other, { id: uniqueId(), requestType: TYPES.echo, payload: 'fine' });
    const r = await worker.next();
    await worker.result(r, 'fine');
    assert.equal((await pending).final?.data, 'fine');
    assertAlive(host);
  });
}

e2e('without [host] max_message_bytes the transports take what the largest enabled type accepts (1 MiB) + 64 KiB: a 2 MiB message is cut off', async (ctx) => {
  const host = await startHost(ctx);
  await host.proc.waitForLine(/max_message_bytes=1114112/, 5000);
  const raw = await RawSocket.connected(host.url);
  ctx.onCleanup(async () => raw.terminate());
  // Under the limit: answered (PAYLOAD_TOO_LARGE: over echo's 1 MiB).
  const ack = await raw.ack(raw.request({ id: 'big', requestType: TYPES.echo, payload: 'p'.repeat((1 << 20) + 1000) }));
  assert.equal(ack.error?.code, 'PAYLOAD_TOO_LARGE');
  const refusedBefore = host.logs().filter((l) => l.includes('request refused')).length;
  raw.send(`4299["request",{"id":"huge","requestType":"echo","payload":"${'q'.repeat(2 << 20)}"}]`);
  assert.ok(await raw.waitClosed(15_000), 'the host closed the connection');
  assert.equal(host.logs().filter((l) => l.includes('request refused')).length, refusedBefore, 'the host never saw the request');
  assertAlive(host);
});

e2e('RATE_LIMITED: over [limits] max_in_flight on one connection; a place frees when a request ends; other connections unaffected', async (ctx) => {
  const host = await startHost(ctx, { sections: { limits: { max_in_flight: 3 } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const ids = ['a', 'b', 'c'].map((p) => uniqueId(p));
  for (const id of ids) assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: id }));
  const limited = assertRefused(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 0 }), 'RATE_LIMITED');
  assert.deepEqual(limited.details, { limit: 'inFlight', max: 3 });
  const other = await connect(ctx, host.url);
  assertAccepted(await other.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'other' }));

  const first = await worker.next();
  await worker.result(first, 'done');
  await client.final(ids[0]);
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'again' }), 'a place was freed');
});

e2e('RATE_LIMITED: over [limits] requests_per_second (burst request_burst), with a retry hint that works', async (ctx) => {
  const host = await startHost(ctx, { sections: { limits: { requests_per_second: 2, request_burst: 4 } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const acks = [];
  for (let i = 0; i < 6; i++) acks.push(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: i }));
  const accepted = acks.filter((a) => a.ok).length;
  // The burst, and at most one more if the machine was slow enough for a refill.
  assert.ok(accepted >= 4 && accepted <= 5, `accepted ${accepted} of 6`);
  const limitedAck = acks.find((a) => !a.ok)!;
  const limited = assertRefused(limitedAck, 'RATE_LIMITED');
  const details = limited.details as { limit: string; perSecond: number; retryAfterMs: number };
  assert.equal(details.limit, 'rate');
  assert.equal(details.perSecond, 2);
  assert.ok(details.retryAfterMs > 0 && details.retryAfterMs <= 500, JSON.stringify(details));
  // Malformed events count too: three in a row cannot all fit a budget refilled every 500 ms.
  const malformed = [];
  for (let i = 0; i < 3; i++) malformed.push(await client.request({ id: 5 }));
  assert.ok(malformed.some((a) => !a.ok && a.error.code === 'RATE_LIMITED'), JSON.stringify(malformed));
  await sleep(details.retryAfterMs + 600);
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'later' }), 'after the hinted wait');
  // Each connection has its own budget.
  const other = await connect(ctx, host.url);
  for (let i = 0; i < 4; i++) assertAccepted(await other.request({ id: uniqueId(), requestType: TYPES.echo, payload: i }));
  assert.ok(worker.received.length <= 10);
});

e2e('max_connections: a connection over [limits] max_connections gets connect_error "too many connections"; a freed place is reused', async (ctx) => {
  const host = await startHost(ctx, { sections: { limits: { max_connections: 2 } } });
  const a = await connect(ctx, host.url, { name: 'a' });
  await connect(ctx, host.url, { name: 'b' });
  assert.equal(await connectRefusal(ctx, host.url), 'too many connections');
  assert.equal(await connectRefusal(ctx, host.url, { transport: 'polling' }), 'too many connections');
  await host.proc.waitForLine(/connection refused: the host is full/, 1000);
  a.close();
  await waitUntil(() => host.logs().some((l) => l.includes('client disconnected')), 10_000, 'the host to see the disconnect');
  const c = await connect(ctx, host.url, { name: 'c' });
  assertAccepted(await c.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 'a b' } }));
});

/** The status of a Socket.IO handshake request (long-polling) and its CORS header. */
async function pollingHandshake(url: string, origin?: string) {
  const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`, { headers: origin ? { Origin: origin } : {} });
  await res.arrayBuffer();
  return { status: res.status, allowOrigin: res.headers.get('access-control-allow-origin') };
}

/** The status of a WebSocket upgrade, with an `Origin` when given. */
const upgradeFrom = (url: string, origin?: string) => upgradeStatus(url, origin ? { Origin: origin } : {});

e2e('origins: by default only the host\'s own origin (and clients sending none) may open Socket.IO; others get 403 over both transports', async (ctx) => {
  const host = await startHost(ctx);
  const own = host.url;
  assert.equal((await pollingHandshake(host.url)).status, 200, 'no Origin (a non-browser client)');
  const same = await pollingHandshake(host.url, own);
  assert.equal(same.status, 200, 'the host\'s own origin');
  assert.equal(same.allowOrigin, own);
  assert.equal(await upgradeFrom(host.url, own), 101);
  assert.equal(await upgradeFrom(host.url), 101);
  for (const evil of ['https://evil.example', 'null', own.replace('127.0.0.1', 'localhost')]) {
    assert.equal((await pollingHandshake(host.url, evil)).status, 403, `polling from ${evil}`);
    assert.equal(await upgradeFrom(host.url, evil), 403, `upgrade from ${evil}`);
  }
  // Other paths (static files, health) are not Socket.IO and not checked.
  assert.equal((await fetch(`${host.url}/healthz`, { headers: { Origin: 'https://evil.example' } })).status, 200);
});

e2e('origins: [host] allowed_origins adds origins (with CORS headers for them) and "*" allows any', async (ctx) => {
  const host = await startHost(ctx, { hostSettings: { allowed_origins: ['https://app.example.test', 'http://localhost:5173'] } });
  for (const origin of ['https://app.example.test', 'http://localhost:5173']) {
    const r = await pollingHandshake(host.url, origin);
    assert.equal(r.status, 200, origin);
    assert.equal(r.allowOrigin, origin);
    assert.equal(await upgradeFrom(host.url, origin), 101, origin);
  }
  const evil = await pollingHandshake(host.url, 'https://app.example.test.evil.example');
  assert.equal(evil.status, 403);
  assert.equal(evil.allowOrigin, null);
  // A preflight from an allowed origin is answered; from another it gets no CORS grant.
  const preflight = await fetch(`${host.url}/socket.io/?EIO=4&transport=polling`, {
    method: 'OPTIONS',
    headers: { Origin: 'https://app.example.test', 'Access-Control-Request-Method': 'POST' },
  });
  assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://app.example.test');
  await host.stop();

  const any = await startHost(ctx, { hostSettings: { allowed_origins: ['*'] } });
  await any.proc.waitForLine(/accepts browser connections from any origin/, 5000);
  assert.equal((await pollingHandshake(any.url, 'https://whoever.example')).status, 200);
  assert.equal(await upgradeFrom(any.url, 'https://whoever.example'), 101);
});

/** The resident set of a process, in KiB (Linux), or -1 where /proc does not tell. */
function rssKiB(pid: number | undefined): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? -1);
  } catch {
    return -1;
  }
}

e2e('WORKER_ERROR: a flood of replies over [limits] max_reply_bytes ends its request; the host stays up and serves others', async (ctx) => {
  const host = await startHost(ctx, { sections: { limits: { max_reply_bytes: 65_536 } } });
  await host.proc.waitForLine(/max_reply_bytes=65536/, 5000);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const rssBefore = rssKiB(host.proc.child.pid);

  const flooded = request(client, { id: uniqueId('flooded'), requestType: TYPES.echo, payload: 'x' });
  const r = await worker.next();
  // 64 replies of 1 MiB for the request, and 64 more for ids nobody knows (anyone who can
  // publish to the reply queue can send those), all published before the host reads any.
  const big = Buffer.alloc(1 << 20, 0x61);
  for (let i = 0; i < 64; i++) {
    worker.channel.publish('', r.replyTo, big, { correlationId: r.correlationId, type: 'chunk', headers: { 'x-seq': i } });
    worker.channel.publish('', r.replyTo, big, { correlationId: uniqueId(), type: 'result' });
  }
  await worker.channel.waitForConfirms();
  const outcome = await flooded;
  const error = assertErrorResponse(outcome.final, 'WORKER_ERROR', 'the flooded request');
  assert.deepEqual(error.details, { size: 1 << 20, limit: 65_536 });
  assert.match(error.message, /the worker's reply is larger than 65536 bytes/);
  assert.deepEqual(outcome.responses.length, 1, 'no chunk of the flood reached the client');

  // The host is up, and other requests work as before.
  const other = request(client, { id: uniqueId('other'), requestType: TYPES.echo, payload: 'fine' });
  const o = await worker.next();
  await worker.result(o, 'fine');
  assert.equal((await other).final?.data, 'fine');
  assertAlive(host);
  const rssAfter = rssKiB(host.proc.child.pid);
  console.log(`host RSS before the flood ${rssBefore} KiB, after ${rssAfter} KiB (128 MiB of replies, 64 KiB limit)`);
});
