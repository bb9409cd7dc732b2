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
