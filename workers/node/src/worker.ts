/**
 * The worker: handlers per request type, and the loop that keeps a broker session going —
 * connect (with backoff while the broker is away), serve until the session is lost or the
 * worker is asked to stop, then drain gracefully. Mirrors `Worker::run` of the Rust SDK
 * (workers/rust/src/amqp.rs); the broker itself is behind `Broker` (amqp.ts on amqplib).
 */

import { AmqpBroker } from './amqp.js';
import {
  BrokerRefused,
  QueueUnusable,
  type Broker,
  type BrokerSession,
  type ConsumerTimeout,
  type OnDelivery,
  type QueueArguments,
  type SessionLost,
} from './broker.js';
import { WorkerError } from './errors.js';
import { consoleLogger, type Logger } from './log.js';
import { defaultQueue } from './protocol.js';
import type { Context } from './context.js';
import { Runner, type Handler } from './runner.js';

/** The RabbitMQ of a development machine. */
export const DEFAULT_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672/%2f';
export const DEFAULT_PREFETCH = 16;
export const DEFAULT_CANCEL_GRACE_MS = 1000;
export const DEFAULT_SHUTDOWN_GRACE_MS = 30_000;
const FIRST_RETRY_DELAY_MS = 100;
const MAX_RETRY_DELAY_MS = 5000;

export interface WorkerOptions {
  /** The broker, e.g. `amqp://user:password@host:5672/%2f`. Default: `TASKGATE_AMQP_URL`, else `DEFAULT_AMQP_URL`. */
  url?: string;
  /** Requests of each queue handled at once (the consumer's prefetch, 1 to 65535). Default 16. */
  prefetch?: number;
  /** Request type → queue, for request types whose queue is not `taskgate.<type>`. */
  queues?: Record<string, string>;
  /** How long a cancelled handler may take to return by itself. Default 1 s. */
  cancelGraceMs?: number;
  /** How long shutdown waits for requests in progress; the rest are redelivered elsewhere. Default 30 s. */
  shutdownGraceMs?: number;
  logger?: Logger;
  /** The connection name shown by RabbitMQ's management tools. Default `taskgate-worker-node`. */
  connectionName?: string;
  /** The broker (default: RabbitMQ through amqplib at `url`); tests pass an in-memory one. */
  broker?: Broker;
  /** Waits between connection attempts (tests pass one that does not wait). */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export interface HandleOptions {
  /** The queue to consume (default: `queues[type]` of the worker's options, else `taskgate.<type>`). */
  queue?: string;
  /** Arguments to declare the queue with if it does not exist (the host normally declares it). */
  queueArguments?: QueueArguments;
}

export interface RunOptions {
  /** Stop gracefully on SIGTERM and SIGINT (a second signal exits at once). Default true. */
  signals?: boolean;
}

interface Route {
  requestType: string;
  queue: string;
  queueArguments: QueueArguments | undefined;
  handler: Handler;
}

/** Waits `ms`, or less if `signal` fires. */
function interruptibleSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A promise that settles when `signal` fires. */
function whenAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

/** `node v22.1.0` or `bun 1.2.3`: which JavaScript runtime serves. */
function runtime(): string {
  const bun = (process.versions as Record<string, string | undefined>).bun;
  return bun ? `bun ${bun}` : `node ${process.version}`;
}

/** The payload, result and chunk types of one request type. */
export interface RequestTypeEntry {
  payload: unknown;
  result: unknown;
  chunk: unknown;
}

/**
 * Request types → their entries: the interface `TaskgateRequestTypes` that `taskgate-codegen --target node-worker`
 * generates (an interface has no index signature, hence the mapped constraint).
 */
export type RequestTypeMap<M> = { [K in keyof M]: RequestTypeEntry };

/**
 * A handler of request type `T` of a generated map: its payload is `T['payload']`; it returns `T['result']`, or is
 * an async generator yielding `T['chunk']`s and returning `T['result']`.
 */
export type TypedHandler<T extends RequestTypeEntry> = (
  payload: T['payload'],
  ctx: Context,
) => Promise<T['result']> | T['result'] | AsyncGenerator<T['chunk'], T['result'], undefined>;

/** A worker whose `handle` takes only the request types of `M`, each with its typed handler (`Worker.typed`). */
export interface TypedWorker<M extends RequestTypeMap<M>> extends Omit<Worker, 'handle' | 'typed'> {
  handle<K extends keyof M & string>(requestType: K, handler: TypedHandler<M[K]>, options?: HandleOptions): this;
}

export class Worker {
  private readonly routes: Route[] = [];
  private readonly options: WorkerOptions;
  private readonly log: Logger;
  private readonly stopSignal = new AbortController();
  /** Settles on `stop()`; one promise (one listener) however many sessions race against it. */
  private readonly stopRequested = whenAborted(this.stopSignal.signal);
  private running: Promise<void> | undefined;
  private consumingNow = false;

