/**
 * One request's lifecycle through an in-memory transport: what is published, in which order,
 * and when the request is acked (mirrors workers/rust/src/runner_tests.rs).
 */

import { describe, expect, test } from '@jest/globals';

import { RequestAbandoned, type Context } from '../../src/context.js';
import { TaskError } from '../../src/errors.js';
import { memoryLogger, type LogRecord } from '../../src/log.js';
import { Cancellations, Runner, type Handler } from '../../src/runner.js';
import { MemoryTransport, recordingSettle, testDelivery, type MemoryEvent, type MemoryTransportOptions } from '../../src/testing.js';
import type { Confirmation, Delivery, Reply, Transport } from '../../src/transport.js';
import { deferred, until } from './helpers.js';

const ID = 'test-correlation-id';

function setup(options: MemoryTransportOptions = {}, cancelGraceMs = 100) {
  const events: MemoryEvent[] = [];
  const records: LogRecord[] = [];
  const transport = new MemoryTransport(events, options);
  const runner = new Runner({ transport, cancelGraceMs, log: memoryLogger(records) });
  const run = (handler: Handler, delivery: Delivery = testDelivery({ n: 1 })) =>
    runner.process(delivery, handler, recordingSettle(events, delivery.correlationId), 'fallback.type');
  return { events, records, transport, runner, run };
}

function json(reply: Reply | undefined): unknown {
  if (!reply) throw new Error('no reply');
  return JSON.parse(reply.body.toString('utf8'));
}

/** The events as short strings: `chunk 0`, `result`, `error`, `ack`, `requeue`. */
function trace(events: MemoryEvent[]): string[] {
  return events.map((e) =>
    e.type === 'settle' ? e.settlement : e.reply.kind === 'chunk' ? `chunk ${e.reply.seq}` : e.reply.kind,
  );
}

describe('replies', () => {
  test('a result goes to reply_to with the correlation id, then the request is acked', async () => {
    const { events, transport, run } = setup();
    const outcome = await run(async (payload) => ({ got: payload }));
    expect(outcome).toEqual({ kind: 'replied', reply: 'result' });
    expect(trace(events)).toEqual(['result', 'ack']);
    const [reply] = transport.replies();
    expect(reply).toMatchObject({ replyTo: 'taskgate.reply.test', correlationId: ID, kind: 'result' });
    expect(reply?.seq).toBeUndefined();
    expect(json(reply)).toEqual({ got: { n: 1 } });
  });

  test('chunks carry seq 0, 1, 2 in order, all before the final reply and the ack', async () => {
    const { events, transport, run } = setup();
    await run(async (_payload, ctx) => {
      for (let i = 0; i < 3; i++) await ctx.chunk({ i });
      return 'done';
    });
    expect(trace(events)).toEqual(['chunk 0', 'chunk 1', 'chunk 2', 'result', 'ack']);
    expect(transport.replies().slice(0, 3).map(json)).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }]);
  });

  test('chunks sent without awaiting each keep seq in call order', async () => {
    const { events, transport, run } = setup();
    await run(async (_payload, ctx) => {
      await Promise.all([0, 1, 2, 3, 4].map((i) => ctx.chunk(i)));
      return null;
    });
    expect(trace(events)).toEqual(['chunk 0', 'chunk 1', 'chunk 2', 'chunk 3', 'chunk 4', 'result', 'ack']);
    expect(transport.replies().slice(0, 5).map(json)).toEqual([0, 1, 2, 3, 4]);
  });

  test('an async generator handler: each yield is a chunk, its return value the result', async () => {
    const { events, transport, run } = setup();
    await run(async function* () {
      yield { step: 1 };
      yield { step: 2 };
      return { total: 2 };
    });
    expect(trace(events)).toEqual(['chunk 0', 'chunk 1', 'result', 'ack']);
    expect(transport.replies().map(json)).toEqual([{ step: 1 }, { step: 2 }, { total: 2 }]);
  });

  test('a result of undefined is sent as null', async () => {
    const { transport, run } = setup();
    await run(async () => undefined);
    expect(json(transport.replies()[0])).toBeNull();
  });

  test('nothing is published after the final reply', async () => {
    const { events, run } = setup();
    let late: Promise<unknown> | undefined;
    await run(async (_payload, ctx) => {
      late = new Promise((resolve) => setImmediate(resolve)).then(() => ctx.chunk('too late'));
      return 1;
    });
    await expect(late).rejects.toMatchObject({ code: 'WORKER_ERROR', message: expect.stringContaining('already answered') });
    expect(trace(events)).toEqual(['result', 'ack']);
  });
});

