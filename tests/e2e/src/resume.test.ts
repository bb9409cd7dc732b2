/**
 * Tasks that outlive their connection, phase 1 (docs/protocol.md §4, docs/long-running-tasks.md): a
 * client that opts in with `auth.session` keeps its requests through a network blip. The connection
 * is cut through a TCP proxy (the host and the client learn of it only as a dead TCP connection), the
 * worker goes on streaming, and when the client is back within the resume window it attaches each
 * request with the last `seq` it saw: every chunk arrives once, in order, then the result, and the
 * worker is never told to stop. Past the window the request is cancelled as before, and nobody else
 * can attach to it.
 */

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  CancelListener,
  e2e,
  FakeWorker,
  sleep,
  startHost,
  TYPES,
  uniqueId,
  waitUntil,
  type TestContext,
} from './harness.js';
import { ResumingClient } from './resuming-client.js';
import { TcpProxy } from './tcp-proxy.js';

async function streamingHost(ctx: TestContext, resume: Record<string, unknown> = {}) {
  const host = await startHost(ctx, { sections: { resume: { window: '20s', ...resume } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown]);
  return { host, worker };
}

e2e('resume: a stream cut at chunk 50 and restored 2 s later delivers all 200 chunks in order, once each, then the result; the worker is never cancelled', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const proxy = await TcpProxy.start(ctx, host.url);
  const client = new ResumingClient(ctx, proxy.url);
  const first = await client.session();
  assert.ok(first.token.length > 20, 'a session token');
  assert.equal(first.resumeWindowMs, 20_000);

  const id = uniqueId('blip');
  assert.deepEqual(await client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }), { ok: true });
  const job = await worker.next();
  for (let seq = 0; seq < 60; seq++) await worker.chunk(job, { n: seq }, seq);
  await waitUntil(() => client.seqs(id).length >= 50 || undefined, 10_000, '50 chunks');

  proxy.cut();
  // While the client is away the worker goes on; some of the chunks above may have been lost in flight.
  for (let seq = 60; seq < 150; seq++) await worker.chunk(job, { n: seq }, seq);
  await sleep(2000);
  proxy.restore();

  await client.session(2);
  const ack = await client.attach(id, client.lastSeq(id));
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.state, 'running');
  for (let seq = 150; seq < 200; seq++) await worker.chunk(job, { n: seq }, seq);
  await worker.result(job, { done: true });
  worker.ack(job);

  await waitUntil(() => client.final(id), 10_000, 'the result');
  assert.deepEqual(client.seqs(id), Array.from({ length: 200 }, (_, i) => i), 'every chunk once, in order');
  assert.deepEqual(
    (client.responses.get(id) ?? []).filter((r) => r.type === 'chunk').map((r) => (r.data as { n: number }).n),
    Array.from({ length: 200 }, (_, i) => i),
  );
  assert.deepEqual(client.final(id), { id, type: 'result', data: { done: true } });
  assert.equal(cancels.find(job.correlationId!), undefined, 'the worker was not told to stop');
  assert.ok(client.connects >= 2, 'the client reconnected');
});

e2e('resume: a final reply that arrives while the client is away is delivered on attach; the task is then gone', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const proxy = await TcpProxy.start(ctx, host.url);
  const client = new ResumingClient(ctx, proxy.url);
  await client.session();
  const id = uniqueId('away');
  assert.deepEqual(await client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }), { ok: true });
  const job = await worker.next();
  await worker.chunk(job, 'a', 0);
  await waitUntil(() => client.seqs(id).length === 1 || undefined, 5000, 'the first chunk');
  proxy.cut();
  await sleep(200);
  await worker.chunk(job, 'b', 1);
  await worker.result(job, 'done');
  worker.ack(job);
  await sleep(300);
  proxy.restore();
  await client.session(2);
  const ack = await client.attach(id, 0);
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.state, 'succeeded');
  await waitUntil(() => client.final(id), 5000, 'the result');
  assert.deepEqual(client.seqs(id), [0, 1]);
  // Delivered: it is over, and attaching again finds nothing.
  const again = await client.attach(id, 1);
  assert.equal(again.ok, false);
  assert.equal(again.error.code, 'TASK_NOT_FOUND');
});

