/**
 * The SDK in this process against the real RabbitMQ and the real host, with socket.io-client as
 * the browser. The host's `echo` request type accepts any payload, so the test's own handler
 * on its queue decides what to do from the payload's `op`.
 */

import { describe, expect, test } from '@jest/globals';

import { TaskError, type Context, type Handler } from '../../src/index.js';
import {
  AMQP_URL,
  Client,
  TcpProxy,
  brokerAddress,
  call,
  startHost,
  startSdkWorker,
  waitUntil,
  withRun,
} from './harness.js';

/** What the test handler saw, per request. */
interface Seen {
  runs: Array<{ op: string; redelivered: boolean; correlationId: string }>;
  aborted: Array<{ correlationId: string; reason: unknown }>;
}

/** The test's echo handler: `op` says what to do. */
function testHandler(seen: Seen): Handler {
  return async (payload: { op: string; n?: number; ms?: number }, ctx: Context) => {
    seen.runs.push({ op: payload.op, redelivered: ctx.redelivered, correlationId: ctx.correlationId });
    ctx.signal.addEventListener('abort', () => seen.aborted.push({ correlationId: ctx.correlationId, reason: ctx.signal.reason }));
    switch (payload.op) {
      case 'chunks':
        for (let i = 0; i < (payload.n ?? 0); i++) await ctx.chunk({ i });
        return { sent: payload.n, requestType: ctx.requestType, hasDeadline: ctx.deadline instanceof Date };
      case 'task-error':
        throw new TaskError('E_TEAPOT', 'short and stout', { spout: true });
      case 'throw':
        throw new Error('something broke inside');
      case 'wait-for-cancel':
        await ctx.chunk('started');
        await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
        throw new Error('stopped');
      case 'sleep':
        await ctx.chunk({ sleeping: payload.ms });
        await ctx.sleep(payload.ms ?? 0);
        return { slept: payload.ms, redelivered: ctx.redelivered };
      default:
        return payload;
    }
  };
}

const newSeen = (): Seen => ({ runs: [], aborted: [] });