describe('errors', () => {
  test('a TaskError becomes an error reply with its code, message and details', async () => {
    const { events, transport, run } = setup();
    const outcome = await run(async () => {
      throw new TaskError('NOT_FOUND', 'no such thing', { id: 7 });
    });
    expect(outcome).toEqual({ kind: 'replied', reply: 'error' });
    expect(trace(events)).toEqual(['error', 'ack']);
    expect(json(transport.replies()[0])).toEqual({ code: 'NOT_FOUND', message: 'no such thing', details: { id: 7 } });
  });

  test('a TaskError without a code is WORKER_ERROR, and has no details key without details', async () => {
    const { transport, run } = setup();
    await run(async () => {
      throw new TaskError(undefined, 'plain');
    });
    expect(json(transport.replies()[0])).toEqual({ code: 'WORKER_ERROR', message: 'plain' });
  });

  test('any other exception is WORKER_ERROR with its message; the stack goes only to the log', async () => {
    const { transport, records, run } = setup();
    await run(async () => {
      throw new RangeError('the disk is full');
    });
    const body = json(transport.replies()[0]);
    expect(body).toEqual({ code: 'WORKER_ERROR', message: 'the disk is full' });
    expect(JSON.stringify(body)).not.toContain('runner.test');
    const logged = records.find((r) => r.level === 'error');
    expect(logged?.fields.correlation_id).toBe(ID);
    expect(String((logged?.fields.error as Error).stack)).toContain('RangeError: the disk is full');
  });

  test('a synchronous throw and a thrown non-Error are WORKER_ERROR too', async () => {
    const first = setup();
    await first.run(() => {
      throw new Error('sync');
    });
    expect(json(first.transport.replies()[0])).toEqual({ code: 'WORKER_ERROR', message: 'sync' });
    const second = setup();
    await second.run(async () => {
      throw 'a string';
    });
    expect(json(second.transport.replies()[0])).toEqual({ code: 'WORKER_ERROR', message: 'a string' });
  });

  test('a payload that is not JSON (or not UTF-8) is INVALID_PAYLOAD without running the handler', async () => {
    for (const body of [Buffer.from('{not json'), Buffer.from(''), Buffer.from([0x22, 0xff, 0x22])]) {
      const { events, transport, run } = setup();
      let called = false;
      await run(
        async () => {
          called = true;
        },
        testDelivery(body),
      );
      expect(called).toBe(false);
      expect(trace(events)).toEqual(['error', 'ack']);
      const error = json(transport.replies()[0]) as { code: string; message: string; details: { problems: unknown[] } };
      expect(error.code).toBe('INVALID_PAYLOAD');
      expect(error.message).toContain('not valid JSON');
      expect(error.details.problems).toEqual([{ pointer: '', message: expect.stringContaining('not valid JSON') }]);
    }
  });

  test('a result that cannot be written as JSON is WORKER_ERROR', async () => {
    const { transport, run } = setup();
    await run(async () => ({ big: 1n }));
    expect(json(transport.replies()[0])).toMatchObject({
      code: 'WORKER_ERROR',
      message: expect.stringContaining('the result could not be serialised'),
    });
  });

  test('details that are not JSON are left out', async () => {
    const { transport, run } = setup();
    await run(async () => {
      throw new TaskError('E', 'm', { big: 1n });
    });
    expect(json(transport.replies()[0])).toEqual({ code: 'E', message: 'm' });
  });

  test('TaskError.invalidPayload has the host-shaped problems', () => {
    const error = TaskError.invalidPayload([
      { pointer: '/a', message: 'is wrong' },
      { pointer: '', message: 'also this' },
    ]);
    expect(error.toBody()).toEqual({
      code: 'INVALID_PAYLOAD',
      message: '/a is wrong; also this',
      details: { problems: [{ pointer: '/a', message: 'is wrong' }, { pointer: '', message: 'also this' }] },
    });
  });
});

