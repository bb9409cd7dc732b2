/** Waiting for a queue the host has not declared yet: one info line, quiet looks, a bound. */

import { describe, expect, test } from '@jest/globals';

import { memoryLogger } from '../../src/log.js';
import { waitForQueue } from '../../src/queue-wait.js';

/** Answers "missing" `missing` times, then "exists"; counts its calls. */
function probe(missing: number): { calls: number; exists: () => Promise<boolean> } {
  const p = {
    calls: 0,
    exists: async () => {
      p.calls += 1;
      return p.calls > missing;
    },
  };
  return p;
}

describe('waiting for a queue', () => {
  test('a queue that exists is not waited for', async () => {
    const log = memoryLogger();
    const p = probe(0);
    expect(await waitForQueue(p.exists, 'q', log, { patienceMs: 60_000, pollMs: 60_000 })).toBe(true);
    expect(p.calls).toBe(1);
    expect(log.records).toEqual([]);
  });

  test('a missing queue is waited for, with one info line and nothing louder', async () => {
    const log = memoryLogger();
    const p = probe(3);
    expect(await waitForQueue(p.exists, 'taskgate.echo', log, { patienceMs: 60_000, pollMs: 5 })).toBe(true);
    expect(p.calls).toBe(4);
    const waiting = log.records.filter((r) => r.message.includes('waiting for queue'));
    expect(waiting).toEqual([
      { level: 'info', message: 'waiting for queue taskgate.echo to be declared by the host', fields: { queue: 'taskgate.echo', patience_ms: 60_000 } },
    ]);
    expect(log.records.filter((r) => r.level === 'warn' || r.level === 'error')).toEqual([]);
  });

  test('the wait ends with the patience', async () => {
    const p = probe(Number.MAX_SAFE_INTEGER);
    const started = Date.now();
    expect(await waitForQueue(p.exists, 'q', memoryLogger(), { patienceMs: 100, pollMs: 30 })).toBe(false);
    expect(Date.now() - started).toBeGreaterThanOrEqual(99);
    // At once, then every 30 ms up to 100 ms (fewer on a slow machine).
    expect(p.calls).toBeGreaterThanOrEqual(2);
    expect(p.calls).toBeLessThanOrEqual(5);
  });

  test('a failing look ends the wait', async () => {
    let calls = 0;
    const refused = async () => {
      calls += 1;
      if (calls > 1) throw new Error('ACCESS_REFUSED');
      return false;
    };
    await expect(waitForQueue(refused, 'q', memoryLogger(), { patienceMs: 60_000, pollMs: 5 })).rejects.toThrow('ACCESS_REFUSED');
  });
});
