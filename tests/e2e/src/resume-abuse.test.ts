/**
 * Abuse of what sessions keep (issue 14's abuse proof; protocol §4.3, README "Long-running tasks"): one
 * owner trying 10,000 detached tasks stays within `[resume] max_tasks` — every refusal a
 * `RATE_LIMITED` with `details.limit` "tasks" — and the host's memory stays bounded (its RSS from
 * /proc, printed for docs/performance.md); the gauges of parked requests, kept outcomes and kept
 * bytes say what the host holds. A session's client that never reads is dropped by its backlog
 * limit like any other (protocol §3.9), and its requests then park within `[resume] request_bytes` each.
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { io } from 'socket.io-client';

import { CancelListener, e2e, FakeWorker, startHost, TYPES, uniqueId, waitUntil, type Host, type Received } from './harness.js';
import { metric, scrape } from './prometheus.js';
import { RawSocket } from './raw.js';

function rssKiB(host: Host): number {
  const status = readFileSync(`/proc/${host.proc.child.pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+)/)?.[1] ?? 0);
}

e2e('abuse: one owner trying 10,000 detached tasks gets max_tasks of them, every other one RATE_LIMITED { limit: "tasks" }; host memory stays bounded', async (ctx) => {
  const host = await startHost(ctx, {
    // Neither the per-connection limit of requests in flight nor the request rate: the
    // per-owner task limit is the one under test.
    sections: { resume: { window: '20s', max_tasks: 100 }, limits: { max_in_flight: 0, requests_per_second: 0 } },
  });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown], { prefetch: 1000 });
  const socket = io(host.url, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { session: true } });
  ctx.onCleanup(async () => {
    socket.disconnect();
  });
  let session = false;
  socket.on('session', () => (session = true));
  await waitUntil(() => session || undefined, 10_000, 'the session event');

  const rssBefore = rssKiB(host);
  const started = Date.now();
  const tally = new Map<string, number>();
  const TRIES = 10_000;
  for (let batch = 0; batch < TRIES; batch += 500) {
    const acks = await Promise.all(
      Array.from({ length: 500 }, () =>
        socket.timeout(20_000).emitWithAck('request', {
          id: uniqueId('abuse'),
          requestType: TYPES.countdown,
          payload: { from: 3, intervalMs: 10 },
          detach: true,
        }),
      ),
    );
    for (const ack of acks as Array<{ ok: boolean; error?: { code: string; details?: { limit?: string; max?: number } } }>) {
      const key = ack.ok ? 'ok' : `${ack.error?.code} ${ack.error?.details?.limit} ${ack.error?.details?.max}`;
      tally.set(key, (tally.get(key) ?? 0) + 1);
    }
  }
  const elapsedMs = Date.now() - started;
  const rssAfter = rssKiB(host);
  assert.deepEqual(Object.fromEntries(tally), { ok: 100, 'RATE_LIMITED tasks 100': TRIES - 100 });
  await waitUntil(() => worker.received.length >= 100 || undefined, 10_000, 'the 100 tasks at the worker');
  assert.equal(worker.received.length, 100, 'only the accepted tasks reached a worker');

  // The page goes away: its 100 tasks park (no window) and the gauges say so.
  socket.disconnect();
  const parked = await waitUntil(async () => {
    const n = metric(await scrape(host), 'taskgate_resume_parked_requests');
    return n === 100 ? n : undefined;
  }, 5000, 'the 100 tasks parked');
  // Each ends: its outcome is kept (a task's, for result_ttl), with the chunk it sent.
  for (const job of worker.received) {
    await worker.chunk(job, { remaining: 0 }, 0);
    await worker.result(job, { done: true });
    worker.ack(job);
  }
  const metrics = await waitUntil(async () => {
    const text = await scrape(host);
    return metric(text, 'taskgate_resume_kept_outcomes') === 100 ? text : undefined;
  }, 5000, 'the 100 outcomes kept');
  assert.equal(metric(metrics, 'taskgate_resume_parked_requests'), 0);
  const keptBytes = metric(metrics, 'taskgate_resume_kept_bytes') ?? 0;
  assert.ok(keptBytes > 0 && keptBytes < 100 * 1024, `kept bytes: ${keptBytes}`);
  console.log(
    `# abuse: ${TRIES} detached tasks tried by one owner in ${elapsedMs} ms: ${tally.get('ok')} accepted, ` +
      `${TRIES - 100} refused RATE_LIMITED; host RSS ${rssBefore} KiB before, ${rssAfter} KiB after ` +
      `(+${rssAfter - rssBefore} KiB); parked ${parked}, then kept 100 outcomes in ${keptBytes} bytes of chunks`,
  );
  assert.ok(rssAfter - rssBefore < 64 * 1024, `host RSS grew by ${rssAfter - rssBefore} KiB (< 64 MiB)`);
});

e2e('abuse: a session client that never reads is dropped by its backlog limit; its parked requests keep at most request_bytes each, and the ordinary one ends with its window', async (ctx) => {
  const requestBytes = 1024 * 1024;
  const host = await startHost(ctx, {
    hostSettings: { socket_buffer: 16 },
    sections: {
      resume: { window: '3s', request_bytes: requestBytes },
      limits: { client_backlog_bytes: 256 * 1024, client_stall_ms: 120_000 },
    },
  });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown], { prefetch: 10 });
  const cancels = await CancelListener.start(ctx);
  const raw = await RawSocket.connected(host.url, { session: true }, { pong: false });
  ctx.onCleanup(async () => raw.terminate());
  const acks = [
    raw.request({ id: 'never-reads-task', requestType: TYPES.countdown, payload: { from: 3 }, detach: true }),
    raw.request({ id: 'never-reads-plain', requestType: TYPES.countdown, payload: { from: 3 } }),
  ];
  const jobs = [await worker.next(10_000), await worker.next(10_000)];
  for (const ack of acks) assert.deepEqual(await raw.ack(ack), { ok: true });
  raw.stopReading();
  const rssBefore = rssKiB(host);

  // 64 KiB chunks to both until the host drops the client (at most 100 MiB).
  const chunk = Buffer.from(JSON.stringify('c'.repeat(64 * 1024)));
  const dropped = () => host.logs().some((l) => /disconnecting a client that does not keep up/.test(l));
  let sent = 0;
  while (!dropped() && sent < 800) {
    for (let i = 0; i < 8; i++, sent++) {
      for (const job of jobs) {
        worker.channel.publish('', job.replyTo!, chunk, {
          correlationId: job.correlationId,
          type: 'chunk',
          contentType: 'application/json',
          headers: { 'x-seq': sent },
        });
      }
    }
    await worker.channel.waitForConfirms();
  }
  assert.ok(dropped(), `the host dropped the client (after ${sent} chunks each)`);
  // Dropped, but a session's: both park — the worker is not told — and keep at most request_bytes each.
  const text = await waitUntil(async () => {
    const t = await scrape(host);
    return metric(t, 'taskgate_resume_parked_requests') === 2 ? t : undefined;
  }, 10_000, 'both requests parked');
  const keptBytes = metric(text, 'taskgate_resume_kept_bytes') ?? 0;
  assert.ok(keptBytes <= 2 * requestBytes, `kept ${keptBytes} bytes ≤ 2 × request_bytes`);
  assert.equal(cancels.find(jobs[0]!.correlationId!), undefined, 'the task goes on');
  // The ordinary request's window ends: cancelled as on any disconnect; the task stays parked.
  await cancels.waitFor(jobs[1]!.correlationId!, 10_000);
  const after = await waitUntil(async () => {
    const t = await scrape(host);
    return metric(t, 'taskgate_resume_parked_requests') === 1 ? t : undefined;
  }, 5000, 'only the task parked');
  const rssAfter = rssKiB(host);
  console.log(
    `# abuse: a session client that never reads: dropped after ${sent} chunks of 64 KiB to each of 2 requests ` +
      `(${(sent * 2 * 64) / 1024} MiB); kept ${keptBytes} bytes while both parked, ${metric(after, 'taskgate_resume_kept_bytes')} ` +
      `after the window; host RSS ${rssBefore} KiB before, ${rssAfter} KiB after`,
  );
  assert.equal(cancels.find(jobs[0]!.correlationId!), undefined, 'the task still goes on');
});

e2e('abuse: one owner parks at most [resume] max_parked_per_owner requests over all its connections; a drop past it cancels the excess as a disconnect does', async (ctx) => {
  const host = await startHost(ctx, { sections: { resume: { window: '20s', max_parked_per_owner: 3 } } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.countdown], { prefetch: 10 });
  const cancels = await CancelListener.start(ctx);
  const connect = async (session: true | string) => {
    const socket = io(host.url, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { session } });
    ctx.onCleanup(async () => {
      socket.disconnect();
    });
    const event = await new Promise<{ token: string }>((resolve) => socket.once('session', resolve));
    return { socket, token: event.token };
  };
  // Two connections of one owner (the second presents the first's token), two requests each.
  const first = await connect(true);
  const second = await connect(first.token);
  const ids = ['a', 'b', 'c', 'd'].map((x) => uniqueId(`parked-${x}`));
  for (const [i, id] of ids.entries()) {
    const socket = i < 2 ? first.socket : second.socket;
    const ack = await socket.timeout(10_000).emitWithAck('request', { id, requestType: TYPES.countdown, payload: { from: 3 } });
    assert.deepEqual(ack, { ok: true });
  }
  const jobs: Received[] = [];
  for (let i = 0; i < ids.length; i++) jobs.push(await worker.next(10_000));
  first.socket.disconnect();
  second.socket.disconnect();

  // Three park; the fourth, past the bound, is cancelled at once (the worker told), counted and logged.
  const cancelled = await waitUntil(
    () => {
      const found = jobs.filter((job) => cancels.find(job.correlationId!));
      return found.length > 0 ? found : undefined;
    },
    10_000,
    'the excess cancelled',
  );
  await waitUntil(async () => metric(await scrape(host), 'taskgate_resume_parked_refused_total') === 1 || undefined, 5000, 'the counter');
  assert.ok(host.logs().some((l) => /max_parked_per_owner/.test(l)), 'one log line says why');
  assert.equal(cancelled.length, 1, 'only the excess');
  assert.equal(metric(await scrape(host), 'taskgate_resume_parked_requests'), 3);

  // Back: the three attach, the fourth is gone as after its window.
  const back = await connect(second.token);
  const codes: Array<string | undefined> = [];
  for (const id of ids) {
    const ack = (await back.socket.timeout(10_000).emitWithAck('attach', { id })) as { ok: boolean; error?: { code: string } };
    codes.push(ack.ok ? 'ok' : ack.error?.code);
  }
  assert.deepEqual(codes.sort(), ['TASK_NOT_FOUND', 'ok', 'ok', 'ok']);
  assert.equal(jobs.filter((job) => cancels.find(job.correlationId!)).length, 1, 'nothing else was cancelled');
});