describe('requests that are not run', () => {
  test('an expired request is acked without running', async () => {
    const { events, records, run } = setup();
    let called = false;
    const outcome = await run(
      async () => {
        called = true;
      },
      testDelivery({}, { deadlineMs: Date.now() - 1 }),
    );
    expect(outcome).toEqual({ kind: 'expired' });
    expect(called).toBe(false);
    expect(trace(events)).toEqual(['ack']);
    expect(records.some((r) => r.message.includes('expired') && r.fields.correlation_id === ID)).toBe(true);
  });

  test('a request without reply_to or correlation_id is acked and dropped', async () => {
    for (const overrides of [{ replyTo: undefined }, { correlationId: undefined }, { replyTo: '' }]) {
      const { events, run } = setup();
      const outcome = await run(async () => 1, testDelivery({}, overrides));
      expect(outcome).toEqual({ kind: 'unanswerable' });
      expect(trace(events)).toEqual(['ack']);
    }
  });
});

describe('cancellation', () => {
  /** Cancels the request as soon as it runs. */
  function cancelWhenRunning(runner: Runner, started: Promise<void>) {
    void started.then(() => runner.cancellations.cancel(ID));
  }

  test('a handler that follows ctx.signal ends the request with CANCELLED', async () => {
    const { events, transport, runner, run } = setup();
    const started = deferred();
    let reason: unknown;
    cancelWhenRunning(runner, started.promise);
    await run(
      (_payload, ctx) =>
        new Promise((_resolve, reject) => {
          ctx.signal.addEventListener('abort', () => {
            reason = ctx.signal.reason;
            reject(new Error('aborted'));
          });
          started.resolve();
        }),
    );
    expect(reason).toBeInstanceOf(TaskError);
    expect((reason as TaskError).code).toBe('CANCELLED');
    expect(trace(events)).toEqual(['error', 'ack']);
    expect(json(transport.replies()[0])).toEqual({ code: 'CANCELLED', message: 'the request was cancelled' });
  });

  test('a handler that ignores cancellation is answered CANCELLED after the grace period', async () => {
    const { events, transport, runner, run } = setup({}, 20);
    const started = deferred();
    cancelWhenRunning(runner, started.promise);
    const never = deferred();
    await run(async () => {
      started.resolve();
      await never.promise;
    });
    expect(trace(events)).toEqual(['error', 'ack']);
    expect(json(transport.replies()[0])).toMatchObject({ code: 'CANCELLED' });
  });

  test('a handler that returns a result within the grace period is answered with it', async () => {
    const { transport, runner, run } = setup({}, 5000);
    const started = deferred();
    cancelWhenRunning(runner, started.promise);
    await run(async (_payload, ctx) => {
      started.resolve();
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      return 'partial';
    });
    expect(transport.replies().map((r) => r.kind)).toEqual(['result']);
    expect(json(transport.replies()[0])).toBe('partial');
  });

  test('chunks after the cancellation fail with CANCELLED; ctx.sleep rejects at once', async () => {
    const { transport, runner, run } = setup();
    const started = deferred();
    cancelWhenRunning(runner, started.promise);
    let chunkError: unknown;
    let sleepError: unknown;
    await run(async (_payload, ctx) => {
      await ctx.chunk('before');
      started.resolve();
      await ctx.sleep(60_000).catch((e: unknown) => (sleepError = e));
      await ctx.chunk('after').catch((e: unknown) => (chunkError = e));
      return 'ignored';
    });
    expect((sleepError as TaskError).code).toBe('CANCELLED');
    expect((chunkError as TaskError).code).toBe('CANCELLED');
    // The handler returned a result, but after its own chunk failed with CANCELLED: it returned it anyway.
    expect(transport.replies().map((r) => r.kind)).toEqual(['chunk', 'result']);
  });

  test('an async generator is stopped at its next yield and runs its finally block', async () => {
    const { events, runner, run } = setup();
    let cleanedUp = false;
    await run(async function* () {
      try {
        yield 1;
        runner.cancellations.cancel(ID);
        yield 2;
        yield 3;
      } finally {
        cleanedUp = true;
      }
    });
    expect(cleanedUp).toBe(true);
    expect(trace(events)).toEqual(['chunk 0', 'error', 'ack']);
  });

  test('a cancellation that arrives before its request stops it before it runs', async () => {
    const { events, transport, runner, run } = setup();
    runner.cancellations.cancel(ID);
    let called = false;
    await run(async () => {
      called = true;
    });
    expect(called).toBe(false);
    expect(trace(events)).toEqual(['error', 'ack']);
    expect(json(transport.replies()[0])).toMatchObject({ code: 'CANCELLED' });
  });

  test('cancellations for other requests do not touch this one', async () => {
    const { transport, runner, run } = setup();
    runner.cancellations.cancel('someone-else');
    await run(async () => 'fine');
    expect(json(transport.replies()[0])).toBe('fine');
  });

  test('early cancellations are bounded', () => {
    let now = 0;
    const cancellations = new Cancellations(() => now);
    for (let i = 0; i < 10_000; i++) cancellations.cancel(`c-${i}`);
    expect(cancellations.remembered).toBe(10_000);
    now = 1;
    cancellations.cancel('one-more');
    expect(cancellations.remembered).toBeLessThanOrEqual(10_000);
    now = 601_000;
    // Old enough to be forgotten: a request with that id runs normally.
    expect(cancellations.register('one-more').signal.aborted).toBe(false);
  });
});

