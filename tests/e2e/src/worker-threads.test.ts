/**
 * The host on more than one runtime thread (`--worker-threads`, issue 17 "Every core"): it says
 * at start what it runs and why, really runs that many threads, and everything that lives per
 * process — in-flight requests relayed by the AMQP client's tasks to the sockets' tasks, and a
 * session's parked requests resumed after a blip — works whichever thread a connection or a
 * broker task lands on.
 */

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';

import {
  assertAccepted,
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
import { ResumingClient } from './resuming-client.js';
import { TcpProxy } from './tcp-proxy.js';

/** Names of the host process's threads (`/proc/<pid>/task/*\/comm`). */
function threadNames(host: Host): string[] {
  const pid = host.proc.child.pid;
  assert.ok(pid, 'the host has a pid');
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    try {
      return readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      return ''; // the thread ended between the listing and the read
    }
  });
}

const runtimeLine = (host: Host) => host.logs().find((line) => line.includes('runtime: '));

e2e('--worker-threads 2: the host logs a two-thread runtime, runs two worker threads, and relays 400 requests and streams over 20 connections', async (ctx) => {
  const host = await startHost(ctx, { args: ['--worker-threads', '2'] });
  assert.match(runtimeLine(host) ?? '', /runtime: 2 threads \(multi-thread runtime\): set by --worker-threads/);
  const workers = threadNames(host).filter((name) => /^tokio-(rt|runtime)-w/.test(name));
  assert.equal(workers.length, 2, `runtime worker threads: ${threadNames(host).join(', ')}`);

  await startWorkers(ctx, host.queues, { only: [TYPES.echo, TYPES.countdown] });
  const clients = await Promise.all(Array.from({ length: 20 }, () => connect(ctx, host.url)));
  const outcomes = await Promise.all(
    clients.flatMap((client, c) =>
      Array.from({ length: 20 }, async (_, k) => {
        const id = uniqueId(`c${c}k${k}`);
        if (k % 4 === 0) {
          const outcome = await request(client, { id, requestType: TYPES.countdown, payload: { from: 5, intervalMs: 5 } }, { timeout: 20_000 });
          return { id, stream: true, outcome };
        }
        const outcome = await request(client, { id, requestType: TYPES.echo, payload: { c, k, pad: 'x'.repeat(k * 50) } }, { timeout: 20_000 });
        return { id, stream: false, outcome, payload: { c, k, pad: 'x'.repeat(k * 50) } };
      }),
    ),
  );
  assert.equal(outcomes.length, 400);
  for (const o of outcomes) {
    assertAccepted(o.outcome.ack);
    if (o.stream) {
      const chunks = o.outcome.responses.filter((r) => r.type === 'chunk');
      assert.deepEqual(chunks.map((r) => r.seq), [0, 1, 2, 3, 4], `${o.id}: chunks in order, once each`);
      assert.deepEqual(o.outcome.final, { id: o.id, type: 'result', data: { done: true } });
    } else {
      assert.equal(o.outcome.final?.type, 'result', `${o.id}: ${JSON.stringify(o.outcome.final)}`);
      assert.deepEqual((o.outcome.final as { data: unknown }).data, o.payload, `${o.id}: the echo of its own payload`);
    }
  }
});

e2e('--worker-threads 2: a session request survives a blip and is resumed on the new connection', async (ctx) => {
  const host = await startHost(ctx, { args: ['--worker-threads', '2'], sections: { resume: { window: '20s' } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown]);
  const proxy = await TcpProxy.start(ctx, host.url);
  const client = new ResumingClient(ctx, proxy.url);
  await client.session();

  const id = uniqueId('blip');
  assert.deepEqual(await client.request({ id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 } }), { ok: true });
  const job = await worker.next();
  for (let seq = 0; seq < 20; seq++) await worker.chunk(job, { n: seq }, seq);
  await waitUntil(() => client.seqs(id).length >= 10 || undefined, 10_000, '10 chunks');
  proxy.cut();
  for (let seq = 20; seq < 60; seq++) await worker.chunk(job, { n: seq }, seq);
  await sleep(500);
  proxy.restore();

  await client.session(2);
  const ack = await client.attach(id, client.lastSeq(id));
  assert.equal(ack.ok, true, JSON.stringify(ack));
  for (let seq = 60; seq < 80; seq++) await worker.chunk(job, { n: seq }, seq);
  await worker.result(job, { done: true });
  worker.ack(job);

  await waitUntil(() => client.final(id), 10_000, 'the result');
  assert.deepEqual(client.seqs(id), Array.from({ length: 80 }, (_, i) => i), 'every chunk once, in order');
  assert.deepEqual(client.final(id), { id, type: 'result', data: { done: true } });
});

e2e('--worker-threads auto (the default) says what it runs and why: one thread per available core from 3 cores, one below', async (ctx) => {
  const host = await startHost(ctx);
  const line = runtimeLine(host) ?? '';
  const perCore = line.match(/runtime: (\d+) threads \(multi-thread runtime\): one per core available to this process \((\d+); --worker-threads auto\)/);
  const few = line.match(/runtime: 1 thread \(current-thread runtime\): (\d) core\(s\) available to this process, below 3/);
  assert.ok(perCore || few, `the runtime line: ${line}`);
  // At most the machine's CPUs (fewer under an affinity mask or a cgroup quota).
  const cores = Number(perCore ? perCore[2] : few![1]);
  assert.ok(cores >= 1 && cores <= cpus().length, `${cores} cores of ${cpus().length} CPUs`);
  if (perCore) assert.equal(perCore[1], perCore[2], 'one thread per core');
  else assert.ok(cores < 3);
});
