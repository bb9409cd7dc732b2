/**
 * Retries with backoff (docs/protocol.md §3.12) through the real host and RabbitMQ:
 * plugins.toml gives echo a retry policy, which the host sends as `x-retry`; the handler fails
 * retryably, and the SDK waits in a wait queue (not in the handler) before the next attempt.
 */

import { describe, expect, test } from '@jest/globals';

import { TaskError, type Context } from '../../src/index.js';
import { Client, call, startHost, startSdkWorker, withRun } from './harness.js';

const flaky = async (payload: { failures: number }, ctx: Context) => {
  if (ctx.attempt <= payload.failures) {
    throw new TaskError('FLAKY', `attempt ${ctx.attempt} fails, as asked`, undefined, { retryable: true });
  }
  return { attempt: ctx.attempt };
};

describe('retries', () => {
  test('a retryable failure is tried again after the backoff; the client gets the result', async () => {
    await withRun(async (run) => {
      const host = await startHost(run, { echo: { retry: { attempts: 3, backoff: 'exponential', delay_ms: 200 } } });
      const queue = host.queues.echo!;
      run.queues.add(`${queue}.retry.200`);
      run.queues.add(`${queue}.retry.400`);
      const { lines } = await startSdkWorker(run, 'sdk', { queues: { echo: queue } }, (w) => w.handle('echo', flaky));
      const client = await Client.connect(run, host.url);
      const started = Date.now();
      expect(await call(client, 'r1', 'echo', { failures: 2 })).toEqual({ id: 'r1', type: 'result', data: { attempt: 3 } });
      expect(Date.now() - started).toBeGreaterThanOrEqual(600);
      const scheduled = lines.filter((l) => l.includes('attempt failed retryably; the next one is scheduled'));
      expect(scheduled).toHaveLength(2);
      expect(scheduled[0]).toMatch(/delay_ms=200/);
      expect(scheduled[1]).toMatch(/delay_ms=400/);
      // The SDK's retry notices reached the host (it counts them).
      expect(host.proc.lines.filter((l) => l.includes('the worker scheduled another attempt'))).toHaveLength(2);
    });
  }, 60_000);

  test('the last attempt replies the error', async () => {
    await withRun(async (run) => {
      const host = await startHost(run, { echo: { retry: { attempts: 2, delay_ms: 50 } } });
      const queue = host.queues.echo!;
      run.queues.add(`${queue}.retry.50`);
      await startSdkWorker(run, 'sdk', { queues: { echo: queue } }, (w) => w.handle('echo', flaky));
      const client = await Client.connect(run, host.url);
      const final = await call(client, 'r1', 'echo', { failures: 5 });
      expect(final.error?.code).toBe('FLAKY');
      expect(final.error?.message).toMatch(/attempt 2 fails/);
    });
  }, 60_000);
});
