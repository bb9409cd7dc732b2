/**
 * The worker loop against an in-memory broker: setup of a session, reconnection with backoff,
 * abandoning requests of a lost session, the consumer-timeout alarm, graceful shutdown, and
 * the settings it refuses. Waits are on events (no wall-clock thresholds); the backoff's sleep
 * is injected and records the delays it was asked for.
 */

import { describe, expect, test } from '@jest/globals';

import { BrokerRefused } from '../../src/broker.js';
import { TaskError, WorkerError } from '../../src/errors.js';
import { memoryLogger, type LogRecord } from '../../src/log.js';
import { MemoryBroker, testDelivery, type MemoryEvent } from '../../src/testing.js';
import { createWorker, type Worker, type WorkerOptions } from '../../src/worker.js';
import { deferred, until } from './helpers.js';

interface Harness {
  broker: MemoryBroker;
  worker: Worker;
  records: LogRecord[];
  delays: number[];
  running: Promise<void>;
}

function start(
  configure: (worker: Worker) => void,
  options: WorkerOptions = {},
  connectFailures: Error[] = [],
): Harness {
  const broker = new MemoryBroker();
  broker.connectFailures.push(...connectFailures);
  const records: LogRecord[] = [];
  const delays: number[] = [];
  const worker = createWorker({
    broker,
    logger: memoryLogger(records),
    sleep: async (ms) => {
      delays.push(ms);
    },
    cancelGraceMs: 50,
    ...options,
  });
  configure(worker);
  const running = worker.run({ signals: false });
  running.catch(() => undefined);
  return { broker, worker, records, delays, running };
}

function started(h: Harness, sessions = 1): Promise<void> {
  return until(() => h.worker.consuming && h.broker.sessions.length >= sessions, `session ${sessions} consuming`);
}

function kinds(events: MemoryEvent[]): string[] {
  return events.map((e) => (e.type === 'settle' ? e.settlement : e.reply.kind));
}

describe('a session', () => {
  test('declares nothing itself but checks each queue, opens replies, consumes with the prefetch, answers', async () => {
    const h = start(
      (w) => w.handle('echo', async (p) => p).handle('demo.countdown', async () => ({ done: true })),
      { prefetch: 4, queues: { 'demo.countdown': 'q.countdown' } },
    );
    await started(h);
    const session = h.broker.session!;
    expect(session.ensured.map((e) => e.queue)).toEqual(['taskgate.echo', 'q.countdown']);
    expect(session.repliesOpen).toBe(true);
    expect(session.consuming).toEqual(['taskgate.echo', 'q.countdown']);
    expect(session.prefetch).toBe(4);
    expect(h.records.some((r) => r.message === 'worker ready')).toBe(true);

    expect(await session.deliver('q.countdown', testDelivery({}, { correlationId: 'a' }))).toBe('ack');
    expect(kinds(h.broker.events)).toEqual(['result', 'ack']);
    await h.worker.stop();
    await h.running;
    expect(session.closed).toBe(true);
  });

  test('a cancellation from the broker reaches the running handler', async () => {
    const running = deferred();
    const h = start((w) =>
      w.handle('slow', async (_p, ctx) => {
        running.resolve();
        await ctx.sleep(60_000);
      }),
    );
    await started(h);
    const settled = h.broker.session!.deliver('taskgate.slow', testDelivery({}, { correlationId: 'c-1' }));
    await running.promise;
    h.broker.session!.cancel('c-1');
    expect(await settled).toBe('ack');
    const reply = h.broker.transport.replies('c-1')[0];
    expect(JSON.parse(reply!.body.toString())).toMatchObject({ code: 'CANCELLED' });
    await h.worker.stop();
  });

  test('handlers are registered per request type, with queue overrides per handle()', async () => {
    const h = start((w) => w.handle('a', async () => 1, { queue: 'custom.a', queueArguments: { 'x-queue-type': 'quorum' } }));
    await started(h);
    expect(h.broker.session!.ensured).toEqual([{ queue: 'custom.a', args: { 'x-queue-type': 'quorum' } }]);
    expect(() => h.worker.handle('b', async () => 1)).toThrow(WorkerError);
    await h.worker.stop();
  });
});