describe('the SDK against the real host and RabbitMQ', () => {
  test('results, chunks in order, TaskError, thrown errors → WORKER_ERROR', async () => {
    await withRun(async (run) => {
      const host = await startHost(run);
      const seen = newSeen();
      await startSdkWorker(run, 'sdk', { queues: { echo: host.queues.echo! } }, (w) => w.handle('echo', testHandler(seen)));
      const client = await Client.connect(run, host.url);

      const result = await call(client, 'r1', 'echo', { op: 'chunks', n: 25 });
      expect(result).toEqual({ id: 'r1', type: 'result', data: { sent: 25, requestType: 'echo', hasDeadline: true } });
      expect(client.chunks('r1')).toEqual(Array.from({ length: 25 }, (_, i) => ({ i })));

      const teapot = await call(client, 'r2', 'echo', { op: 'task-error' });
      expect(teapot).toEqual({
        id: 'r2',
        type: 'error',
        error: { code: 'E_TEAPOT', message: 'short and stout', details: { spout: true } },
      });

      const broke = await call(client, 'r3', 'echo', { op: 'throw' });
      expect(broke.error).toEqual({ code: 'WORKER_ERROR', message: 'something broke inside' });

      // Every request was acked: nothing waits in the queue, nothing is redelivered.
      expect((await run.queueState(host.queues.echo!)).messageCount).toBe(0);
      expect(seen.runs.map((r) => r.redelivered)).toEqual([false, false, false]);
    });
  });

  test("a cancel fires the handler's ctx.signal; the SDK answers CANCELLED and acks", async () => {
    await withRun(async (run) => {
      const host = await startHost(run);
      const seen = newSeen();
      const { lines, worker } = await startSdkWorker(run, 'sdk', { queues: { echo: host.queues.echo! } }, (w) =>
        w.handle('echo', testHandler(seen)),
      );
      const client = await Client.connect(run, host.url);
      expect(await client.request('c1', 'echo', { op: 'wait-for-cancel' })).toEqual({ ok: true });
      await client.waitFor(() => client.chunks('c1').length === 1, 15_000, 'the handler to start');
      client.cancel('c1');
      const final = await client.final('c1');
      expect(final.error?.code).toBe('CANCELLED');
      await waitUntil(() => seen.aborted.length === 1, 15_000, 'the handler to see the cancellation');
      expect(seen.aborted[0]?.reason).toBeInstanceOf(TaskError);
      expect((seen.aborted[0]?.reason as TaskError).code).toBe('CANCELLED');
      // The worker's own reply and ack follow (the host had already answered the client).
      await waitUntil(() => lines.some((l) => /request cancelled .*correlation_id=/.test(l)), 15_000, 'the log line');
      await waitUntil(() => lines.some((l) => /request acked .*correlation_id=/.test(l)), 15_000, 'the ack');
      // Acked, not merely delivered: once the worker is gone nothing comes back to the queue.
      await worker.stop();
      expect((await run.queueState(host.queues.echo!)).messageCount).toBe(0);
    });
  });

  test('a request whose deadline has passed is acked without running', async () => {
    await withRun(async (run) => {
      const host = await startHost(run);
      const seen = newSeen();
      const { lines, worker } = await startSdkWorker(run, 'sdk', { queues: { echo: host.queues.echo! } }, (w) =>
        w.handle('echo', testHandler(seen)),
      );
      // Published straight to the queue, as a host whose request already timed out would have.
      const replies: unknown[] = [];
      await run.onChannel(async (ch) => {
        const { queue: replyQueue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
        await ch.consume(replyQueue, (m) => m && replies.push(m), { noAck: true });
        ch.sendToQueue(host.queues.echo!, Buffer.from('{"op":"chunks","n":1}'), {
          correlationId: `expired-${run.id}`,
          replyTo: replyQueue,
          type: 'echo',
          contentType: 'application/json',
          headers: { 'x-deadline-ms': Date.now() - 1000 },
        });
        await waitUntil(() => lines.some((l) => l.includes('request expired before it started')), 15_000, 'the expiry log line');
        await waitUntil(async () => (await run.queueState(host.queues.echo!)).messageCount === 0, 15_000, 'the queue to be empty');
      });
      expect(seen.runs).toEqual([]);
      expect(replies).toEqual([]);
      // Still serving.
      const client = await Client.connect(run, host.url);
      expect((await call(client, 'after', 'echo', { op: 'chunks', n: 0 })).type).toBe('result');
      // Both acked: once the worker is gone nothing comes back to the queue.
      await worker.stop();
      expect((await run.queueState(host.queues.echo!)).messageCount).toBe(0);
    });
  });

  test('the worker reconnects after its broker connection is cut, and the request in progress is redelivered and completes', async () => {
    await withRun(async (run) => {
      const host = await startHost(run, { echo: { timeout_ms: 60_000 } });
      const proxy = await TcpProxy.start(run, brokerAddress(AMQP_URL));
      const seen = newSeen();
      const { worker, lines } = await startSdkWorker(
        run,
        'sdk-behind-proxy',
        { url: proxy.url(), queues: { echo: host.queues.echo! } },
        (w) => w.handle('echo', testHandler(seen)),
      );
      const client = await Client.connect(run, host.url);
      expect(await client.request('long', 'echo', { op: 'sleep', ms: 3000 })).toEqual({ ok: true });
      await client.waitFor(() => client.chunks('long').length === 1, 15_000, 'the handler to start');

      proxy.cut();
      await waitUntil(() => lines.some((l) => l.includes('lost the broker connection')), 15_000, 'the loss to be noticed');
      await waitUntil(() => lines.filter((l) => l.includes('worker ready')).length === 2, 30_000, 'the worker to consume again');
      expect(worker.consuming).toBe(true);

      const final = await client.final('long', 30_000);
      expect(final).toMatchObject({ type: 'result', data: { slept: 3000, redelivered: true } });
      // The first run was abandoned (no reply from it), the redelivery ran to the end.
      expect(seen.runs.map((r) => r.redelivered)).toEqual([false, true]);
      expect((seen.aborted[0]?.reason as Error).name).toBe('RequestAbandoned');
      // The host drops the redelivery's replayed chunk (x-seq 0 again): the client saw seq 0 once.
      expect(client.chunks('long')).toEqual([{ sleeping: 3000 }]);

      // And new requests are served on the new connection.
      expect((await call(client, 'next', 'echo', { op: 'chunks', n: 2 })).type).toBe('result');
    });
  });
});