describe('metadata and logs', () => {
  test('the handler sees the request metadata', async () => {
    const { run } = setup();
    let seen: Partial<Context> = {};
    const deadlineMs = Date.now() + 30_000;
    await run(
      async (_payload, ctx) => {
        seen = {
          requestType: ctx.requestType,
          correlationId: ctx.correlationId,
          deadline: ctx.deadline,
          redelivered: ctx.redelivered,
          streams: ctx.streams,
          traceparent: ctx.traceparent,
          identity: ctx.identity,
        };
        expect(ctx.remainingMs()).toBeGreaterThan(0);
        expect(ctx.signal.aborted).toBe(false);
      },
      testDelivery({}, {
        requestType: 'demo.countdown',
        deadlineMs,
        redelivered: true,
        streams: false,
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
        identity: { subject: 'ada', roles: ['admin'] },
      }),
    );
    expect(seen).toEqual({
      requestType: 'demo.countdown',
      correlationId: ID,
      deadline: new Date(deadlineMs),
      redelivered: true,
      streams: false,
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      identity: { subject: 'ada', roles: ['admin'] },
    });
  });

  test('without a type property the route names the request type', async () => {
    const { run } = setup();
    let type = '';
    await run(async (_p, ctx) => (type = ctx.requestType), testDelivery({}, { requestType: undefined }));
    expect(type).toBe('fallback.type');
  });

  test("ctx.log lines carry the correlation id and the traceparent", async () => {
    const { records, run } = setup();
    await run(
      async (_p, ctx) => ctx.log.info('working', { step: 1 }),
      testDelivery({}, { traceparent: '00-abc-def-01' }),
    );
    expect(records.find((r) => r.message === 'working')?.fields).toEqual({
      correlation_id: ID,
      traceparent: '00-abc-def-01',
      step: 1,
    });
  });
});

