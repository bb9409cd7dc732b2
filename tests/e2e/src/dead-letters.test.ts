/**
 * Poison messages (protocol §3.11): a request its workers crash on is delivered at most
 * `delivery_limit` times (3 by default), then dead-lettered — kept in the dead-letter queue for
 * operators — and its client gets a final `WORKER_ERROR` at once, not at its deadline. The
 * other requests on the queue are not held up. `taskgate dead-letters` lists, shows, requeues
 * and purges what the queue holds.
 *
 * The crashing worker is a real process that exits on a marked payload — on raw amqplib
 * (`fixtures/crashing-worker.mjs`) and on the Rust SDK (`taskgate-crashing-worker`,
 * tests/fixtures/workers/crashing); the test restarts it after every crash, as an orchestrator
 * would. The Python and Node SDKs have the same proof in their own integration suites
 * (workers/python/tests/integration/test_dead_letters.py, workers/node/test/integration/dead-letters.test.ts).
 */

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  AMQP_URL,
  connect,
  e2e,
  FakeWorker,
  Proc,
  REPO_ROOT,
  request,
  runHostCli,
  sleep,
  startHost,
  startWorkers,
  type TestContext,
  TYPES,
  uniqueId,
  UUID_RE,
  waitUntil,
} from './harness.js';
import { metric, scrape } from './prometheus.js';

const CRASHING_WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures/crashing-worker.mjs');
const CRASHING_RUST_WORKER =
  process.env.TASKGATE_CRASHING_WORKER_BIN ?? path.join(REPO_ROOT, 'target/debug/taskgate-crashing-worker');

/** A crashing worker's command line: `[program, ...args]` for `queue` and `mark`. */
type CrashingWorkerCommand = (queue: string, mark: string) => [string, ...string[]];

/** The raw amqplib worker of `fixtures/crashing-worker.mjs`. */
const rawAmqplibWorker: CrashingWorkerCommand = (queue, mark) => [process.execPath, CRASHING_WORKER, AMQP_URL, queue, mark];

/** `taskgate-crashing-worker` (tests/fixtures/workers/crashing): the same worker on the Rust SDK. */
const rustSdkWorker: CrashingWorkerCommand = (queue, mark) => [CRASHING_RUST_WORKER, AMQP_URL, queue, mark];

/**
 * Keeps one crashing worker running on `queue`, restarting it after each crash; records when
 * each crash happened.
 */
function superviseCrashingWorker(ctx: TestContext, queue: string, mark: string, command: CrashingWorkerCommand = rawAmqplibWorker) {
  const crashes: number[] = [];
  let stopped = false;
  let current: Proc | undefined;
  let started = 0;
  const procs: Proc[] = [];
  const [program, ...args] = command(queue, mark);
  if (!existsSync(program)) throw new Error(`${program} is missing: cargo build --workspace --bins`);
  const loop = (async () => {
    while (!stopped) {
      const proc = new Proc(`crashing-worker${++started}`, program, args, { ...process.env, RUST_LOG: 'info' });
      ctx.procs.push(proc);
      procs.push(proc);
      current = proc;
      const info = await proc.exited;
      if (stopped) break;
      assert.equal(info.code, 3, `the worker exits only by crashing on the mark (${JSON.stringify(info)}): ${proc.lines.join('\n')}`);
      crashes.push(Date.now());
    }
  })();
  return {
    crashes,
    procs,
    async stop() {
      stopped = true;
      await current?.stop();
      await loop;
    },
  };
}

/** The request timeout of the crash proofs: the client must hear long before it. */
const CRASH_PROOF_TIMEOUT_MS = 60_000;

/**
 * The crash proof (issue 16): a host with `echo` on a quorum queue (delivery limit 3), one
 * worker of `command` restarted after each crash, a marked request sent with 10 unmarked ones.
 * Asserts that the marked one ends `WORKER_ERROR` / `deliveryLimit` after exactly 3 crashes,
 * within a small part of its timeout after the third, and that the others all succeed.
 */
