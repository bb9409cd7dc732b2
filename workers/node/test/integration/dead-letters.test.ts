/**
 * Poison messages (docs/protocol.md §3.11) with the Node SDK's own worker: a worker process
 * (fixtures/crashing-worker.mjs) that ends itself with `process.exit` on a marked request,
 * restarted by the test after each crash as an orchestrator would. The marked request is
 * delivered 3 times (the default delivery limit), then dead-lettered; its client gets the
 * final error at once, not at its timeout; unmarked requests sent at the same time all succeed.
 */

import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, test } from '@jest/globals';

import { AMQP_URL, childEnv, Client, Proc, startHost, waitUntil, withRun, type TestRun } from './harness.js';

const CRASHING_WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures/crashing-worker.mjs');
/** The request type's timeout: the client must hear of the poison long before it. */
const TIMEOUT_MS = 60_000;
/** The fixture's exit status when it crashes on the mark. */
const CRASH_STATUS = 3;

/** Keeps one crashing worker running on `queue`, restarting it after each crash; records when each crash happened. */
function supervise(run: TestRun, queue: string, mark: string) {
  const crashes: number[] = [];
  const unexpected: string[] = [];
  let stopped = false;
  let current: Proc | undefined;
  let started = 0;
  const loop = (async () => {
    while (!stopped) {
      const proc = new Proc(`crashing-worker-${++started}`, process.execPath, [CRASHING_WORKER, AMQP_URL, queue, mark], childEnv());
      run.procs.push(proc);
      current = proc;
      const info = await proc.exited;
      if (stopped) break;
      if (info.code !== CRASH_STATUS) unexpected.push(`${proc.name} exited ${JSON.stringify(info)}:\n${proc.tail()}`);
      crashes.push(Date.now());
    }
  })();
  return {
    crashes,
    unexpected,
    async stop() {
      stopped = true;
      await current?.stop();
      await loop;
    },
  };
}

describe('poison messages', () => {
  test('a request the worker crashes on is dead-lettered after 3 deliveries; its client is told at once; the others succeed', async () => {
    await withRun(async (run) => {
      const host = await startHost(run, { echo: { timeout_ms: TIMEOUT_MS } });
      const queue = host.queues.echo!;
      const mark = `poison-${run.id}`;
      const worker = supervise(run, queue, mark);
      const client = await Client.connect(run, host.url);

      const sent = Date.now();
      expect(await client.request('poison', 'echo', { text: mark })).toEqual({ ok: true });
      const innocents = Array.from({ length: 10 }, (_, i) => `ok${i}`);
      for (const [i, id] of innocents.entries()) expect(await client.request(id, 'echo', { n: i })).toEqual({ ok: true });

      const final = await client.final('poison', TIMEOUT_MS + 5_000);
      const answered = Date.now();
      expect(final.type).toBe('error');
      expect(final.error?.code).toBe('WORKER_ERROR');
      expect(final.error?.message).toMatch(/delivered to workers 3 times/);
      expect(final.error?.details).toMatchObject({ reason: 'deliveryLimit', deliveries: 3, deadLetterQueue: run.deadLetterQueue });
      // The broker may see the third worker's connection drop (and the host answer) before this
      // process reaps the child: give the supervisor a moment to record the crash.
      await waitUntil(() => worker.crashes.length >= 3, 5_000, 'the third crash to be recorded');
      expect(worker.crashes).toHaveLength(3);
      expect(worker.unexpected).toEqual([]);
      const afterThirdCrash = answered - worker.crashes[2]!;
      process.stdout.write(`the client had its error ${afterThirdCrash} ms after the third crash, ${answered - sent} ms after sending\n`);
      // Not a tight timing (the machine is shared): a tenth of the timeout is "at once" next to it.
      expect(afterThirdCrash).toBeLessThan(TIMEOUT_MS / 10);

      for (const [i, id] of innocents.entries()) {
        expect(await client.final(id)).toEqual({ id, type: 'result', data: { n: i } });
        client.assertOrdered(id);
      }
      // The dead letter is kept for operators, in the run's own dead-letter queue.
      expect((await run.queueState(run.deadLetterQueue)).messageCount).toBe(1);
      await worker.stop();
    });
  }, 120_000);
});