describe('reconnection', () => {
  test('an unreachable broker is retried with doubling delays up to 5 s', async () => {
    const failures = Array.from({ length: 8 }, () => new Error('ECONNREFUSED'));
    const h = start((w) => w.handle('echo', async (p) => p), {}, failures);
    await started(h);
    expect(h.delays).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    expect(h.records.filter((r) => r.message.startsWith('broker not available')).length).toBe(h.delays.length);
    await h.worker.stop();
  });

  test('a lost session abandons its requests (no reply, no ack) and a new session consumes again', async () => {
    const running = deferred();
    let aborted: unknown;
    const h = start((w) =>
      w.handle('work', async (_p, ctx) => {
        if (ctx.correlationId !== 'x') return 'served';
        running.resolve();
        await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
        aborted = ctx.signal.reason;
        return 'never sent';
      }),
    );
    await started(h);
    void h.broker.session!.deliver('taskgate.work', testDelivery({}, { correlationId: 'x' })).catch(() => undefined);
    await running.promise;
    h.broker.session!.lose({ message: 'connection reset' });
    await started(h, 2);
    expect((aborted as Error).name).toBe('RequestAbandoned');
    expect(h.broker.sessions[0]!.closed).toBe(true);
    expect(h.broker.events).toEqual([]);
    expect(h.records.some((r) => r.level === 'warn' && r.message.includes('connection reset'))).toBe(true);

    // The new session serves.
    expect(await h.broker.session!.deliver('taskgate.work', testDelivery({}, { correlationId: 'y' }))).toBe('ack');
    expect(kinds(h.broker.events)).toEqual(['result', 'ack']);
    await h.worker.stop();
  });

  test('after a session that got ready, the backoff starts again from 100 ms', async () => {
    const h = start((w) => w.handle('echo', async (p) => p), {}, [new Error('down'), new Error('down')]);
    await started(h);
    expect(h.delays).toEqual([100, 200]);
    h.broker.session!.lose({ message: 'gone' });
    await started(h, 2);
    expect(h.delays).toEqual([100, 200, 100]);
    await h.worker.stop();
  });

  test("after RabbitMQ's consumer timeout the worker logs an error naming the setting, consumes again, and adopts the redelivery", async () => {
    const release = deferred();
    const running = deferred();
    let runs = 0;
    const h = start((w) =>
      w.handle('long', async (_p, ctx) => {
        runs += 1;
        running.resolve();
        await release.promise;
        await ctx.chunk('after the timeout');
        return 'done once';
      }),
    );
    await started(h);
    const session = h.broker.session!;
    // Never settled: the broker took it back with its channel.
    void session.deliver('taskgate.long', testDelivery({}, { correlationId: 'long-1' }));
    await running.promise;
    session.timeOutConsumer({ message: 'PRECONDITION_FAILED - delivery acknowledgement on channel 3 timed out', timeoutMs: 5000 });
    await until(() => session.consumeChannels === 2 && session.consuming.length === 1, 'consuming again');
    const alarm = h.records.find((r) => r.level === 'error');
    expect(alarm?.message).toContain('consumer_timeout (5000 ms)');
    expect(alarm?.message).toContain('x-consumer-timeout');
    expect(alarm?.fields.in_progress).toBe(1);

    // The broker redelivers the request to this worker while it still runs: adopted, not run again.
    const second = session.deliver('taskgate.long', testDelivery({}, { correlationId: 'long-1', redelivered: true }));
    await until(() => h.records.some((r) => r.message.startsWith('delivered again while it still runs here')), 'adoption');
    release.resolve();
    expect(await second).toBe('ack');
    expect(runs).toBe(1);
    expect(kinds(h.broker.events)).toEqual(['chunk', 'result', 'ack']);
    expect(h.broker.sessions).toHaveLength(1);
    await h.worker.stop();
  });

  test('credentials the broker refuses stop the worker at once', async () => {
    const h = start((w) => w.handle('echo', async (p) => p), {}, [new BrokerRefused('403 ACCESS_REFUSED')]);
    await expect(h.running).rejects.toMatchObject({ name: 'WorkerError', kind: 'refused' });
  });

  test('a queue the broker refuses stops the worker at once', async () => {
    const broker = new MemoryBroker();
    broker.unusableQueues.set('taskgate.echo', '403 ACCESS_REFUSED');
    const worker = createWorker({ broker, logger: memoryLogger() }).handle('echo', async (p) => p);
    await expect(worker.run({ signals: false })).rejects.toMatchObject({ kind: 'queue', message: expect.stringContaining('taskgate.echo') });
    expect(broker.sessions[0]?.closed).toBe(true);
  });

  test('stop() while the broker is unreachable ends run()', async () => {
    const h = start(
      (w) => w.handle('echo', async (p) => p),
      { sleep: (_ms, signal) => new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve()))) },
      [new Error('down')],
    );
    await until(() => h.broker.connects >= 1, 'a connection attempt');
    await h.worker.stop();
    await h.running;
    expect(h.broker.sessions.length).toBeLessThanOrEqual(1);
  });
});