async function crashProof(ctx: TestContext, command: CrashingWorkerCommand) {
  const host = await startHost(ctx, {
    plugins: { wordcount: false, countdown: false, echo: { timeout_ms: CRASH_PROOF_TIMEOUT_MS } },
  });
  const queue = host.queues[TYPES.echo];
  const mark = `poison-${ctx.runId}`;
  const worker = superviseCrashingWorker(ctx, queue, mark, command);
  const client = await connect(ctx, host.url);

  const poisonId = uniqueId('poison');
  const started = Date.now();
  const timeout = CRASH_PROOF_TIMEOUT_MS + 5_000;
  const poison = request(client, { id: poisonId, requestType: TYPES.echo, payload: { text: mark } }, { timeout });
  const innocents = Array.from({ length: 10 }, (_, i) => {
    const id = uniqueId(`ok${i}`);
    return request(client, { id, requestType: TYPES.echo, payload: { n: i } }, { timeout }).then((o) => ({ id, i, o }));
  });

  const outcome = await poison;
  const answeredAt = Date.now();
  const error = outcome.final?.error;
  assert.equal(outcome.final?.type, 'error', `the poison request ends with an error: ${JSON.stringify(outcome.final)}`);
  assert.equal(error?.code, 'WORKER_ERROR');
  assert.match(error!.message, /delivered to workers 3 times/);
  const details = error!.details as Record<string, unknown>;
  assert.equal(details.reason, 'deliveryLimit');
  assert.equal(details.deliveries, 3);
  assert.equal(details.deadLetterQueue, ctx.deadLetterQueue);
  const deadLetterId = details.deadLetterId as string;
  assert.match(deadLetterId, UUID_RE, 'the request message\'s correlation id');
  // The broker may see the third worker's connection drop (and the host answer) before this
  // process reaps the child: give the supervisor a moment to record the crash.
  await waitUntil(() => worker.crashes.length >= 3 || undefined, 5_000, 'the third crash to be recorded');
  assert.equal(worker.crashes.length, 3, `the worker crashed once per delivery: ${worker.crashes.length}`);
  const afterThirdCrash = answeredAt - worker.crashes[2];
  ctx.note(`the client had its error ${afterThirdCrash} ms after the third crash, ${answeredAt - started} ms after sending`);
  // Not a tight timing (the machine is shared): a tenth of the timeout is "at once" next to it.
  assert.ok(
    afterThirdCrash < CRASH_PROOF_TIMEOUT_MS / 10,
    `the client is told within seconds of the third crash (${afterThirdCrash} ms), not at its ${CRASH_PROOF_TIMEOUT_MS} ms timeout`,
  );

  for (const { id, i, o } of await Promise.all(innocents)) {
    assert.deepEqual(o.final, { id, type: 'result', data: { n: i } }, 'every other request succeeds');
  }
  assert.equal(metric(await scrape(host), 'taskgate_dead_letters_total', { request_type: TYPES.echo }), 1);
  return { host, queue, mark, worker, deadLetterId, afterThirdCrash };
}

e2e('poison messages: a request its workers crash on reaches the dead-letter queue after 3 deliveries, its client gets WORKER_ERROR at once, the others succeed; dead-letters list/show/requeue/purge', async (ctx) => {
  const { host, queue, mark, worker, deadLetterId } = await crashProof(ctx, rawAmqplibWorker);

  // The operators' view.
  const cli = (...args: string[]) => runHostCli(ctx, ['dead-letters', ...args, '--config', host.configPath]);
  const listed = await cli('list');
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, new RegExp(`^1 dead letters in \`${ctx.deadLetterQueue}\``));
  assert.match(listed.stdout, new RegExp(`${deadLetterId}\\s+echo\\s+${queue}\\s+3 deliveries, delivery_limit`));
  const shown = await cli('show', deadLetterId);
  assert.equal(shown.code, 0, shown.stderr);
  assert.ok(shown.stdout.includes(mark), `show prints the payload:\n${shown.stdout}`);
  assert.match(shown.stdout, /x-deadline-ms/, 'and the request\'s headers');
  const missing = await cli('show', 'no-such-id');
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no dead letter with id `no-such-id`/);

  // "The worker is fixed": the request runs again, with a fresh deadline.
  await worker.stop();
  const fixed = await FakeWorker.start(ctx, queue);
  const requeued = await cli('requeue', deadLetterId);
  assert.equal(requeued.code, 0, requeued.stderr);
  assert.match(requeued.stdout, new RegExp(`sent dead letter ${deadLetterId} back to \`${queue}\``));
  const again = await fixed.next(10_000);
  assert.equal(again.correlationId, deadLetterId);
  assert.deepEqual(again.json(), { text: mark });
  assert.equal(again.properties.expiration, '60000', 'the request type\'s timeout again');
  assert.ok((again.headers['x-deadline-ms'] as number) > Date.now() + 50_000, 'a fresh deadline');
  assert.equal(again.headers['x-death'], undefined, 'RabbitMQ\'s death headers are gone');
  await fixed.result(again, { text: 'fixed' });
  fixed.ack(again);
  const empty = await cli('list');
  assert.match(empty.stdout, /^0 dead letters/);

  // purge deletes whatever the queue holds.
  const ch = await ctx.channel();
  ch.sendToQueue(ctx.deadLetterQueue, Buffer.from('{}'), { correlationId: 'by-hand' });
  await ch.close();
  await sleep(200);
  const purged = await cli('purge');
  assert.equal(purged.code, 0, purged.stderr);
  assert.match(purged.stdout, /deleted 1 dead letters/);
}, { timeout: 90_000 });