e2e('resume: past [resume] window the request is cancelled as on any disconnect, and attaching finds nothing', async (ctx) => {
  const { host, worker } = await streamingHost(ctx, { window: '1s' });
  const cancels = await CancelListener.start(ctx);
  const proxy = await TcpProxy.start(ctx, host.url);
  const client = new ResumingClient(ctx, proxy.url);
  assert.equal((await client.session()).resumeWindowMs, 1000);
  const id = uniqueId('late');
  assert.deepEqual(await client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }), { ok: true });
  const job = await worker.next();
  proxy.cut();
  const cancelled = await cancels.waitFor(job.correlationId!, 5000);
  assert.ok(cancelled);
  proxy.restore();
  await client.session(2);
  const ack = await client.attach(id, -1);
  assert.equal(ack.ok, false);
  assert.equal(ack.error.code, 'TASK_NOT_FOUND');
});

e2e('resume: nobody else can attach — another session, a forged token, a v1 client — and they learn nothing', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const proxy = await TcpProxy.start(ctx, host.url);
  const owner = new ResumingClient(ctx, proxy.url);
  const ownerSession = await owner.session();
  const id = uniqueId('mine');
  assert.deepEqual(await owner.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }), { ok: true });
  const job = await worker.next();
  proxy.cut();
  await sleep(200);

  // The owner's signature on claims naming another session.
  const [header, , signature] = ownerSession.token.split('.');
  const claims = Buffer.from(JSON.stringify({ sid: randomUUID(), iat: 0, exp: 4102444800 })).toString('base64url');
  const forged = `${header}.${claims}.${signature}`;
  for (const [name, first] of [
    ['another session', true],
    ['a forged token', forged],
    ['a token that is not one', 'nonsense'],
  ] as const) {
    const other = new ResumingClient(ctx, host.url, first);
    const session = await other.session();
    assert.notEqual(session.token, ownerSession.token, `${name}: a new session`);
    const ack = await other.attach(id, -1);
    assert.equal(ack.ok, false, name);
    assert.equal(ack.error.code, 'TASK_NOT_FOUND', name);
    const unknown = await other.attach(uniqueId('never'), -1);
    assert.deepEqual(Object.keys(unknown.error).sort(), Object.keys(ack.error).sort(), `${name}: the same answer as for an id that never existed`);
    assert.equal(unknown.error.message, ack.error.message, name);
    other.socket.disconnect();
  }

  // The owner still can.
  proxy.restore();
  await owner.session(2);
  assert.equal((await owner.attach(id, -1)).ok, true);
  await worker.result(job, 'ok');
  worker.ack(job);
  await waitUntil(() => owner.final(id), 5000, 'the result');
});

e2e('resume: over long-polling too (socketioxide): a cut connection comes back and attach moves the request to it', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const proxy = await TcpProxy.start(ctx, host.url);
  const client = new ResumingClient(ctx, proxy.url, true, 'polling');
  await client.session();
  const id = uniqueId('poll');
  assert.deepEqual(await client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }), { ok: true });
  const job = await worker.next();
  for (let seq = 0; seq < 10; seq++) await worker.chunk(job, seq, seq);
  await waitUntil(() => client.seqs(id).length === 10 || undefined, 5000, '10 chunks');
  proxy.cut();
  await sleep(500);
  proxy.restore();
  // The old polling session may linger until its ping timeout: attach takes the request anyway.
  await waitUntil(() => client.connects >= 2 || undefined, 10_000, 'the reconnect');
  await waitUntil(() => client.sessions.length >= 2 || undefined, 10_000, 'the second session event');
  const ack = await client.attach(id, client.lastSeq(id));
  assert.equal(ack.ok, true, JSON.stringify(ack));
  for (let seq = 10; seq < 20; seq++) await worker.chunk(job, seq, seq);
  await worker.result(job, 'done');
  worker.ack(job);
  await waitUntil(() => client.final(id), 10_000, 'the result');
  assert.deepEqual(client.seqs(id), Array.from({ length: 20 }, (_, i) => i));
  assert.equal(cancels.find(job.correlationId!), undefined);
});

// ---------------------------------------------------------------------------------------
// §4.3: detached tasks, the task list, idempotent ids
// ---------------------------------------------------------------------------------------

interface TaskInfo {
  id: string;
  requestType: string;
  state: string;
  startedAt: number;
  endedAt?: number;
  lastSeq?: number;
  lastChunk?: unknown;
}