describe('graceful shutdown', () => {
  test('stops consuming, finishes the requests in progress, then closes', async () => {
    const release = deferred();
    const running = deferred();
    const h = start((w) =>
      w.handle('work', async (_p, ctx) => {
        running.resolve();
        await release.promise;
        await ctx.chunk('still allowed');
        return 'finished';
      }),
    );
    await started(h);
    const session = h.broker.session!;
    const settled = session.deliver('taskgate.work', testDelivery({}, { correlationId: 'w' }));
    await running.promise;
    let stopped = false;
    const stopping = h.worker.stop().then(() => (stopped = true));
    await until(() => session.consuming.length === 0, 'consumers cancelled');
    expect(stopped).toBe(false);
    expect(session.closed).toBe(false);
    // A delivery that arrives now (prefetched before the cancel) goes straight back.
    session.consuming = ['taskgate.work'];
    expect(await session.deliver('taskgate.work', testDelivery({}, { correlationId: 'late' }))).toBe('requeue');
    release.resolve();
    expect(await settled).toBe('ack');
    await stopping;
    expect(session.closed).toBe(true);
    expect(kinds(h.broker.events)).toEqual(['requeue', 'chunk', 'result', 'ack']);
  });

  test('requests still running when the shutdown grace is over are abandoned', async () => {
    const running = deferred();
    let reason: unknown;
    const h = start(
      (w) =>
        w.handle('stuck', async (_p, ctx) => {
          running.resolve();
          await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
          reason = ctx.signal.reason;
          throw new TaskError('X', 'not sent');
        }),
      { shutdownGraceMs: 10 },
    );
    await started(h);
    void h.broker.session!.deliver('taskgate.stuck', testDelivery({})).catch(() => undefined);
    await running.promise;
    await h.worker.stop();
    expect((reason as Error).name).toBe('RequestAbandoned');
    expect(h.broker.events).toEqual([]);
    expect(h.records.some((r) => r.message.includes('shutdown grace period over'))).toBe(true);
  });
});

describe('settings', () => {
  const refused = async (options: WorkerOptions, configure: (w: Worker) => void = (w) => w.handle('q', async () => 1)) => {
    const worker = createWorker({ logger: memoryLogger(), ...options });
    configure(worker);
    const error = await worker.run({ signals: false }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(WorkerError);
    return (error as WorkerError).message;
  };

  test('bad settings are refused before connecting', async () => {
    expect(await refused({ url: 'http://x' })).toContain('invalid AMQP URL');
    expect(await refused({ url: 'not a url' })).toContain('invalid AMQP URL');
    expect(await refused({ prefetch: 0 })).toContain('prefetch');
    expect(await refused({ prefetch: 1.5 })).toContain('prefetch');
    expect(await refused({}, () => undefined)).toContain('no handlers');
    expect(await refused({}, (w) => w.handle('a', async () => 1, { queue: 'q' }).handle('b', async () => 1, { queue: 'q' }))).toContain(
      'two handlers',
    );
    expect(await refused({}, (w) => w.handle('a', async () => 1, { queue: '' }))).toContain('1 to 255 bytes');
    expect(await refused({}, (w) => w.handle('a', async () => 1, { queue: 'é'.repeat(128) }))).toContain('1 to 255 bytes');
  });
});
