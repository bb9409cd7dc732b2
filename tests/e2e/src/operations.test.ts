/**
 * The operator's view of one host: `GET /metrics` (Prometheus text format) whose counters
 * move with the traffic, JSON logs whose lines about a request carry its correlation id and
 * trace context, and the W3C `traceparent` of protocol §3.10 — taken from the client's
 * envelope (or started by the host) and forwarded to workers in the AMQP header
 * `traceparent`, where the Rust worker SDK puts it on its log lines.
 */

import assert from 'node:assert/strict';

import {
  assertAccepted,
  assertErrorResponse,
  assertRefused,
  connect,
  e2e,
  FakeWorker,
  PLUGINS_DIR,
  pluginFiles,
  request,
  startHost,
  startWorkers,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';
import { metric, scrape } from './prometheus.js';

const CLIENT_TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_TRACEPARENT = `00-${CLIENT_TRACE_ID}-00f067aa0ba902b7-01`;
const TRACEPARENT_RE = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

e2e('GET /metrics: Prometheus text whose counters and gauges follow the traffic', async (ctx) => {
  const host = await startHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);

  const before = await scrape(host);
  assert.match(before, /# TYPE taskgate_requests_total counter/);
  assert.equal(metric(before, 'taskgate_broker_connected'), 1);
  assert.equal(metric(before, 'taskgate_connected_sockets'), 1);
  assert.equal(metric(before, 'taskgate_plugin_loads_total', { outcome: 'loaded' }), pluginFiles(PLUGINS_DIR).length);
  assert.equal(metric(before, 'taskgate_plugin_info', { plugin: 'echo' }), 1, 'the echo plugin serves');
  assert.equal(metric(before, 'taskgate_requests_total') ?? 0, 0);

  // ok, with two chunks
  const ok = uniqueId();
  const pending = request(client, { id: ok, requestType: TYPES.echo, payload: 'x' });
  const received = await worker.next();
  // In flight: the gauge says so.
  await waitUntil(async () => metric(await scrape(host), 'taskgate_requests_in_flight') === 1, 5000, 'in flight = 1');
  await worker.chunk(received, 'a', 0);
  await worker.chunk(received, 'b', 1);
  await worker.result(received, 'done');
  assertAccepted((await pending).ack);
  // a worker error with its own code
  const failing = uniqueId();
  const failed = request(client, { id: failing, requestType: TYPES.echo, payload: 'y' });
  await worker.error(await worker.next(), { code: 'NOT_FOUND', message: 'no such thing' });
  assertErrorResponse((await failed).final, 'NOT_FOUND');
  // cancelled
  const cancelled = uniqueId();
  assertAccepted(await client.request({ id: cancelled, requestType: TYPES.echo, payload: 'z' }));
  await worker.next();
  client.cancel(cancelled);
  assertErrorResponse(await client.final(cancelled), 'CANCELLED');
  // refusals: unknown type (its name is not a label value), invalid payload
  assertRefused(await client.request({ id: uniqueId(), requestType: `no.such.type.${ctx.runId}`, payload: {} }), 'UNKNOWN_REQUEST_TYPE');
  assertRefused(await client.request({ id: uniqueId(), requestType: TYPES.wordcount, payload: { text: 7 } }), 'INVALID_PAYLOAD');

  const after = await scrape(host);
  const total = (request_type: string, outcome: string) => metric(after, 'taskgate_requests_total', { request_type, outcome });
  assert.equal(total(TYPES.echo, 'ok'), 1, after);
  assert.equal(total(TYPES.echo, 'not_found'), 1, after);
  assert.equal(total(TYPES.echo, 'cancelled'), 1, after);
  assert.equal(total('_unknown', 'unknown_request_type'), 1, after);
  assert.equal(total(TYPES.wordcount, 'invalid_payload'), 1, after);
  assert.ok(!after.includes(`no.such.type.${ctx.runId}`), 'client input never becomes a label');
  assert.equal(metric(after, 'taskgate_chunks_relayed_total', { request_type: TYPES.echo }), 2);
  assert.equal(metric(after, 'taskgate_request_duration_seconds_count', { request_type: TYPES.echo }), 3);
  assert.equal(metric(after, 'taskgate_request_duration_seconds_bucket', { request_type: TYPES.echo, le: '+Inf' }), 3);
  assert.equal(metric(after, 'taskgate_requests_in_flight'), 0);

  client.close();
  await waitUntil(async () => metric(await scrape(host), 'taskgate_connected_sockets') === 0, 5000, 'no sockets');
});

e2e(
  'traceparent: the client\'s trace is forwarded to the worker (host span of its own), an invalid one is replaced, and JSON log lines carry it',
  async (ctx) => {
    const host = await startHost(ctx, { args: ['--log-format', 'json'] });
    const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
    const client = await connect(ctx, host.url);

    // A valid client trace: same trace id and flags, the host's own parent id.
    const traced = uniqueId();
    const pending = request(client, { id: traced, requestType: TYPES.echo, payload: 1, traceparent: CLIENT_TRACEPARENT } as never);
    const r1 = await worker.next();
    const forwarded = String(r1.headers.traceparent);
    const m = forwarded.match(TRACEPARENT_RE);
    assert.ok(m, `the worker gets a valid traceparent header: ${forwarded}`);
    assert.equal(m[1], CLIENT_TRACE_ID, 'the client\'s trace id');
    assert.notEqual(m[2], '00f067aa0ba902b7', 'the parent id is the host\'s span');
    assert.equal(m[3], '01');
    await worker.result(r1, 'traced');
    assert.deepEqual((await pending).ack, { ok: true }, 'the ack is unchanged');

    // An invalid one (uppercase hex) is ignored — not refused — and a new trace starts,
    // named after the correlation id; the same without any.
    for (const traceparent of [CLIENT_TRACEPARENT.toUpperCase(), undefined, 42]) {
      const id = uniqueId();
      const p = request(client, { id, requestType: TYPES.echo, payload: 2, traceparent } as never);
      const r = await worker.next();
      const tp = String(r.headers.traceparent).match(TRACEPARENT_RE);
      assert.ok(tp, `a new valid traceparent: ${String(r.headers.traceparent)}`);
      assert.equal(tp[1], r.correlationId.replaceAll('-', ''), 'a new trace is named after the correlation id');
      await worker.result(r, 'ok');
      assertAccepted((await p).ack);
    }

    // Every host log line is JSON; the lines about the traced request carry its
    // correlation id and the forwarded traceparent. (The log arrives through a pipe: wait
    // for the "finished" line.)
    await host.proc.waitForLine(new RegExp(`request finished.*${r1.correlationId}`), 5000);
    const entries = host.logs().map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        assert.fail(`a log line that is not JSON: ${line}`);
      }
    });
    const about = entries.filter((e) => e.correlation_id === r1.correlationId);
    assert.ok(about.length >= 2, `admitted and finished lines for ${r1.correlationId}: ${JSON.stringify(about)}`);
    for (const entry of about) {
      assert.equal(entry.traceparent, forwarded, `traceparent on ${JSON.stringify(entry)}`);
      assert.equal(typeof entry.message, 'string');
      assert.ok(entry.timestamp && entry.level, 'timestamp and level');
    }
  },
);

