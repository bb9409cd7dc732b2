/**
 * The operator console (issue 15) against real hosts, RabbitMQ and workers: hosts find each
 * other through the `taskgate.hosts` heartbeat (protocol §2.6), a queue's consumer count
 * follows a worker starting and stopping, and a cancel from the console ends the client's
 * request with CANCELLED and tells workers. The tests reach the console from loopback, which
 * is all `[auth] mode = "none"` lets in.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertErrorResponse,
  CancelListener,
  connect,
  e2e,
  FakeWorker,
  startHost,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';

const CONSOLE = { console: { enabled: true } };

interface Overview {
  host: { id: string; requestTypes: { name: string; queue: string }[] };
  hosts: { id: string; gone: boolean }[];
  queues: { queue: string; ready: number; consumers: number; alarm: boolean }[];
}

async function overview(url: string): Promise<Overview> {
  const res = await fetch(`${url}/console/api/overview`);
  assert.equal(res.status, 200, `${url}/console/api/overview answers ${res.status}`);
  assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'/);
  return (await res.json()) as Overview;
}

e2e('console: two hosts see each other; a queue\'s consumers follow a worker starting and stopping', async (ctx) => {
  const a = await startHost(ctx, { name: 'hostA', sections: CONSOLE });
  const b = await startHost(ctx, { name: 'hostB', sections: CONSOLE });
  const idA = (await overview(a.url)).host.id;
  const idB = (await overview(b.url)).host.id;
  for (const [host, other] of [
    [a, idB],
    [b, idA],
  ] as const) {
    await waitUntil(
      async () => ((await overview(host.url)).hosts.some((h) => h.id === other && !h.gone) ? true : undefined),
      10_000,
      `${host.name} to show the other host`,
    );
  }

  const queue = a.queues[TYPES.echo];
  const look = async () => (await overview(a.url)).queues.find((q) => q.queue === queue);
  await waitUntil(async () => ((await look())?.consumers === 0 ? true : undefined), 12_000, 'no consumers at first');
  assert.equal((await look())?.alarm, true, 'a queue without workers is an alarm');
  const worker = await FakeWorker.start(ctx, queue);
  await waitUntil(async () => ((await look())?.consumers === 1 ? true : undefined), 12_000, 'the worker to show');
  assert.equal((await look())?.alarm, false);
  await worker.close();
  await waitUntil(async () => ((await look())?.consumers === 0 ? true : undefined), 12_000, 'the worker to be gone');
});

e2e('console: a cancel from the console ends the client\'s request with CANCELLED and tells workers', async (ctx) => {
  const host = await startHost(ctx, { sections: CONSOLE });
  const cancels = await CancelListener.start(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  assertAccepted(await client.request({ id, requestType: TYPES.echo, payload: {} }));
  const received = await worker.next();

  const res = await fetch(`${host.url}/console/api/cancel`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ correlationId: received.correlationId }),
  });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { correlationId: received.correlationId, heldHere: true });
  assertErrorResponse(await client.final(id, 5000), 'CANCELLED');
  await cancels.waitFor(received.correlationId!);
  assert.ok(
    host.logs().some((line) => line.includes('request cancelled by an operator')),
    'the action is logged',
  );
});

e2e('console: dead letters are listed, one is sent back to its queue, the rest purged, each logged with its operator', async (ctx) => {
  const host = await startHost(ctx, { sections: CONSOLE });
  const queue = host.queues[TYPES.echo];
  const worker = await FakeWorker.start(ctx, queue);
  // Two dead letters as RabbitMQ leaves them (the death headers name the queue they came from).
  const ids = [crypto.randomUUID(), crypto.randomUUID()];
  const channel = await ctx.channel();
  for (const id of ids) {
    channel.sendToQueue(ctx.deadLetterQueue, Buffer.from(JSON.stringify({ text: `<b>${id}</b>` })), {
      correlationId: id,
      type: TYPES.echo,
      contentType: 'application/json',
      headers: { 'x-first-death-reason': 'delivery_limit', 'x-first-death-queue': queue },
    });
  }
  await channel.close();

  const api = (path: string, body?: unknown) =>
    fetch(`${host.url}/console/api/${path}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const listing = await waitUntil(
    async () => {
      const json = (await (await api('dead-letters')).json()) as { total: number; deadLetters: { id: string; queue: string; payload: string }[] };
      return json.total === 2 ? json : undefined;
    },
    10_000,
    'both dead letters listed',
  );
  assert.deepEqual(listing.deadLetters.map((d) => d.id), ids);
  assert.equal(listing.deadLetters[0]!.queue, queue);
  assert.equal(listing.deadLetters[0]!.payload, JSON.stringify({ text: `<b>${ids[0]}</b>` }));

  const requeued = await api('dead-letters/requeue', { id: ids[0] });
  assert.equal(requeued.status, 200);
  assert.deepEqual(await requeued.json(), { requeued: ids[0], queue });
  assert.equal((await worker.next()).correlationId, ids[0], 'a worker gets it again');
  const missing = await api('dead-letters/requeue', { id: ids[0] });
  assert.equal(missing.status, 502);
  assert.match(((await missing.json()) as { error: string }).error, /no dead letter/);

  const purged = await api('dead-letters/purge', {});
  assert.deepEqual(await purged.json(), { purged: 1 });
  assert.equal(((await (await api('dead-letters')).json()) as { total: number }).total, 0);
  for (const said of ['a dead letter sent back to its queue', 'the dead letters purged']) {
    assert.ok(
      host.logs().some((line) => line.includes(said) && line.includes('anonymous@127.0.0.1')),
      `"${said}" logged with its operator`,
    );
  }
});
