/**
 * A task that outlives RabbitMQ's consumer timeout, on a broker node of the test's own whose
 * `consumer_timeout` is 2 s (private-broker.ts): the broker closes the worker's consuming
 * channel and requeues the request; the worker logs it as an error, consumes again, keeps the
 * handler running and adopts the redelivery; the request completes once.
 */

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';

import { Client, call, startHost, startSdkWorker, withRun } from './harness.js';
import { PrivateBroker } from './private-broker.js';

describe('RabbitMQ consumer timeout', () => {
  let broker: PrivateBroker | undefined;

  beforeAll(async () => {
    broker = await PrivateBroker.start(2000);
  }, 120_000);

  afterAll(async () => {
    await broker?.stop();
  }, 60_000);

  test('a task longer than the consumer timeout runs once and completes', async () => {
    const url = broker!.url;
    await withRun(async (run) => {
      run.amqpUrl = url;
      const host = await startHost(run, { echo: { timeout_ms: 120_000 } }, url);
      const runs: Array<{ redelivered: boolean }> = [];
      const { lines, worker } = await startSdkWorker(run, 'sdk-long', { url, queues: { echo: host.queues.echo! } }, (w) =>
        w.handle('echo', async (payload: { ms: number }, ctx) => {
          runs.push({ redelivered: ctx.redelivered });
          await ctx.chunk({ started: true });
          await ctx.sleep(payload.ms);
          await ctx.chunk({ slept: payload.ms });
          return { slept: payload.ms };
        }),
      );
      const client = await Client.connect(run, host.url);
      const final = await call(client, 'long', 'echo', { ms: 6000 }, 60_000);
      expect(final.data).toEqual({ slept: 6000 });
      expect(client.chunks('long')).toEqual([{ started: true }, { slept: 6000 }]);
      expect(runs).toEqual([{ redelivered: false }]);

      const alarms = lines.filter((l) => / ERROR RABBITMQ CONSUMER TIMEOUT: .*consumer_timeout \(2000 ms\)/.test(l));
      expect(alarms.length).toBeGreaterThanOrEqual(1);
      expect(lines.some((l) => l.includes('consuming again after the consumer timeout'))).toBe(true);
      expect(lines.some((l) => l.includes('delivered again while it still runs here'))).toBe(true);
      expect(lines.filter((l) => l.includes('request acked'))).toHaveLength(1);
      // Acked for good: nothing comes back once the worker is gone.
      await worker.stop();
      expect((await run.queueState(host.queues.echo!)).messageCount).toBe(0);
    });
  });
});
