/**
 * The TypeScript client itself (client/src) against the real host, for what resume.test.ts proves
 * with raw socket.io-client (protocol §4, issue 14's proofs): a stream whose TCP connection is cut
 * at chunk 50 through a proxy the test controls (the client is not told) resumes, and
 * `makeBackendRequest`'s `onChunk` sees every chunk once, in order; a detached task outlives its
 * page — a "reload" is a new client over the same session storage — and the new client lists it
 * with `tasks()` and follows it to the end with `attach()`.
 */

import assert from 'node:assert/strict';

import { createClient, makeBackendRequest, setDefaultClient, type TaskgateClient } from '../../../client/src/index.js';
import { CancelListener, e2e, FakeWorker, sleep, startHost, TYPES, uniqueId, waitUntil, withTimeout, type TestContext } from './harness.js';
import { TcpProxy } from './tcp-proxy.js';

/** A page's sessionStorage, kept across the "reload" of a test (the Web Storage API's subset the client uses). */
class PageStorage {
  private readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

function pageClient(ctx: TestContext, url: string, storage: PageStorage): TaskgateClient {
  const client = createClient({
    url,
    socketOptions: { transports: ['websocket'], reconnectionDelay: 100, reconnectionDelayMax: 300 },
    session: { storage },
  });
  ctx.onCleanup(async () => client.close());
  return client;
}

async function streamingHost(ctx: TestContext) {
  const host = await startHost(ctx, { sections: { resume: { window: '20s' } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown]);
  return { host, worker };
}

e2e('client: makeBackendRequest through a TCP cut at chunk 50, restored 2 s later: onChunk sees 0..199 once each, in order, then the result', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const cancels = await CancelListener.start(ctx);
  const proxy = await TcpProxy.start(ctx, host.url);
  const client = pageClient(ctx, proxy.url, new PageStorage());
  setDefaultClient(client);
  ctx.onCleanup(async () => setDefaultClient(undefined));
  const states: string[] = [];
  client.subscribe((state) => states.push(state));
  await waitUntil(() => client.connectionState === 'connected' || undefined, 10_000, 'the client connects');

  const seen: Array<{ seq: number; n: number }> = [];
  const result = makeBackendRequest<unknown, unknown, { n: number }>(TYPES.countdown, { from: 200, intervalMs: 10 }, {
    onChunk: (data, seq) => seen.push({ seq, n: data.n }),
  });
  const job = await worker.next();
  for (let seq = 0; seq < 60; seq++) await worker.chunk(job, { n: seq }, seq);
  await waitUntil(() => seen.length >= 50 || undefined, 10_000, '50 chunks');

  proxy.cut();
  // The worker goes on while the client is away; what was in flight at the cut is replayed.
  for (let seq = 60; seq < 150; seq++) await worker.chunk(job, { n: seq }, seq);
  await sleep(2000);
  assert.equal(client.connectionState, 'reconnecting', 'the client says reconnecting while the link is down');
  proxy.restore();
  await waitUntil(() => client.connectionState === 'connected' || undefined, 10_000, 'the client reconnects');
  for (let seq = 150; seq < 200; seq++) await worker.chunk(job, { n: seq }, seq);
  await worker.result(job, { done: true });
  worker.ack(job);

  assert.deepEqual(await withTimeout(result, 10_000, 'the result'), { done: true });
  const all = Array.from({ length: 200 }, (_, i) => i);
  assert.deepEqual(seen.map((c) => c.seq), all, 'every seq once, in order');
  assert.deepEqual(seen.map((c) => c.n), all, 'every chunk’s data once, in order');
  assert.equal(cancels.find(job.correlationId!), undefined, 'the worker was not told to stop');
  assert.ok(states.includes('reconnecting'), `went through reconnecting: ${states.join(', ')}`);
});

e2e('client: a detached request outlives its page; after a "reload" tasks() lists it with progress and attach() follows it to the end', async (ctx) => {
  const { host, worker } = await streamingHost(ctx);
  const storage = new PageStorage();
  const first = pageClient(ctx, host.url, storage);
  const id = uniqueId('reload');
  const firstSeen: number[] = [];
  const firstResult = first.request(TYPES.countdown, { from: 20, intervalMs: 10 }, { id, detach: true, onChunk: (_d: unknown, seq: number) => firstSeen.push(seq) });
  firstResult.catch(() => undefined);
  const job = await worker.next();
  for (let seq = 0; seq < 10; seq++) await worker.chunk(job, { n: seq }, seq);
  await waitUntil(() => firstSeen.length >= 10 || undefined, 5000, 'ten chunks on the first page');

  // The page goes away (its client closes its socket), the worker goes on.
  first.close();
  for (let seq = 10; seq < 15; seq++) await worker.chunk(job, { n: seq }, seq);
  await sleep(200);

  const second = pageClient(ctx, host.url, storage);
  const tasks = await withTimeout(second.tasks(), 5000, 'the task list');
  const task = tasks.find((t) => t.id === id);
  assert.ok(task, `the task is listed after the reload: ${JSON.stringify(tasks)}`);
  assert.equal(task.requestType, TYPES.countdown);
  assert.equal(task.state, 'running');
  assert.equal(task.lastSeq, 14, 'with its progress');
  assert.deepEqual(task.lastChunk, { n: 14 });

  const secondSeen: number[] = [];
  const attached = second.attach(id, { afterSeq: 9, onChunk: (_d, seq) => secondSeen.push(seq) });
  await waitUntil(() => secondSeen.length >= 5 || undefined, 5000, 'the chunks the first page missed');
  for (let seq = 15; seq < 20; seq++) await worker.chunk(job, { n: seq }, seq);
  await worker.result(job, { done: true });
  worker.ack(job);
  assert.deepEqual(await withTimeout(attached, 5000, 'the result through attach'), { done: true });
  assert.deepEqual(secondSeen, Array.from({ length: 10 }, (_, i) => 10 + i), 'chunks 10..19 once each, in order');
  const after = await withTimeout(second.tasks(), 5000, 'the task list at the end');
  assert.equal(after.find((t) => t.id === id)?.state, 'succeeded', 'the list says succeeded');
  assert.equal(worker.received.length, 1, 'the worker ran it once');
});
