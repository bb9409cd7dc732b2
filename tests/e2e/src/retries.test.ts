/**
 * Retries with backoff (protocol §3.12), through the real host, RabbitMQ and the Rust SDK's
 * example worker: plugins.toml gives `echo` a retry policy, which the host sends as `x-retry`;
 * the echo handler's `retryableFailures: n` fails attempts 1 to n retryably. The worker
 * waits in a wait queue (`<queue>.retry.<delay>`, a TTL that dead-letters back), not in a
 * handler, and the client hears of nothing but the outcome.
 */

import assert from 'node:assert/strict';

import { connect, e2e, request, startHost, startWorkers, TYPES, uniqueId } from './harness.js';
import { metric, scrape } from './prometheus.js';

e2e('retries: a handler that fails retryably twice, then succeeds — the client gets the result; the worker saw 3 attempts with the declared backoff between them', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { wordcount: false, countdown: false, echo: { retry: { attempts: 3, backoff: 'exponential', delay_ms: 300 } } },
  });
  const queue = host.queues[TYPES.echo];
  for (const delay of [300, 600]) ctx.queues.add(`${queue}.retry.${delay}`);
  const worker = await startWorkers(ctx, host.queues, { only: [TYPES.echo] });
  const client = await connect(ctx, host.url);

  const id = uniqueId();
  const payload = { retryableFailures: 2, text: 'third time lucky' };
  const started = Date.now();
  const outcome = await request(client, { id, requestType: TYPES.echo, payload }, { timeout: 20_000 });
  const took = Date.now() - started;
  assert.deepEqual(outcome.final, { id, type: 'result', data: payload }, 'the client gets the result, and nothing before it');
  assert.deepEqual(outcome.responses.map((r) => r.type), ['result']);

  const scheduled = worker.lines.filter((l) => l.includes('attempt failed retryably; the next one is scheduled'));
  assert.equal(scheduled.length, 2, `two retries scheduled:\n${scheduled.join('\n')}`);
  assert.match(scheduled[0], /attempt=1 .*next_attempt=2 delay_ms=300/);
  assert.match(scheduled[1], /attempt=2 .*next_attempt=3 delay_ms=600/);
  ctx.note(`the request took ${took} ms with 300 + 600 ms of backoff`);
  assert.ok(took >= 900, `the backoff was waited (${took} ms)`);
  // The worker told the host of each retry (a notice, never relayed): counted per type.
  assert.equal(metric(await scrape(host), 'taskgate_retries_total', { request_type: TYPES.echo }), 2);
  // The waiting happened in the wait queues, which the worker declared.
  for (const delay of [300, 600]) {
    assert.ok((await ctx.tryOnChannel((ch) => ch.checkQueue(`${queue}.retry.${delay}`))).ok, `wait queue of ${delay} ms`);
  }
}, { timeout: 60_000 });

e2e('retries: no attempt starts after the deadline — the client gets the last error before its TIMEOUT', async (ctx) => {
  const host = await startHost(ctx, {
    plugins: { wordcount: false, countdown: false, echo: { timeout_ms: 1_500, retry: { attempts: 5, delay_ms: 1_000 } } },
  });
  ctx.queues.add(`${host.queues[TYPES.echo]}.retry.1000`);
  const worker = await startWorkers(ctx, host.queues, { only: [TYPES.echo] });
  const client = await connect(ctx, host.url);

  const id = uniqueId();
  const started = Date.now();
  const outcome = await request(client, { id, requestType: TYPES.echo, payload: { retryableFailures: 5 } }, { timeout: 10_000 });
  const took = Date.now() - started;
  assert.equal(outcome.final?.type, 'error');
  assert.equal(outcome.final?.error?.code, 'FLAKY', `the last error, not TIMEOUT: ${JSON.stringify(outcome.final)}`);
  assert.match(outcome.final!.error!.message, /attempt 2 fails/);
  assert.ok(took < 1_500, `answered before the deadline (${took} ms)`);
  assert.ok(worker.lines.some((l) => l.includes('gets no further attempt')), 'the worker says why it stopped');
});
