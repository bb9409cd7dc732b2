/**
 * Retries with backoff (docs/protocol.md §3.12): the policy from header `x-retry`, the delays,
 * when a failure is retried, and the runner scheduling the next attempt instead of replying.
 * No clock is involved: the broker does the waiting (a wait queue's TTL), so delays are plain
 * numbers and deadlines are checked against the time the test gives. Mirrors the Python SDK's
 * tests/unit/test_retry.py.
 */

import { describe, expect, test } from '@jest/globals';

import type { Context } from '../../src/context.js';
import { TaskError } from '../../src/errors.js';
import { delayAfter, nextAttempt, parseRetryPolicy, waitQueue, waitQueueArguments, type RetryPolicy } from '../../src/retry.js';
import { runRequest } from '../../src/testing.js';

const policy = (p: Partial<RetryPolicy> = {}): RetryPolicy => ({
  attempts: 5,
  delayMs: 100,
  backoff: 'exponential',
  maxDelayMs: 500,
  jitter: false,
  retryOn: [],
  ...p,
});

describe('the policy', () => {
  test('is read from the header and refused when malformed', () => {
    const header = JSON.stringify({ attempts: 3, backoff: 'exponential', delayMs: 100, maxDelayMs: 1000, jitter: true, retryOn: ['UPSTREAM'] });
    expect(parseRetryPolicy(Buffer.from(header))).toEqual(policy({ attempts: 3, maxDelayMs: 1000, jitter: true, retryOn: ['UPSTREAM'] }));
    expect(parseRetryPolicy('{"attempts": 2, "delayMs": 5}')).toEqual({ attempts: 2, delayMs: 5, backoff: 'fixed', maxDelayMs: undefined, jitter: false, retryOn: [] });
    for (const bad of [undefined, 5, 'not json', '[]', '{"attempts": 0, "delayMs": 5}', '{"attempts": 2}',
      '{"attempts": 2, "delayMs": 5, "backoff": "linear"}', '{"attempts": 2, "delayMs": 50, "maxDelayMs": 10}',
      '{"attempts": true, "delayMs": 5}', '{"attempts": 2, "delayMs": 5, "retryOn": [1]}']) {
      expect(parseRetryPolicy(bad)).toBeUndefined();
    }
  });

  test('delays are fixed or doubling up to the cap', () => {
    expect([1, 2, 3].map((n) => delayAfter(policy({ backoff: 'fixed' }), n))).toEqual([100, 100, 100]);
    expect([1, 2, 3, 4].map((n) => delayAfter(policy(), n))).toEqual([100, 200, 400, 500]);
  });

  test('jitter waits half to all of the delay, in tenths', () => {
    const jittered = policy({ backoff: 'fixed', delayMs: 1000, maxDelayMs: undefined, jitter: true });
    expect(delayAfter(jittered, 1, () => 0)).toBe(500);
    expect(delayAfter(jittered, 1, () => 0.999)).toBe(1000);
    expect(delayAfter(jittered, 1, () => 0.33)).toBe(600);
    for (let i = 0; i < 50; i++) expect(delayAfter(jittered, 1) % 100).toBe(0);
  });

  test('what is retried', () => {
    const now = Date.now();
    const retryable = new TaskError('UPSTREAM', '503', undefined, { retryable: true });
    const decide = (p: RetryPolicy | undefined = policy(), attempt = 1, error = retryable, state = {}) =>
      nextAttempt(p, attempt, error, { chunksSent: false, cancelled: false, deadlineMs: now + 60_000, nowMs: now, ...state });
    expect(decide()).toEqual({ attempt: 2, delayMs: 100 });
    expect(decide(policy(), 3)).toEqual({ attempt: 4, delayMs: 400 });
    expect(decide(policy(), 5)).toBeUndefined();
    expect(nextAttempt(undefined, 1, retryable, { chunksSent: false, cancelled: false, deadlineMs: undefined, nowMs: now })).toBeUndefined();
    expect(decide(policy(), 1, new TaskError('UPSTREAM', '503'))).toBeUndefined();
    expect(decide(policy({ retryOn: ['UPSTREAM'] }), 1, new TaskError('UPSTREAM', '503'))).toEqual({ attempt: 2, delayMs: 100 });
    expect(decide(policy(), 1, new TaskError('CANCELLED', 'x', undefined, { retryable: true }))).toBeUndefined();
    expect(decide(policy(), 1, new TaskError('INVALID_PAYLOAD', 'x', undefined, { retryable: true }))).toBeUndefined();
    expect(decide(policy(), 1, retryable, { chunksSent: true })).toBeUndefined();
    expect(decide(policy(), 1, retryable, { cancelled: true })).toBeUndefined();
    expect(decide(policy(), 1, retryable, { deadlineMs: now + 100 })).toBeUndefined();
    expect(decide(policy(), 1, retryable, { deadlineMs: now + 101 })).toEqual({ attempt: 2, delayMs: 100 });
    expect(decide(policy(), 1, retryable, { deadlineMs: undefined })).toEqual({ attempt: 2, delayMs: 100 });
  });

  test('wait queues dead-letter back to the request queue', () => {
    expect(waitQueue('taskgate.echo', 250)).toBe('taskgate.echo.retry.250');
    expect(waitQueueArguments('taskgate.echo', 250)).toEqual({
      'x-message-ttl': 250,
      'x-dead-letter-exchange': '',
      'x-dead-letter-routing-key': 'taskgate.echo',
      'x-expires': 60_250,
    });
  });
});