async function tasksOf(client: ResumingClient): Promise<TaskInfo[]> {
  const ack = await client.socket.timeout(5000).emitWithAck('tasks', {});
  assert.equal(ack.ok, true, JSON.stringify(ack));
  return ack.tasks as TaskInfo[];
}

e2e('tasks: a detached task outlives its page — a reload lists it with its progress, attaches, and sees it finish', async (ctx) => {
  const { host, worker } = await streamingHost(ctx, { window: '1s' });
  const cancels = await CancelListener.start(ctx);
  const page = new ResumingClient(ctx, host.url);
  const { token, resultTtlMs } = await page.session();
  assert.equal(resultTtlMs, 3_600_000);
  const id = uniqueId('job');
  const before = Date.now();
  assert.deepEqual(await page.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true }), { ok: true });
  const job = await worker.next();
  for (let seq = 0; seq < 5; seq++) await worker.chunk(job, { left: 5 - seq }, seq);
  await waitUntil(() => page.seqs(id).length === 5 || undefined, 5000, '5 chunks');
  page.socket.disconnect(); // the page goes away
  await sleep(1500); // past the resume window: a detached task is not cancelled
  assert.equal(cancels.find(job.correlationId!), undefined);
  for (let seq = 5; seq < 8; seq++) await worker.chunk(job, { left: 5 - seq }, seq);

  const reloaded = new ResumingClient(ctx, host.url, token);
  await reloaded.session();
  const listed = await waitUntil(async () => {
    const tasks = await tasksOf(reloaded);
    return tasks.find((t) => t.id === id && t.lastSeq === 7) ? tasks : undefined;
  }, 5000, 'the task with its latest chunk');
  const task = listed.find((t) => t.id === id)!;
  assert.equal(task.requestType, TYPES.countdown);
  assert.equal(task.state, 'running');
  assert.deepEqual(task.lastChunk, { left: -2 });
  assert.ok(task.startedAt >= before - 1000 && task.startedAt <= Date.now(), `startedAt ${task.startedAt}`);
  assert.equal(task.endedAt, undefined);

  const ack = await reloaded.attach(id, -1);
  assert.deepEqual([ack.ok, ack.state, ack.firstSeq], [true, 'running', 0]);
  await worker.result(job, { done: true });
  worker.ack(job);
  await waitUntil(() => reloaded.final(id), 5000, 'the result');
  assert.deepEqual(reloaded.seqs(id), [0, 1, 2, 3, 4, 5, 6, 7]);
  // The outcome stays retrievable: listed as succeeded, attachable again.
  const after = (await tasksOf(reloaded)).find((t) => t.id === id)!;
  assert.equal(after.state, 'succeeded');
  assert.ok(typeof after.endedAt === 'number');
  const third = new ResumingClient(ctx, host.url, token);
  await third.session();
  const again = await third.attach(id, 5);
  assert.deepEqual([again.ok, again.state, again.firstSeq], [true, 'succeeded', 6]);
  await waitUntil(() => third.final(id), 5000, 'the kept result');
  assert.deepEqual(third.seqs(id), [6, 7]);
  // Another session sees none of it.
  const stranger = new ResumingClient(ctx, host.url);
  await stranger.session();
  assert.deepEqual(await tasksOf(stranger), []);
  assert.equal((await stranger.attach(id, -1)).error.code, 'TASK_NOT_FOUND');
});

e2e('tasks: past [resume] result_ttl a finished task is gone: TASK_NOT_FOUND', async (ctx) => {
  const { host, worker } = await streamingHost(ctx, { result_ttl: '1s' });
  const client = new ResumingClient(ctx, host.url);
  await client.session();
  const id = uniqueId('ttl');
  assert.equal((await client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true })).ok, true);
  const job = await worker.next();
  await worker.result(job, 'done');
  worker.ack(job);
  await waitUntil(() => client.final(id), 5000, 'the result');
  assert.equal((await client.attach(id, -1)).ok, true, 'kept for a while');
  await sleep(1500);
  assert.equal((await client.attach(id, -1)).error.code, 'TASK_NOT_FOUND');
  assert.deepEqual((await tasksOf(client)).filter((t) => t.id === id), []);
});

