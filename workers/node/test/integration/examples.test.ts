/**
 * The example workers as processes (`node dist/examples/….js`) against the real host:
 * demo.countdown streams and stops when cancelled; echo follows the Rust echo worker's rules;
 * SIGTERM lets the request in progress finish before the process exits.
 */

import { describe, expect, test } from '@jest/globals';

import { Client, call, startExample, startHost, waitUntil, withRun } from './harness.js';

describe('the example workers (Node)', () => {
  test('demo.countdown streams remaining n-1 … 0, then done; a cancelled countdown stops early', async () => {
    await withRun(async (run) => {
      const host = await startHost(run);
      const worker = await startExample(run, 'countdown', { 'demo.countdown': host.queues['demo.countdown']! });
      expect(worker.matching(/worker ready .*runtime="node v\d/)).toHaveLength(1);
      const client = await Client.connect(run, host.url);

      const final = await call(client, 'cd', 'demo.countdown', { from: 5, intervalMs: 20 });
      expect(final).toEqual({ id: 'cd', type: 'result', data: { done: true } });
      expect(client.chunks('cd')).toEqual([4, 3, 2, 1, 0].map((remaining) => ({ remaining })));

      expect(await client.request('long', 'demo.countdown', { from: 10_000, intervalMs: 50 })).toEqual({ ok: true });
      await client.waitFor(() => client.chunks('long').length >= 2, 15_000, 'two chunks');
      client.cancel('long');
      expect((await client.final('long')).error?.code).toBe('CANCELLED');
      const stopped = await worker.waitForLine(/countdown stopped early/, 15_000);
      const sent = Number(/chunks_sent=(\d+)/.exec(stopped)?.[1]);
      expect(sent).toBeGreaterThanOrEqual(2);
      expect(sent).toBeLessThan(10_000);
      await worker.waitForLine(/request acked/, 15_000, 2);
    });
  });

  test('echo: chunks, a requested failure, and a steering field out of range', async () => {
    await withRun(async (run) => {
      const host = await startHost(run);
      await startExample(run, 'echo', { echo: host.queues.echo! });
      const client = await Client.connect(run, host.url);
      const result = await call(client, 'e1', 'echo', { chunks: 3, note: 'héllo' });
      expect(result.data).toEqual({ chunks: 3, note: 'héllo' });
      expect(client.chunks('e1')).toEqual([{ index: 0 }, { index: 1 }, { index: 2 }]);
      expect((await call(client, 'e2', 'echo', { fail: { code: 'E_X', message: 'as asked' } })).error).toEqual({
        code: 'E_X',
        message: 'as asked',
      });
      const invalid = await call(client, 'e3', 'echo', { chunks: -1 });
      expect(invalid.error).toMatchObject({ code: 'INVALID_PAYLOAD', details: { problems: [{ pointer: '/chunks' }] } });
    });
  });

  test('SIGTERM: the worker stops consuming, finishes the request in progress, and exits 0', async () => {
    await withRun(async (run) => {
      const host = await startHost(run);
      const queue = host.queues.echo!;
      const worker = await startExample(run, 'all', { echo: queue, 'demo.countdown': host.queues['demo.countdown']! });
      const client = await Client.connect(run, host.url);
      expect(await client.request('slow', 'echo', { delayMs: 2000, chunks: 2 })).toEqual({ ok: true });
      await worker.waitForLine(/request started/, 15_000);
      worker.child.kill('SIGTERM');
      await worker.waitForLine(/shutting down: no new requests/, 15_000);
      // A request sent now is not taken by the stopping worker: it waits in the queue.
      expect(await client.request('after', 'echo', { note: 'later' })).toEqual({ ok: true });

      const final = await client.final('slow', 30_000);
      expect(final.data).toEqual({ delayMs: 2000, chunks: 2 });
      expect(client.chunks('slow')).toEqual([{ index: 0 }, { index: 1 }]);
      expect(await worker.exited).toEqual({ code: 0, signal: null });
      expect(worker.matching(/worker stopped/)).toHaveLength(1);
      await waitUntil(async () => (await run.queueState(queue)).messageCount === 1, 15_000, 'the later request to wait in the queue');

      // Another worker picks it up.
      await startExample(run, 'echo', { echo: queue });
      expect((await client.final('after')).data).toEqual({ note: 'later' });
    });
  });
});
