/**
 * The SDK runs under Bun too: the countdown example worker, built by tsc, run by the Bun that
 * the `bun` devDependency installs, against the real host and RabbitMQ.
 */

import { execFileSync } from 'node:child_process';

import { describe, expect, test } from '@jest/globals';

import { Client, bunBinary, call, startExample, startHost, withRun } from './harness.js';

describe('under Bun', () => {
  test('the countdown example worker streams its chunks in order and its result, and stops when cancelled', async () => {
    const version = execFileSync(bunBinary(), ['--version'], { encoding: 'utf8' }).trim();
    expect(version).toMatch(/^\d+\.\d+\.\d+/);
    await withRun(async (run) => {
      const host = await startHost(run);
      const worker = await startExample(run, 'countdown', { 'demo.countdown': host.queues['demo.countdown']! }, { runtime: 'bun' });
      // It is Bun that serves, not a Node fallback.
      expect(worker.matching(/worker ready .*runtime="bun \d/)).toHaveLength(1);
      const client = await Client.connect(run, host.url);

      const final = await call(client, 'bun-cd', 'demo.countdown', { from: 4, intervalMs: 25 });
      expect(final).toEqual({ id: 'bun-cd', type: 'result', data: { done: true } });
      expect(client.responses('bun-cd').map((r) => r.seq)).toEqual([0, 1, 2, 3, undefined]);
      expect(client.chunks('bun-cd')).toEqual([3, 2, 1, 0].map((remaining) => ({ remaining })));

      expect(await client.request('bun-long', 'demo.countdown', { from: 10_000, intervalMs: 50 })).toEqual({ ok: true });
      await client.waitFor(() => client.chunks('bun-long').length >= 1, 15_000, 'a chunk');
      client.cancel('bun-long');
      expect((await client.final('bun-long')).error?.code).toBe('CANCELLED');
      await worker.waitForLine(/countdown stopped early/, 15_000);

      // SIGTERM under Bun: a graceful stop too.
      expect(await worker.stop()).toEqual({ code: 0, signal: null });
      expect(worker.matching(/worker stopped/)).toHaveLength(1);
    }).catch((error: Error) => {
      error.message = `Bun ${version}: ${error.message}`;
      throw error;
    });
  });
});
