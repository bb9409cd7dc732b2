/**
 * A blip that reconnects to another host (docs/protocol.md §4.5): two hosts share the `[resume]`
 * cluster secret and one RabbitMQ; a client's connection to host A is cut through a TCP proxy that
 * then sends new connections to host B (a load balancer without sticky sessions). B claims the
 * request on `taskgate.tasks`, A hands it off — the chunks the client missed, then every later
 * worker reply, forwarded — and the client sees each chunk once, in order, then the result. The
 * worker is never told to stop and runs the work once.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { CancelListener, e2e, FakeWorker, sleep, startHost, TYPES, uniqueId, waitUntil, type TestContext } from './harness.js';
import { ResumingClient } from './resuming-client.js';
import { TcpProxy } from './tcp-proxy.js';

const SECRET_ENV = 'TASKGATE_E2E_RESUME_SECRET';

/** Hosts A and B with one cluster secret, and a fake worker on the countdown queue. */
async function cluster(ctx: TestContext, limits: Record<string, unknown> = {}, prefetch = 100) {
  const secret = randomBytes(32).toString('hex');
  const options = (name: string) => ({
    name,
    sections: { resume: { window: '20s', secret_env: SECRET_ENV }, limits },
    env: { [SECRET_ENV]: secret },
  });
  const a = await startHost(ctx, options('hostA'));
  const b = await startHost(ctx, options('hostB'));
  const worker = await FakeWorker.start(ctx, a.queues[TYPES.countdown], { prefetch });
  return { a, b, worker };
}

const countdown = (id: string) => ({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } });

e2e('hand-off: a stream cut at chunk 50 on host A and resumed 2 s later through host B delivers all 200 chunks in order, once each, then the result', async (ctx) => {
  const { a, b, worker } = await cluster(ctx);
  const cancels = await CancelListener.start(ctx);
  const proxy = await TcpProxy.start(ctx, a.url);
  const client = new ResumingClient(ctx, proxy.url);
  const first = await client.session();

  const id = uniqueId('moved');
  assert.deepEqual(await client.request(countdown(id)), { ok: true });
  const job = await worker.next();
  for (let seq = 0; seq < 60; seq++) await worker.chunk(job, { n: seq }, seq);
  await waitUntil(() => client.seqs(id).length >= 50 || undefined, 10_000, '50 chunks');

  proxy.cut();
  proxy.retarget(b.url);
  // The worker goes on replying to host A, which parks the request.
  for (let seq = 60; seq < 150; seq++) await worker.chunk(job, { n: seq }, seq);
  await sleep(2000);
  proxy.restore();

  const second = await client.session(2);
  assert.notEqual(second.token, undefined);
  assert.ok(first.token.length > 20);
  const seen = client.lastSeq(id);
  const ack = await client.attach(id, seen);
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.state, 'running');
  assert.equal(ack.firstSeq, seen + 1, 'no gap');
  // Still replying to host A: it forwards to B.
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
  await sleep(200);
  assert.equal(cancels.find(job.correlationId!), undefined, 'the worker was not told to stop');
  assert.equal(worker.received.length, 1, 'the work ran once');
  assert.ok(b.logs().some((l) => l.includes('request taken over from another host')), 'B took it over');
  assert.ok(a.logs().some((l) => l.includes('request handed to the host its client reconnected to')), 'A handed it off');
});

e2e('hand-off: A → B → A while the worker streams without pause: 300 chunks in order, once each', async (ctx) => {
  const { a, b, worker } = await cluster(ctx);
  const cancels = await CancelListener.start(ctx);
  const proxy = await TcpProxy.start(ctx, a.url);
  const client = new ResumingClient(ctx, proxy.url);
  await client.session();
  const id = uniqueId('roundtrip');
  assert.deepEqual(await client.request(countdown(id)), { ok: true });
  const job = await worker.next();
  const total = 300;
  // The worker streams on its own, 2 ms apart, whatever the client does.
  const streaming = (async () => {
    for (let seq = 0; seq < total; seq++) {
      await worker.chunk(job, { n: seq }, seq);
      await sleep(2);
    }
    await worker.result(job, 'done');
    worker.ack(job);
  })();

  let sessions = 1;
  for (const [at, to] of [
    [50, b.url],
    [150, a.url],
  ] as const) {
    await waitUntil(() => client.seqs(id).length >= at || undefined, 20_000, `${at} chunks`);
    proxy.cut();
    proxy.retarget(to);
    await sleep(300);
    proxy.restore();
    sessions += 1;
    await client.session(sessions);
    const seen = client.lastSeq(id);
    const ack = await client.attach(id, seen);
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(ack.firstSeq, seen + 1, 'no gap');
  }
  await streaming;
  await waitUntil(() => client.final(id), 20_000, 'the result');
  assert.deepEqual(client.seqs(id), Array.from({ length: total }, (_, i) => i), 'every chunk once, in order');
  assert.deepEqual(client.final(id), { id, type: 'result', data: 'done' });
  assert.equal(cancels.find(job.correlationId!), undefined, 'the worker was not told to stop');
  assert.ok(b.logs().some((l) => l.includes('request taken over from another host')), 'B took it over');
  assert.ok(a.logs().some((l) => l.includes('request taken over from another host')), 'and A took it back');
});

