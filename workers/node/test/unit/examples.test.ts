/** The example handlers (echo, demo.countdown) and the examples' command line, in memory. */

import { describe, expect, test } from '@jest/globals';

import { parseCommandLine } from '../../examples/cli.js';
import { countdown, echo } from '../../examples/handlers.js';
import { memoryLogger, type LogRecord } from '../../src/log.js';
import { runRequest } from '../../src/testing.js';

describe('echo', () => {
  test('returns any payload unchanged', async () => {
    for (const payload of [null, 'x', [1, { a: 2 }], { chunks: 0, k: 'v' }, 3.5]) {
      const replies = await runRequest(echo, payload);
      expect(replies.result).toEqual(payload);
      expect(replies.chunks).toEqual([]);
    }
  });

  test('streams the chunks asked for, then the payload', async () => {
    const payload = { chunks: 3, note: 'x' };
    const replies = await runRequest(echo, payload);
    expect(replies.chunks).toEqual([{ index: 0 }, { index: 1 }, { index: 2 }]);
    expect(replies.result).toEqual(payload);
  });

  test('fails as asked after its chunks; the code defaults to WORKER_ERROR', async () => {
    const replies = await runRequest(echo, { chunks: 1, fail: { code: 'E_TEAPOT', message: 'short and stout', details: [1] } });
    expect(replies.chunks).toHaveLength(1);
    expect(replies.error).toEqual({ code: 'E_TEAPOT', message: 'short and stout', details: [1] });
    expect((await runRequest(echo, { fail: { message: 'm' } })).error).toEqual({ code: 'WORKER_ERROR', message: 'm' });
  });

  test('refuses steering fields of the wrong type or out of range, before anything else', async () => {
    const cases: Array<[unknown, string]> = [
      [{ chunks: 10_001 }, '/chunks'],
      [{ chunks: -1 }, '/chunks'],
      [{ chunks: '3' }, '/chunks'],
      [{ delayMs: 1.5 }, '/delayMs'],
      [{ delayMs: 600_001 }, '/delayMs'],
      [{ fail: 'x' }, '/fail'],
      [{ fail: { code: 'E' } }, '/fail/message'],
      [{ fail: { code: 1, message: 'm' } }, '/fail/code'],
    ];
    for (const [payload, pointer] of cases) {
      const replies = await runRequest(echo, payload);
      expect(replies.error?.code).toBe('INVALID_PAYLOAD');
      expect((replies.error?.details as { problems: Array<{ pointer: string }> }).problems[0]?.pointer).toBe(pointer);
      expect(replies.chunks).toEqual([]);
    }
  });

  test('a cancellation ends the wait', async () => {
    const replies = await runRequest(echo, { delayMs: 600_000 }, { cancelAfterMs: 5 });
    expect(replies.error?.code).toBe('CANCELLED');
  });
});

describe('demo.countdown', () => {
  test('streams remaining from n-1 down to 0, then done', async () => {
    const replies = await runRequest(countdown, { from: 3, intervalMs: 1 });
    expect(replies.chunks).toEqual([{ remaining: 2 }, { remaining: 1 }, { remaining: 0 }]);
    expect(replies.result).toEqual({ done: true });
  });

  test('from 0 is done at once', async () => {
    const replies = await runRequest(countdown, { from: 0, intervalMs: 1 });
    expect(replies.chunks).toEqual([]);
    expect(replies.result).toEqual({ done: true });
  });

  test('a cancellation stops it, and its log says how far it got', async () => {
    const records: LogRecord[] = [];
    const replies = await runRequest(countdown, { from: 10_000, intervalMs: 60_000 }, {
      cancelAfterMs: 5,
      logger: memoryLogger(records),
    });
    expect(replies.error?.code).toBe('CANCELLED');
    expect(replies.chunks).toEqual([]);
    const line = records.find((r) => r.message === 'countdown stopped early');
    expect(line?.fields).toMatchObject({ from: 10_000, chunks_sent: 0, correlation_id: 'test-correlation-id' });
  });

  test('refuses bad payloads with a pointer', async () => {
    const cases: Array<[unknown, string]> = [
      [{ from: 10_001 }, '/from'],
      [{ from: 1, intervalMs: 60_001 }, '/intervalMs'],
      [{ from: -1 }, '/from'],
      [{ from: 1.5 }, '/from'],
      [{}, '/from'],
      [[5], ''],
      [null, ''],
    ];
    for (const [payload, pointer] of cases) {
      const replies = await runRequest(countdown, payload);
      expect(replies.error?.code).toBe('INVALID_PAYLOAD');
      expect((replies.error?.details as { problems: Array<{ pointer: string }> }).problems[0]?.pointer).toBe(pointer);
    }
  });
});

describe('command line', () => {
  const types = ['echo', 'demo.countdown'];

  test('reads queue overrides, prefetch and the URL', () => {
    const settings = parseCommandLine(
      ['--queue', 'echo=q.1', '--queue', 'demo.countdown=q.2', '--prefetch', '4', '--amqp-url', 'amqp://x'],
      types,
    );
    expect(settings).toMatchObject({ amqpUrl: 'amqp://x', prefetch: 4, queues: { echo: 'q.1', 'demo.countdown': 'q.2' } });
    expect(parseCommandLine([], types).prefetch).toBe(16);
  });

  test('says what is wrong', () => {
    expect(() => parseCommandLine(['--queue', 'echo'], types)).toThrow('expected --queue TYPE=QUEUE');
    expect(() => parseCommandLine(['--queue', 'echo='], types)).toThrow('expected --queue TYPE=QUEUE');
    expect(() => parseCommandLine(['--queue', 'nope=q'], types)).toThrow('unknown request type `nope` (known: echo, demo.countdown)');
    expect(() => parseCommandLine(['--prefetch', '0'], types)).toThrow('--prefetch');
    expect(() => parseCommandLine(['--prefetch', 'x'], types)).toThrow('--prefetch');
    expect(() => parseCommandLine(['--bogus'], types)).toThrow();
  });
});