e2e('tasks: a request resent with the id of a task its owner has does not run twice', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const first = new ResumingClient(ctx, host.url);
  const { token } = await first.session();
  const id = uniqueId('once');
  const envelope = { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true };
  assert.deepEqual(await first.request(envelope), { ok: true });
  const job = await worker.next();
  await worker.chunk(job, 'a', 0);
  first.socket.disconnect();
  // The app retries after UNAVAILABLE, with the same id, from a new connection.
  const retry = new ResumingClient(ctx, host.url, token);
  await retry.session();
  assert.deepEqual(await retry.request(envelope), { ok: true });
  await waitUntil(() => retry.seqs(id).length === 1 || undefined, 5000, 'the kept chunk, replayed');
  await worker.chunk(job, 'b', 1);
  await worker.result(job, 'charged once');
  worker.ack(job);
  await waitUntil(() => retry.final(id), 5000, 'the result');
  assert.deepEqual(retry.seqs(id), [0, 1]);
  await worker.expectNothing(500); // the worker ran it once
  // The same id in flight on the same connection is still DUPLICATE_ID.
  const id2 = uniqueId('dup');
  const envelope2 = { ...envelope, id: id2 };
  assert.deepEqual(await retry.request(envelope2), { ok: true });
  const dup = await retry.request(envelope2);
  assert.equal(dup.error.code, 'DUPLICATE_ID');
});

e2e('tasks: detach needs a session, and an owner has at most [resume] max_tasks', async (ctx) => {
  const { host, worker } = await streamingHost(ctx, { max_tasks: 2 });
  const plain = await (await import('./harness.js')).connect(ctx, host.url);
  const refused = await plain.request({ id: uniqueId(), requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true });
  assert.equal(refused.ok, false);
  assert.equal((refused as { error: { code: string } }).error.code, 'BAD_REQUEST');
  const client = new ResumingClient(ctx, host.url);
  await client.session();
  const detach = (id: string) => client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true });
  assert.equal((await detach(uniqueId())).ok, true);
  assert.equal((await detach(uniqueId())).ok, true);
  const third = await detach(uniqueId());
  assert.equal(third.ok, false);
  assert.equal(third.error.code, 'RATE_LIMITED');
  assert.deepEqual(third.error.details, { limit: 'tasks', max: 2 });
  // Ordinary requests of the session are not tasks: not limited, not listed.
  assert.equal((await client.request({ id: uniqueId(), requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } })).ok, true);
  assert.equal((await tasksOf(client)).length, 2);
  for (let i = 0; i < 3; i++) await worker.next();
});

e2e('resume: 1,000 requests in flight on one connection are all picked up after a blip (the time is printed, not asserted)', async (ctx) => {
  // Per-connection limits raised so that one connection can hold 1,000 requests.
  const big = await startHost(ctx, {
    sections: { resume: { window: '30s' }, limits: { max_in_flight: 2000, requests_per_second: 0 } },
  });
  const worker = await FakeWorker.start(ctx, big.queues[TYPES.countdown], { prefetch: 1000 });
  const proxy = await TcpProxy.start(ctx, big.url);
  const client = new ResumingClient(ctx, proxy.url);
  await client.session();
  const ids = Array.from({ length: 1000 }, (_, i) => `many-${i}`);
  const acks = await Promise.all(ids.map((id) => client.socket.timeout(20_000).emitWithAck('request', { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } })));
  assert.ok(acks.every((a) => a.ok === true));
  const jobs = [];
  for (let i = 0; i < ids.length; i++) jobs.push(await worker.next(10_000));
  proxy.cut();
  await sleep(300);
  proxy.restore();
  await client.session(2);
  const started = performance.now();
  const attached = await Promise.all(ids.map((id) => client.socket.timeout(20_000).emitWithAck('attach', { id, afterSeq: -1 })));
  const ms = performance.now() - started;
  assert.ok(attached.every((a) => a.ok === true && a.state === 'running'), JSON.stringify(attached.find((a) => !a.ok)));
  ctx.note(`1,000 requests resumed (every attach acked) in ${ms.toFixed(0)} ms`);
  console.log(`# resume: 1,000 requests in flight resumed in ${ms.toFixed(0)} ms after the reconnect`);
  for (const job of jobs) await worker.result(job, 'ok');
  await waitUntil(() => ids.every((id) => client.final(id)) || undefined, 20_000, 'every result');
});