e2e("hand-off: another owner's claim through host B is not answered; the owner's is", async (ctx) => {
  const { a, b, worker } = await cluster(ctx);
  const proxy = await TcpProxy.start(ctx, a.url);
  const owner = new ResumingClient(ctx, proxy.url);
  await owner.session();
  const id = uniqueId('mine');
  assert.deepEqual(await owner.request(countdown(id)), { ok: true });
  const job = await worker.next();
  await worker.chunk(job, 'a', 0);
  await waitUntil(() => owner.seqs(id).length === 1 || undefined, 5000, 'the first chunk');
  proxy.cut();
  proxy.retarget(b.url);

  const other = new ResumingClient(ctx, b.url);
  await other.session();
  const refused = await other.attach(id, -1);
  assert.equal(refused.ok, false);
  assert.equal(refused.error.code, 'TASK_NOT_FOUND');
  assert.ok(!a.logs().some((l) => l.includes('request handed to the host')), 'A handed nothing over');

  proxy.restore();
  await owner.session(2);
  const ack = await owner.attach(id, 0);
  assert.equal(ack.ok, true, JSON.stringify(ack));
  await worker.chunk(job, 'b', 1);
  await worker.result(job, 'done');
  worker.ack(job);
  await waitUntil(() => owner.final(id), 5000, 'the result');
  assert.deepEqual(owner.seqs(id), [0, 1]);
  assert.deepEqual(other.responses.get(id), undefined, 'the other owner saw nothing');
});

e2e('hand-off: a request whose holder is gone is TASK_NOT_FOUND within the claim timeout', async (ctx) => {
  const { a, b, worker } = await cluster(ctx);
  const proxy = await TcpProxy.start(ctx, a.url);
  const client = new ResumingClient(ctx, proxy.url);
  await client.session();
  const id = uniqueId('orphan');
  assert.deepEqual(await client.request(countdown(id)), { ok: true });
  await worker.next();
  proxy.cut();
  proxy.retarget(b.url);
  await a.proc.stop(100);
  proxy.restore();
  await client.session(2);
  const started = Date.now();
  const ack = await client.attach(id, -1);
  const waited = Date.now() - started;
  assert.equal(ack.ok, false);
  assert.equal(ack.error.code, 'TASK_NOT_FOUND');
  assert.ok(waited < 3000, `answered after ${waited} ms`);
});

for (const through of ['the same host', 'another host'] as const) {
  e2e(
    `hand-off: 1,000 requests in flight on one connection, resumed through ${through} (measured, not asserted)`,
    async (ctx) => {
      const count = 1000;
      const { a, b, worker } = await cluster(
        ctx,
        { max_in_flight: 2 * count, requests_per_second: 10 * count, request_burst: 10 * count },
        2 * count,
      );
      const proxy = await TcpProxy.start(ctx, a.url);
      const client = new ResumingClient(ctx, proxy.url);
      await client.session();
      const ids = Array.from({ length: count }, (_, i) => `many-${i}`);
      const acks = await Promise.all(ids.map((id) => client.request(countdown(id))));
      assert.ok(acks.every((x) => x.ok === true));
      const jobs = [];
      for (let i = 0; i < count; i++) jobs.push(await worker.next());
      await Promise.all(jobs.map((job) => worker.chunk(job, 'first', 0)));
      await waitUntil(() => ids.every((id) => client.seqs(id).length === 1) || undefined, 20_000, 'a chunk of each');

      proxy.cut();
      if (through === 'another host') proxy.retarget(b.url);
      await Promise.all(jobs.map((job) => worker.chunk(job, 'while away', 1)));
      await sleep(500);
      proxy.restore();
      await client.session(2);
      const started = performance.now();
      const attached = await Promise.all(ids.map((id) => client.attach(id, 0)));
      const allAcked = performance.now() - started;
      await waitUntil(() => ids.every((id) => client.seqs(id).length === 2) || undefined, 20_000, 'the missed chunk of each');
      const allReplayed = performance.now() - started;
      const failed = attached.filter((x) => x.ok !== true);
      assert.deepEqual(failed.slice(0, 3), [], `${failed.length} attaches failed`);
      console.log(
        `resume of ${count} requests through ${through}: all attach acks after ${allAcked.toFixed(0)} ms, every missed chunk after ${allReplayed.toFixed(0)} ms`,
      );
      await Promise.all(jobs.map((job) => worker.result(job, 'done')));
      for (const job of jobs) worker.ack(job);
      await waitUntil(() => ids.every((id) => client.final(id)) || undefined, 20_000, 'every result');
      assert.ok(ids.every((id) => client.seqs(id).join() === '0,1'));
    },
    { timeout: 120_000 },
  );
}
