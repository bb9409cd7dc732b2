/**
 * No silent timeouts (issue 19, protocol §3.1): a request type whose queue nobody consumes is
 * refused `UNAVAILABLE` within a second — `details: { reason: "noConsumers", requestType, queue }` —
 * instead of waiting for its `TIMEOUT`; `/readyz` (still 200) lists it, the log says so once,
 * `taskgate_request_type_consumers` is 0, and a worker that starts later is served at once.
 * With `when_no_workers = "queue"` the request waits in the queue for a worker instead.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertRefused,
  connect,
  e2e,
  FakeWorker,
  request,
  runHostCli,
  startHost,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';
import { metric, scrape } from './prometheus.js';

interface Readyz {
  ready: boolean;
  noConsumers: { requestType: string; queue: string; whenNoWorkers: string }[];
  warnings: string[];
}

e2e('a type nobody serves is refused UNAVAILABLE (noConsumers) within a second; a worker that starts later is served', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { echo: { when_no_workers: 'fail', timeout_ms: 30_000 }, countdown: false },
  });
  const queue = host.queues[TYPES.echo];
  // `text.wordcount` keeps the host's suite default ("queue"), and gets a worker: it never shows.
  await FakeWorker.start(ctx, host.queues[TYPES.wordcount]);

  // The host notices within a few looks (every 2 s, three in a row) and says so, ready all along.
  let readyz: { status: number; body: unknown } | undefined;
  await waitUntil(
    async () => {
      readyz = await host.readyz();
      return (readyz.body as Readyz).noConsumers?.length > 0;
    },
    15_000,
    '/readyz to list the type nobody serves',
  );
  assert.equal(readyz!.status, 200, 'a type without workers does not make the host unready');
  const body = readyz!.body as Readyz;
  assert.equal(body.ready, true);
  assert.deepEqual(body.noConsumers, [{ requestType: TYPES.echo, queue, whenNoWorkers: 'fail' }]);
  assert.match(body.warnings[0], new RegExp(`no worker consumes queue \`${queue}\``));
  const warned = host.proc.lines.filter((l) => l.includes('WARN') && l.includes(`no worker consumes queue \`${queue}\``));
  assert.equal(warned.length, 1, 'one WARN line for the type');
  assert.equal(metric(await scrape(host), 'taskgate_request_type_consumers', { request_type: TYPES.echo }), 0);

  // Answered within a second, naming the type and its queue.
  const client = await connect(ctx, host.url);
  const started = Date.now();
  const ack = await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 'anyone?' }, 5_000);
  const elapsed = Date.now() - started;
  const error = assertRefused(ack, 'UNAVAILABLE', 'a request nobody would take');
  assert.ok(elapsed < 1_000, `answered within a second (took ${elapsed} ms)`);
  assert.deepEqual(error.details, { reason: 'noConsumers', requestType: TYPES.echo, queue });
  assert.match(error.message, /no worker serves request type `echo`/);

  // `taskgate plugins` shows it too.
  const report = await runHostCli(ctx, ['plugins', '--config', host.configPath]);
  assert.match(report.stdout, new RegExp(`echo\\s+queue ${queue}\\s+NONE`));
  assert.match(report.stdout, new RegExp(`text\\.wordcount\\s+queue ${host.queues[TYPES.wordcount]}\\s+1 consumer`));

  // A worker starts: the very next request is served (it looks again before any refusal).
  const worker = await FakeWorker.start(ctx, queue);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'now' });
  const received = await worker.next();
  await worker.result(received, 'served');
  const outcome = await pending;
  assertAccepted(outcome.ack, 'a request right after the worker started');
  assert.deepEqual(outcome.final, { id, type: 'result', data: 'served' });
  await waitUntil(
    () => host.proc.lines.some((l) => l.includes('INFO') && l.includes(`queue \`${queue}\` has a worker again`)),
    10_000,
    'one INFO line once the type is served again',
  );
  assert.deepEqual(((await host.readyz()).body as Readyz).noConsumers, []);
});

e2e('when_no_workers = "queue": a request to a type nobody serves waits for a worker that starts later', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { echo: { when_no_workers: 'queue' }, wordcount: false, countdown: false },
  });
  const queue = host.queues[TYPES.echo];
  await waitUntil(
    async () => ((await host.readyz()).body as Readyz).noConsumers?.length > 0,
    15_000,
    '/readyz to list the type nobody serves',
  );
  assert.deepEqual(((await host.readyz()).body as Readyz).noConsumers, [
    { requestType: TYPES.echo, queue, whenNoWorkers: 'queue' },
  ]);
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const pending = request(client, { id, requestType: TYPES.echo, payload: 'later' }, { timeout: 15_000 });
  const worker = await FakeWorker.start(ctx, queue);
  const received = await worker.next();
  await worker.result(received, received.json());
  const outcome = await pending;
  assertAccepted(outcome.ack);
  assert.deepEqual(outcome.final, { id, type: 'result', data: 'later' });
});