describe('the runner', () => {
  const flaky = (_payload: unknown, ctx: Context) => {
    if (ctx.attempt < 3) throw new TaskError('UPSTREAM', `attempt ${ctx.attempt} failed`, undefined, { retryable: true });
    return { attempt: ctx.attempt };
  };

  test('a retryable failure schedules the next attempt and acks without a reply; the third attempt succeeds', async () => {
    const first = await runRequest(flaky, null, { delivery: { retry: policy() } });
    expect(first.outcome).toEqual({ kind: 'retried', attempt: 2, delayMs: 100 });
    expect(first.retries).toEqual([{ attempt: 2, delayMs: 100 }]);
    expect(first.error).toBeUndefined();
    expect(first.result).toBeUndefined();
    const second = await runRequest(flaky, null, { delivery: { retry: policy(), attempt: 2 } });
    expect(second.retries).toEqual([{ attempt: 3, delayMs: 200 }]);
    const third = await runRequest(flaky, null, { delivery: { retry: policy(), attempt: 3 } });
    expect(third.result).toEqual({ attempt: 3 });
    expect(third.retries).toEqual([]);
  });

  test('the last attempt replies the error', async () => {
    const last = await runRequest(flaky, null, { delivery: { retry: policy({ attempts: 2 }), attempt: 2 } });
    expect(last.error).toEqual({ code: 'UPSTREAM', message: 'attempt 2 failed' });
    expect(last.retries).toEqual([]);
  });

  test('no attempt starts after the deadline', async () => {
    const late = await runRequest(flaky, null, { delivery: { retry: policy({ delayMs: 1000 }), deadlineMs: Date.now() + 50 } });
    expect(late.error?.code).toBe('UPSTREAM');
    expect(late.retries).toEqual([]);
  });

  test('a failure after a chunk is final', async () => {
    const streamsThenFails = async (_payload: unknown, ctx: Context) => {
      await ctx.chunk({ step: 1 });
      throw new TaskError('UPSTREAM', '503', undefined, { retryable: true });
    };
    const replies = await runRequest(streamsThenFails, null, { delivery: { retry: policy() } });
    expect(replies.chunks).toEqual([{ step: 1 }]);
    expect(replies.error?.code).toBe('UPSTREAM');
    expect(replies.retries).toEqual([]);
  });

  test('without a policy a retryable error is replied', async () => {
    const replies = await runRequest(flaky, null);
    expect(replies.error).toEqual({ code: 'UPSTREAM', message: 'attempt 1 failed' });
  });
});