e2e('poison messages with the Rust SDK: a worker that exits its process on a marked request, restarted after each crash — dead-lettered after 3 deliveries, its client told at once, the others succeed; requeued to the fixed worker, whose outcome the host logs', async (ctx) => {
  const { host, queue, worker, deadLetterId } = await crashProof(ctx, rustSdkWorker);
  assert.ok(
    worker.procs.every((p) => p.lines.some((l) => l.includes('worker ready'))),
    'every crashing worker ran the SDK to the point of consuming',
  );

  // "The worker is fixed": the example workers (the same SDK) run the request sent back.
  // Its client already had its final error, so nobody waits for it: the host that gets the
  // reply logs the outcome and drops it.
  await worker.stop();
  await startWorkers(ctx, { [TYPES.echo]: queue }, { only: [TYPES.echo] });
  const requeued = await runHostCli(ctx, ['dead-letters', 'requeue', deadLetterId, '--config', host.configPath]);
  assert.equal(requeued.code, 0, requeued.stderr);
  const logged = await host.proc.waitForLine(new RegExp(`^(?=.*correlation_id=${deadLetterId})(?=.*final reply of a request nobody here waits for)`), 15_000);
  assert.match(logged.input ?? '', /kind="?result/, `the outcome is logged: ${logged[0]}`);
  const listed = await runHostCli(ctx, ['dead-letters', 'list', '--config', host.configPath]);
  assert.match(listed.stdout, /^0 dead letters/);
}, { timeout: 120_000 });

e2e('poison messages: delivery_limit from plugins.toml; an expired request is not a dead letter', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { wordcount: false, countdown: false, echo: { delivery_limit: 1, timeout_ms: 1_000 } },
  });
  const queue = host.queues[TYPES.echo];
  const client = await connect(ctx, host.url);

  // Nobody consumes: the request expires in its queue; its client gets TIMEOUT, and the
  // dead-letter queue stays empty.
  const expired = await request(client, { id: uniqueId('exp'), requestType: TYPES.echo, payload: 1 }, { timeout: 5_000 });
  assert.equal(expired.final?.error?.code, 'TIMEOUT');
  await sleep(500);

  // With a limit of 1, the first worker that dies with the request dead-letters it.
  const doomed = await FakeWorker.start(ctx, queue);
  const pending = request(client, { id: uniqueId('once'), requestType: TYPES.echo, payload: 2 }, { timeout: 5_000 });
  await doomed.next();
  await doomed.close();
  const outcome = await pending;
  assert.equal(outcome.final?.error?.code, 'WORKER_ERROR');
  assert.equal((outcome.final?.error?.details as Record<string, unknown>).deliveries, 1);

  const listed = await runHostCli(ctx, ['dead-letters', 'list', '--config', host.configPath]);
  assert.match(listed.stdout, /^1 dead letters/, 'only the poison request, not the expired one');
});