  constructor(options: WorkerOptions = {}) {
    this.options = options;
    this.log = options.logger ?? consoleLogger();
  }

  /** Whether the worker consumes its queues right now (between `worker ready` and a loss or shutdown). */
  get consuming(): boolean {
    return this.consumingNow;
  }

  /**
   * Serves `requestType` with `handler`: `worker.handle("demo.countdown", async (payload, ctx) => …)`.
   * The handler gets the parsed JSON payload; it returns the result, throws a `TaskError` (or
   * anything else: `WORKER_ERROR`), and may stream with `ctx.chunk` or be an async generator.
   */
  handle<P = any>(requestType: string, handler: Handler<P>, options: HandleOptions = {}): this {
    if (this.running) throw new WorkerError('config', 'handlers must be registered before run()');
    this.routes.push({
      requestType,
      queue: options.queue ?? this.options.queues?.[requestType] ?? defaultQueue(requestType),
      queueArguments: options.queueArguments,
      handler: handler as Handler,
    });
    return this;
  }

  /**
   * This worker, typed by the map `M` that `taskgate-codegen --target node-worker` generates from `taskgate schemas`:
   * `createWorker().typed<TaskgateRequestTypes>().handle('text.wordcount', async (payload) => …)` — a misspelt type,
   * a wrong use of the payload or a wrong result does not compile. The same object: nothing changes at run time.
   */
  typed<M extends RequestTypeMap<M>>(): TypedWorker<M> {
    return this as unknown as TypedWorker<M>;
  }

  /**
   * Serves until `stop()` (or SIGTERM / SIGINT): then stops consuming, lets the requests in
   * progress finish (up to the shutdown grace) and closes the connection. Connects with
   * backoff while the broker is unreachable and reconnects whenever the connection is lost.
   * Logs `worker ready` whenever it consumes. Rejects with a `WorkerError` at once for a bad
   * configuration, credentials or virtual host the broker refuses, or a queue it cannot use.
   */
  run(options: RunOptions = {}): Promise<void> {
    if (this.running) return this.running;
    this.running = this.runWithSignals(options.signals ?? true);
    return this.running;
  }

  /** Asks the worker to stop gracefully; resolves when it has. */
  async stop(): Promise<void> {
    this.stopSignal.abort();
    await this.running?.catch(() => undefined);
  }

  private async runWithSignals(signals: boolean): Promise<void> {
    if (!signals) return this.loop();
    let received = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      received += 1;
      if (received > 1) {
        this.log.warn('second signal: exiting without waiting for requests in progress', { signal });
        process.exit(130);
      }
      this.log.info('signal received: stopping gracefully', { signal });
      this.stopSignal.abort();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    try {
      await this.loop();
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    }
  }