e2e('traceparent reaches the real Rust worker, whose log lines of the request carry it', async (ctx) => {
  const host = await startHost(ctx);
  const workers = await startWorkers(ctx, host.queues, {
    only: [TYPES.echo],
    env: { TASKGATE_LOG: 'info,taskgate_worker=debug,lapin=warn' },
  });
  const client = await connect(ctx, host.url);
  const id = uniqueId();
  const outcome = await request(client, { id, requestType: TYPES.echo, payload: { hello: 1 }, traceparent: CLIENT_TRACEPARENT } as never);
  assertAccepted(outcome.ack);
  assert.deepEqual(outcome.final?.data, { hello: 1 });
  // The host logs the traceparent it forwarded with the request's correlation id ...
  const hostLine = host.logs().find((l) => l.includes('request admitted') && l.includes(`00-${CLIENT_TRACE_ID}-`));
  assert.ok(hostLine, `the host's line carries the trace:\n${host.logs().join('\n')}`);
  const forwarded = hostLine.match(/traceparent=(\S+)/)![1];
  const correlationId = hostLine.match(/correlation_id=(\S+)/)![1];
  // ... and the worker's lines of that request carry the same two.
  await workers.waitForLine(/final reply/, 10_000);
  const workerLine = workers.lines.find((l) => l.includes('final reply'))!;
  assert.ok(workerLine.includes(`traceparent=${forwarded}`), `${forwarded} in ${workerLine}`);
  assert.ok(workerLine.includes(`correlation_id=${correlationId}`), `${correlationId} in ${workerLine}`);
});