describe('ack only after every reply is confirmed', () => {
  test('the ack waits for the confirms of every chunk and of the final reply', async () => {
    const events: string[] = [];
    const confirms: Array<(error: Error | undefined) => void> = [];
    const transport: Transport = {
      async publish(reply) {
        events.push(reply.kind);
        const confirmed: Confirmation = new Promise((resolve) => confirms.push(resolve));
        return { confirmed };
      },
    };
    const runner = new Runner({ transport, cancelGraceMs: 100, log: memoryLogger() });
    const done = runner.process(
      testDelivery({}),
      async (_p, ctx) => {
        await ctx.chunk(1);
        return 2;
      },
      async (settlement) => {
        events.push(settlement);
      },
    );
    await until(() => confirms.length === 2, 'both replies published');
    confirms[1]?.(undefined); // the final reply's confirm first
    await new Promise((resolve) => setImmediate(resolve));
    expect(events).toEqual(['chunk', 'result']);
    confirms[0]?.(undefined);
    expect(await done).toEqual({ kind: 'replied', reply: 'result' });
    expect(events).toEqual(['chunk', 'result', 'ack']);
  });

  test('a final reply that cannot be published sends the request back to the queue', async () => {
    const { events, run } = setup({ failPublish: (r) => r.kind === 'result' });
    const outcome = await run(async () => 1);
    expect(outcome.kind).toBe('not-acked');
    expect(trace(events)).toEqual(['requeue']);
  });

  test('a negative confirm sends the request back to the queue', async () => {
    const { events, run } = setup({ nack: (r) => r.kind === 'result' });
    const outcome = await run(async () => 1);
    expect(outcome.kind).toBe('not-acked');
    expect(trace(events)).toEqual(['result', 'requeue']);
  });

  test('a lost chunk sends the request back even if the handler swallows the error', async () => {
    const { events, run } = setup({ failPublish: (r) => r.kind === 'chunk' && r.seq === 1 });
    let chunkError: unknown;
    const outcome = await run(async (_p, ctx) => {
      await ctx.chunk('a');
      await ctx.chunk('b').catch((e: unknown) => (chunkError = e));
      await ctx.chunk('c').catch(() => undefined);
      return 'done';
    });
    expect((chunkError as TaskError).code).toBe('WORKER_ERROR');
    expect(outcome.kind).toBe('not-acked');
    // Nothing after the lost chunk goes out: the request is redone from the start elsewhere.
    expect(trace(events)).toEqual(['chunk 0', 'requeue']);
  });

  test('a failed ack is reported', async () => {
    const transport = new MemoryTransport();
    const runner = new Runner({ transport, cancelGraceMs: 100, log: memoryLogger() });
    const outcome = await runner.process(testDelivery({}), async () => 1, async () => {
      throw new Error('channel closed');
    });
    expect(outcome).toMatchObject({ kind: 'not-acked', error: { message: 'channel closed' } });
  });
});

describe('redeliveries', () => {
  test('a redelivery of a request still running here is adopted: run once, the newest delivery acked', async () => {
    const events: MemoryEvent[] = [];
    const runner = new Runner({ transport: new MemoryTransport(events), cancelGraceMs: 100, log: memoryLogger() });
    const release = deferred();
    let runs = 0;
    const handler: Handler = async () => {
      runs += 1;
      await release.promise;
      return 'once';
    };
    const oldSettle = async () => {
      throw new Error('the channel is closed');
    };
    const first = runner.process(testDelivery({}), handler, oldSettle);
    const second = await runner.process(testDelivery({}, { redelivered: true }), handler, recordingSettle(events, 'new'));
    expect(second).toEqual({ kind: 'adopted' });
    release.resolve();
    expect(await first).toEqual({ kind: 'replied', reply: 'result' });
    expect(runs).toBe(1);
    expect(trace(events)).toEqual(['result', 'ack']);
  });

  test('a redelivery after the reply was confirmed but the ack failed is acked without running', async () => {
    const events: MemoryEvent[] = [];
    const runner = new Runner({ transport: new MemoryTransport(events), cancelGraceMs: 100, log: memoryLogger() });
    let runs = 0;
    const handler: Handler = async () => (runs += 1);
    const failedAck = await runner.process(testDelivery({}), handler, async () => {
      throw new Error('the channel is closed');
    });
    expect(failedAck.kind).toBe('not-acked');
    const again = await runner.process(testDelivery({}, { redelivered: true }), handler, recordingSettle(events, ID));
    expect(again).toEqual({ kind: 'already-answered' });
    expect(runs).toBe(1);
    expect(trace(events)).toEqual(['result', 'ack']);
  });
});

describe('abandoned requests', () => {
  test('abandonAll fires the signal with RequestAbandoned; nothing is replied or acked', async () => {
    const { events, runner, run } = setup();
    const started = deferred();
    let reason: unknown;
    const done = run(async (_p, ctx) => {
      await ctx.chunk('first');
      started.resolve();
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      reason = ctx.signal.reason;
      return 'too late';
    });
    await started.promise;
    runner.abandonAll('the broker session was lost');
    expect(await done).toEqual({ kind: 'abandoned' });
    expect(reason).toBeInstanceOf(RequestAbandoned);
    expect(trace(events)).toEqual(['chunk 0']);
    expect(runner.inFlight).toBe(0);
  });

  test('a request delivered after abandonAll is not run', async () => {
    const { events, runner, run } = setup();
    runner.abandonAll('gone');
    let called = false;
    expect(await run(async () => (called = true))).toEqual({ kind: 'abandoned' });
    expect(called).toBe(false);
    expect(events).toEqual([]);
  });
});