  private check(): { url: string; prefetch: number } {
    const url = this.options.url ?? process.env.TASKGATE_AMQP_URL ?? DEFAULT_AMQP_URL;
    if (!this.options.broker) {
      let protocol: string;
      try {
        protocol = new URL(url).protocol;
      } catch {
        throw new WorkerError('config', `invalid AMQP URL: ${url}`);
      }
      if (protocol !== 'amqp:' && protocol !== 'amqps:') {
        throw new WorkerError('config', `invalid AMQP URL: ${url} (expected amqp:// or amqps://)`);
      }
    }
    const prefetch = this.options.prefetch ?? DEFAULT_PREFETCH;
    if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > 65535) {
      throw new WorkerError('config', `prefetch must be an integer from 1 to 65535, not ${prefetch}`);
    }
    if (this.routes.length === 0) throw new WorkerError('config', 'no handlers registered');
    this.routes.forEach((route, i) => {
      const bytes = Buffer.byteLength(route.queue);
      if (bytes === 0 || bytes > 255) {
        throw new WorkerError('config', `queue name \`${route.queue}\` must be 1 to 255 bytes long`);
      }
      const earlier = this.routes.slice(0, i);
      if (earlier.some((r) => r.queue === route.queue)) {
        throw new WorkerError('config', `queue \`${route.queue}\` has two handlers`);
      }
      if (earlier.some((r) => r.requestType === route.requestType)) {
        throw new WorkerError('config', `request type \`${route.requestType}\` has two handlers`);
      }
    });
    return { url, prefetch };
  }

  private async loop(): Promise<void> {
    const { url, prefetch } = this.check();
    const broker =
      this.options.broker ??
      new AmqpBroker({ url, connectionName: this.options.connectionName ?? 'taskgate-worker-node', log: this.log });
    const sleep = this.options.sleep ?? interruptibleSleep;
    const stop = this.stopSignal.signal;
    let delayMs = FIRST_RETRY_DELAY_MS;
    let attempt = 0;
    while (!stop.aborted) {
      attempt += 1;
      let session: BrokerSession;
      try {
        const connecting = broker.connect();
        const first = await Promise.race([connecting, this.stopRequested.then(() => undefined)]);
        if (!first) {
          void connecting.then((late) => late.close(), () => undefined);
          return;
        }
        session = first;
      } catch (error) {
        if (error instanceof BrokerRefused) throw new WorkerError('refused', `the broker refused the connection: ${error.message}`);
        this.log.warn(`broker not available: ${message(error)}`, { attempt, retry_in_ms: delayMs });
        await sleep(delayMs, stop);
        delayMs = Math.min(delayMs * 2, MAX_RETRY_DELAY_MS);
        continue;
      }
      this.log.debug('connected to the broker', { attempt });
      const progress = { ready: false };
      const end = await this.serve(session, prefetch, progress);
      if (end === 'shutdown') return;
      if (progress.ready) {
        attempt = 0;
        delayMs = FIRST_RETRY_DELAY_MS;
      }
      this.log.warn(`lost the broker connection: ${end.message}`, { retry_in_ms: delayMs });
      await sleep(delayMs, stop);
      delayMs = Math.min(delayMs * 2, MAX_RETRY_DELAY_MS);
    }
  }

  /** One session: set up, consume until lost or stopped, then drain. */
  private async serve(
    session: BrokerSession,
    prefetch: number,
    progress: { ready: boolean },
  ): Promise<'shutdown' | SessionLost> {
    const stopped = this.stopRequested.then(() => 'stop' as const);
    let runner: Runner | undefined;
    const tasks = new Set<Promise<void>>();
    let draining = false;

    // A failure the worker noticed itself (consuming again after a consumer timeout failed).
    let fail!: (lost: SessionLost) => void;
    const failed = new Promise<SessionLost>((resolve) => {
      fail = resolve;
    });
    const lost = Promise.race([session.lost, failed]);
    let onDelivery: OnDelivery | undefined;
    const queues = this.routes.map((r) => r.queue);
    const onConsumerTimeout = (timeout: ConsumerTimeout) => {
      this.log.error(
        'RABBITMQ CONSUMER TIMEOUT: the broker closed the consuming channel because a request stayed unacknowledged ' +
          `longer than its consumer_timeout${timeout.timeoutMs === undefined ? '' : ` (${timeout.timeoutMs} ms)`}. ` +
          'Every request unacked on that channel went back to its queue and is redelivered. The requests in progress ' +
          'here go on and still reply; their redeliveries to this worker are adopted, not run twice (another worker may ' +
          'run them again). Raise consumer_timeout above the longest task: rabbitmq.conf `consumer_timeout`, or per ' +
          'queue on RabbitMQ 3.12+ the `x-consumer-timeout` argument or the `consumer-timeout` policy key.',
        { broker_message: timeout.message, timeout_ms: timeout.timeoutMs, in_progress: runner?.inFlight },
      );
      if (draining || !onDelivery) return;
      session.consume(queues, prefetch, onDelivery, onConsumerTimeout).then(
        () => this.log.warn('consuming again after the consumer timeout; requests in progress go on'),
        (error: unknown) => fail({ message: `consuming again after the consumer timeout failed: ${message(error)}` }),
      );
    };

    const setup = (async () => {
      for (const route of this.routes) await session.ensureQueue(route.queue, route.queueArguments);
      const transport = await session.openReplies();
      const sessionRunner = new Runner({
        transport,
        cancelGraceMs: this.options.cancelGraceMs ?? DEFAULT_CANCEL_GRACE_MS,
        log: this.log,
      });
      runner = sessionRunner;
      // Before the request consumers: a request must not start before its cancellation could reach it.
      await session.consumeCancellations((id) => {
        this.log.debug('cancellation', { correlation_id: id });
        sessionRunner.cancellations.cancel(id);
      });
      onDelivery = (index, delivery, settle, retry) => {
        const route = this.routes[index];
        if (!route || draining) {
          // Arrived after the consumers were cancelled: straight back to the queue, for another worker.
          void settle('requeue').catch(() => undefined);
          return;
        }
        const task = sessionRunner
          .process(delivery, route.handler, settle, route.requestType, retry)
          .then(
            () => undefined,
            (error: unknown) => this.log.error('request processing failed', { error }),
          )
          .finally(() => tasks.delete(task));
        tasks.add(task);
      };
      await session.consume(queues, prefetch, onDelivery, onConsumerTimeout);
      return 'ready' as const;
    })();
    setup.catch(() => undefined);

    let first: 'ready' | 'stop' | SessionLost;
    try {
      first = await Promise.race([setup, lost, stopped]);
    } catch (error) {
      await session.close();
      if (error instanceof QueueUnusable) throw new WorkerError('queue', error.message);
      return { message: `setting up the session failed: ${message(error)}` };
    }
    if (first !== 'ready') {
      runner?.abandonAll(first === 'stop' ? 'the worker is stopping' : `the broker session was lost: ${first.message}`);
      await session.close();
      return first === 'stop' ? 'shutdown' : first;
    }

    progress.ready = true;
    this.consumingNow = true;
    this.log.info('worker ready', { queues, prefetch, runtime: runtime() });
    const end = await Promise.race([lost, stopped]);
    if (end !== 'stop') {
      this.consumingNow = false;
      runner?.abandonAll(`the broker session was lost: ${end.message}`);
      await session.close();
      return end;
    }

    draining = true;
    this.consumingNow = false;
    this.log.info('shutting down: no new requests; finishing the ones in progress', { in_flight: tasks.size });
    await Promise.race([session.stopConsuming().catch(() => undefined), lost]);
    const graceMs = this.options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'grace'>((resolve) => {
      timer = setTimeout(() => resolve('grace'), graceMs);
    });
    const drained = await Promise.race([Promise.all([...tasks]).then(() => 'drained' as const), graceOver, lost]);
    clearTimeout(timer);
    if (drained === 'grace') {
      this.log.warn('shutdown grace period over; unfinished requests will be redelivered', { abandoned: tasks.size });
      runner?.abandonAll('the shutdown grace period is over');
    } else if (drained !== 'drained') {
      this.log.warn(`lost the broker connection while shutting down: ${drained.message}`, { abandoned: tasks.size });
      runner?.abandonAll(`the broker session was lost: ${drained.message}`);
    }
    await Promise.all([...tasks]);
    await session.close();
    this.log.info('worker stopped');
    return 'shutdown';
  }
}

/** A worker: `createWorker({ url, prefetch }).handle("echo", async (payload) => payload).run()`. */
export function createWorker(options: WorkerOptions = {}): Worker {
  return new Worker(options);
}
