/**
 * One request, from delivery to ack, independent of AMQP: the part of the SDK that carries
 * the protocol's rules (reply routing and order, ack only after every reply is confirmed,
 * expired deadlines, cancellation with a grace period, handler failures). It mirrors the Rust
 * SDK's `workers/rust/src/runner.rs`. `worker.ts` feeds it deliveries from a broker session;
 * the unit tests and `testing.ts` feed it an in-memory transport.
 */

import { RequestAbandoned, RequestContext, jsonBody, type Context } from './context.js';
import { TaskError, type ErrorBody } from './errors.js';
import type { Fields, Logger } from './log.js';
import { ErrorCodes } from './protocol.js';
import { nextAttempt } from './retry.js';
import type { Delivery, Retry, Settle, Transport } from './transport.js';

/**
 * A handler: gets the parsed JSON payload and the context; returns the result (any JSON value),
 * or throws (`TaskError` for a reported failure). It may stream chunks with `ctx.chunk`, or be
 * an async generator: each `yield` is a chunk and its `return` value the result.
 */
export type Handler<P = any, R = unknown> = (
  payload: P,
  ctx: Context,
) => Promise<R> | R | AsyncIterable<unknown>;

/** What became of a delivery. */
export type Outcome =
  /** The final reply (and every chunk) was confirmed and the request acked. */
  | { kind: 'replied'; reply: 'result' | 'error' }
  /** Its deadline had passed: acked without running the handler. */
  | { kind: 'expired' }
  /** No `reply_to` or `correlation_id`: nobody to answer; acked. */
  | { kind: 'unanswerable' }
  /** A reply was not published or confirmed, or the ack failed: given back to the queue. */
  | { kind: 'not-acked'; error: Error }
  /** The worker gave up on it (connection lost, shutdown grace over): no reply, no ack. */
  | { kind: 'abandoned' }
  /**
   * Delivered again while it still runs here (the broker took the first delivery back when it
   * closed the consumer's channel for its consumer timeout): not started twice; this delivery
   * is settled when the running request ends.
   */
  | { kind: 'adopted' }
  /** Delivered again after its final reply was confirmed here (only its ack failed): acked without running. */
  | { kind: 'already-answered' }
  /** Failed retryably: attempt `attempt` is scheduled in `delayMs` (§3.12) and this delivery acked. */
  | { kind: 'retried'; attempt: number; delayMs: number };

/** How long, and how many, early cancellations are remembered. */
const EARLY_CANCEL_TTL_MS = 600_000;
const EARLY_CANCEL_MAX = 10_000;
/** How long, and how many, requests answered here but not acked are remembered. */
const ANSWERED_TTL_MS = 1_800_000;
const ANSWERED_MAX = 10_000;

/** Correlation ids remembered for a while, at most `max` of them. */
class RecentIds {
  private readonly ids = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly max: number,
    private readonly now: () => number,
  ) {}

  add(id: string): void {
    if (this.ids.size >= this.max) {
      const now = this.now();
      for (const [old, at] of this.ids) if (now - at >= this.ttlMs) this.ids.delete(old);
      if (this.ids.size >= this.max) this.ids.clear();
    }
    this.ids.set(id, this.now());
  }

  /** Whether `id` is remembered (and fresh); forgets it. */
  take(id: string): boolean {
    const at = this.ids.get(id);
    this.ids.delete(id);
    return at !== undefined && this.now() - at < this.ttlMs;
  }

  get size(): number {
    return this.ids.size;
  }
}

/**
 * The abort controllers of the requests running now, plus cancellations that arrived before
 * their request did (it may still wait in the queue or the prefetch buffer). Every worker sees
 * every cancellation (the exchange is a fanout), so most early ones are for other workers'
 * requests: they are kept only for a while.
 */
export class Cancellations {
  private readonly running = new Map<string, AbortController>();
  private readonly early: RecentIds;

  constructor(now: () => number = Date.now) {
    this.early = new RecentIds(EARLY_CANCEL_TTL_MS, EARLY_CANCEL_MAX, now);
  }

  /** A cancellation for `correlationId` arrived. */
  cancel(correlationId: string): void {
    const controller = this.running.get(correlationId);
    if (controller) {
      if (!controller.signal.aborted) controller.abort(TaskError.cancelled());
      return;
    }
    this.early.add(correlationId);
  }

  /** A controller for a request that starts now; already aborted if its cancellation came first. */
  register(correlationId: string): AbortController {
    const controller = new AbortController();
    if (this.early.take(correlationId)) controller.abort(TaskError.cancelled());
    this.running.set(correlationId, controller);
    return controller;
  }

  forget(correlationId: string, controller: AbortController): void {
    if (this.running.get(correlationId) === controller) this.running.delete(correlationId);
  }

  /** Early cancellations remembered now. */
  get remembered(): number {
    return this.early.size;
  }
}

export interface RunnerOptions {
  transport: Transport;
  /** How long a cancelled handler may take to return by itself before it is dropped. */
  cancelGraceMs: number;
  log: Logger;
}

type Settled = { ok: true; value: unknown } | { ok: false; error: unknown };
type Final = { kind: 'result' | 'error'; body: Buffer; error?: TaskError } | 'abandoned';

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator] === 'function'
  );
}

/** Parses a request body; a body that is not UTF-8 JSON is `INVALID_PAYLOAD` (pointer `""`). */
export function parsePayload(body: Buffer): unknown {
  try {
    return JSON.parse(utf8.decode(body));
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw TaskError.invalidPayload([{ pointer: '', message: `the payload is not valid JSON: ${why}` }]);
  }
}

/** Drives an async-generator handler: each yielded value becomes a chunk; the return value is the result. */
async function drive(iterable: AsyncIterable<unknown>, ctx: Context): Promise<unknown> {
  const iterator = iterable[Symbol.asyncIterator]();
  for (;;) {
    const step = await iterator.next();
    if (step.done) return step.value;
    try {
      await ctx.chunk(step.value);
    } catch (error) {
      // Let the generator run its `finally` blocks.
      await iterator.return?.(undefined).catch(() => undefined);
      throw error;
    }
  }
}

/** Calls the handler; never rejects. */
async function invoke(handler: Handler, body: Buffer, ctx: Context): Promise<Settled> {
  try {
    const payload = parsePayload(body);
    let value: unknown = handler(payload, ctx);
    if (!isAsyncIterable(value)) value = await value;
    if (isAsyncIterable(value)) value = await drive(value, ctx);
    return { ok: true, value };
  } catch (error) {
    return { ok: false, error };
  }
}

/** A timer that can be cleared, as a promise. */
function delay(ms: number): { done: Promise<'timeout'>; clear(): void } {
  let timer: NodeJS.Timeout | undefined;
  const done = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return { done, clear: () => clearTimeout(timer) };
}

/** Resolves when `signal` fires; `dispose` removes the listener. */
function aborted(signal: AbortSignal): { done: Promise<'aborted'>; dispose(): void } {
  let listener: (() => void) | undefined;
  const done = new Promise<'aborted'>((resolve) => {
    if (signal.aborted) return resolve('aborted');
    listener = () => resolve('aborted');
    signal.addEventListener('abort', listener, { once: true });
  });
  return { done, dispose: () => listener && signal.removeEventListener('abort', listener) };
}

function errorBody(error: TaskError): Buffer {
  return jsonBody(error.toBody());
}

async function ack(settle: Settle, outcome: Outcome, log: Logger): Promise<Outcome> {
  try {
    await settle('ack');
    return outcome;
  } catch (error) {
    log.warn('ack failed; the broker will redeliver the request', { error: String(error) });
    return { kind: 'not-acked', error: error instanceof Error ? error : new Error(String(error)) };
  }
}

/** Runs deliveries to completion; one per broker session, shared by all its requests. */
export class Runner {
  readonly cancellations: Cancellations;
  private readonly transport: Transport;
  private readonly cancelGraceMs: number;
  private readonly log: Logger;
  /** Fires when the session gives up on every request still running. */
  private readonly giveUp = new AbortController();
  /** The requests running now; `settle` is their latest delivery's (see adoption in `process`). */
  private readonly running = new Map<string, { controller: AbortController; settle: Settle }>();
  /** Final reply confirmed, ack failed: a redelivery is acked without running. */
  private readonly answered = new RecentIds(ANSWERED_TTL_MS, ANSWERED_MAX, Date.now);

  constructor(options: RunnerOptions, cancellations = new Cancellations()) {
    this.transport = options.transport;
    this.cancelGraceMs = options.cancelGraceMs;
    this.log = options.log;
    this.cancellations = cancellations;
  }

  /** Requests whose handlers run now. */
  get inFlight(): number {
    return this.running.size;
  }

  /**
   * Gives up on every request still running: their signals fire with `RequestAbandoned`,
   * and nothing more is published or acked for them (the broker gives them back to the queue
   * when the connection closes). For a lost connection and the end of the shutdown grace.
   */
  abandonAll(reason: string): void {
    if (this.giveUp.signal.aborted) return;
    const why = new RequestAbandoned(reason);
    this.giveUp.abort(why);
    for (const { controller } of this.running.values()) if (!controller.signal.aborted) controller.abort(why);
  }

  /**
   * Runs one delivery with `handler`. Acks it (through `settle`) only after the final reply
   * and every chunk before it are confirmed, or when there is nothing to answer; requeues it
   * when a reply could not be published or confirmed. `requestType` names the request when
   * the message has no `type`.
   *
   * A delivery whose correlation id runs here already is not started again: it came back
   * because the broker took the first one back (it closed the consumer's channel for its
   * consumer timeout) while the handler went on. The running request adopts it and settles
   * it when it ends.
   */
  async process(delivery: Delivery, handler: Handler, settle: Settle, requestType = '', retry?: Retry): Promise<Outcome> {
    const fields: Fields = {};
    if (delivery.correlationId !== undefined) fields.correlation_id = delivery.correlationId;
    if (delivery.traceparent !== undefined) fields.traceparent = delivery.traceparent;
    const log = this.log.child(fields);
    const { correlationId, replyTo } = delivery;
    if (!correlationId || !replyTo) {
      log.warn('request without reply_to or correlation_id: nobody to answer; acked and dropped', {
        reply_to: replyTo,
      });
      return ack(settle, { kind: 'unanswerable' }, log);
    }
    const alreadyRunning = this.running.get(correlationId);
    if (alreadyRunning) {
      alreadyRunning.settle = settle;
      log.warn(
        'delivered again while it still runs here (the broker took the first delivery back, e.g. it closed the ' +
          "channel for its consumer timeout): not started twice; this delivery is acked when the request ends",
      );
      return { kind: 'adopted' };
    }
    if (this.answered.take(correlationId)) {
      log.info('delivered again after its final reply was confirmed here; acked without running');
      return ack(settle, { kind: 'already-answered' }, log);
    }
    if (delivery.deadlineMs !== undefined) {
      const lateBy = Date.now() - delivery.deadlineMs;
      if (lateBy >= 0) {
        log.info('request expired before it started; acked and dropped', { late_by_ms: lateBy });
        return ack(settle, { kind: 'expired' }, log);
      }
    }
    if (this.giveUp.signal.aborted) return { kind: 'abandoned' };

    const controller = this.cancellations.register(correlationId);
    const run = { controller, settle };
    this.running.set(correlationId, run);
    const ctx = new RequestContext({
      requestType: delivery.requestType || requestType,
      correlationId,
      replyTo,
      deadlineMs: delivery.deadlineMs,
      streams: delivery.streams ?? false,
      redelivered: delivery.redelivered ?? false,
      attempt: delivery.attempt ?? 1,
      traceparent: delivery.traceparent,
      identity: delivery.identity,
      controller,
      transport: this.transport,
      log,
    });
    log.debug('request started', { request_type: ctx.requestType, redelivered: ctx.redelivered });
    let final: Final;
    try {
      if (controller.signal.aborted) {
        log.info('request cancelled before it started');
        final = { kind: 'error', body: errorBody(TaskError.cancelled()) };
      } else {
        final = await this.runHandler(handler, delivery.body, ctx, controller, log);
      }
    } catch (error) {
      this.cancellations.forget(correlationId, controller);
      this.running.delete(correlationId);
      throw error;
    }
    this.cancellations.forget(correlationId, controller);
    if (final === 'abandoned' || this.giveUp.signal.aborted) {
      this.running.delete(correlationId);
      log.warn('request abandoned: no reply; the broker will redeliver it', {
        reason: (this.giveUp.signal.reason as Error | undefined)?.message,
      });
      return { kind: 'abandoned' };
    }

    // Until it is settled, a redelivery of this request is adopted (its settle replaces ours).
    try {
      if (final.error && retry) {
        const retried = await this.retry(delivery, final.error, ctx, controller, run, retry, log);
        if (retried) return retried;
      }
      log.debug('final reply', { kind: final.kind });
      const confirms = await ctx.finish(final.kind, final.body);
      let failure = confirms instanceof Error ? confirms : undefined;
      if (!failure && Array.isArray(confirms)) {
        for (const result of await Promise.all(confirms)) failure ??= result;
      }
      if (failure) {
        log.warn('a reply did not reach the broker; the request goes back to the queue', { error: failure.message });
        await this.settleRun(run, 'requeue').catch((error: unknown) =>
          log.debug('requeue failed; the broker requeues the request when its channel closes', {
            error: String(error),
          }),
        );
        return { kind: 'not-acked', error: failure };
      }
      try {
        await this.settleRun(run, 'ack');
        log.debug('request acked');
        return { kind: 'replied', reply: final.kind };
      } catch (error) {
        this.answered.add(correlationId);
        log.warn('the ack did not reach the broker; the reply did, so a redelivery will be acked without running', {
          error: String(error),
        });
        return { kind: 'not-acked', error: error instanceof Error ? error : new Error(String(error)) };
      }
    } finally {
      this.running.delete(correlationId);
    }
  }

  /** Schedules the next attempt when the policy says so; `undefined` when the error is the final reply. */
  private async retry(
    delivery: Delivery,
    error: TaskError,
    ctx: RequestContext,
    controller: AbortController,
    run: { settle: Settle },
    retry: Retry,
    log: Logger,
  ): Promise<Outcome | undefined> {
    const attempt = delivery.attempt ?? 1;
    const next = nextAttempt(delivery.retry, attempt, error, {
      chunksSent: ctx.chunksSent,
      cancelled: controller.signal.aborted,
      deadlineMs: delivery.deadlineMs,
      nowMs: Date.now(),
    });
    if (!next) {
      if (delivery.retry && error.retryable) {
        log.info('attempt failed retryably, but gets no further attempt (attempts used up, chunks streamed, cancelled or past the deadline): the error is the final reply', { attempt, code: error.code });
      }
      return undefined;
    }
    try {
      await retry(next.attempt, next.delayMs);
    } catch (failure) {
      log.warn('the retry could not be scheduled; the request goes back to the queue', { error: String(failure) });
      await this.settleRun(run, 'requeue').catch(() => undefined);
      return { kind: 'not-acked', error: failure instanceof Error ? failure : new Error(String(failure)) };
    }
    log.info('attempt failed retryably; the next one is scheduled', {
      attempt,
      code: error.code,
      message: error.message,
      next_attempt: next.attempt,
      delay_ms: next.delayMs,
    });
    const outcome: Outcome = { kind: 'retried', attempt: next.attempt, delayMs: next.delayMs };
    try {
      await this.settleRun(run, 'ack');
      return outcome;
    } catch (failure) {
      log.warn('the ack did not reach the broker: the attempt may run again', { error: String(failure) });
      return { kind: 'not-acked', error: failure instanceof Error ? failure : new Error(String(failure)) };
    }
  }

  /** Settles the request's latest delivery; if one is adopted while an older one fails, settles that. */
  private async settleRun(run: { settle: Settle }, settlement: 'ack' | 'requeue'): Promise<void> {
    for (;;) {
      const settle = run.settle;
      try {
        await settle(settlement);
        return;
      } catch (error) {
        if (run.settle === settle) throw error;
      }
    }
  }

  /**
   * Runs the handler; once the request is cancelled, gives it the grace period to return by
   * itself, then answers without it. A request the worker gives up on is `abandoned`.
   */
  private async runHandler(
    handler: Handler,
    body: Buffer,
    ctx: Context,
    controller: AbortController,
    log: Logger,
  ): Promise<Final> {
    const running = invoke(handler, body, ctx);
    const stop = aborted(controller.signal);
    let settled = await Promise.race([running, stop.done]);
    stop.dispose();
    if (settled === 'aborted') {
      if (this.giveUp.signal.aborted) return 'abandoned';
      log.info('request cancelled');
      const grace = delay(this.cancelGraceMs);
      const giveUp = aborted(this.giveUp.signal);
      const late = await Promise.race([running, grace.done, giveUp.done]);
      grace.clear();
      giveUp.dispose();
      if (late === 'aborted') return 'abandoned';
      if (late === 'timeout') {
        log.debug('the handler did not stop within the cancel grace period; answered without it');
        return { kind: 'error', body: errorBody(TaskError.cancelled()) };
      }
      settled = late;
    }
    if (settled.ok) {
      try {
        return { kind: 'result', body: jsonBody(settled.value) };
      } catch (error) {
        const why = error instanceof Error ? error.message : String(error);
        return { kind: 'error', body: errorBody(new TaskError(ErrorCodes.WORKER_ERROR, `the result could not be serialised: ${why}`)) };
      }
    }
    // Whatever a cancelled handler fails with, the request failed because it was cancelled.
    if (controller.signal.aborted) return { kind: 'error', body: errorBody(TaskError.cancelled()) };
    const error = this.toTaskError(settled.error, log);
    return { kind: 'error', body: errorBody(error), error };
  }

  private toTaskError(error: unknown, log: Logger): TaskError {
    if (error instanceof TaskError) return error;
    // The stack stays in the worker's log; the client gets the message.
    log.error('the handler failed', { error });
    const message = error instanceof Error ? error.message : String(error);
    return new TaskError(ErrorCodes.WORKER_ERROR, message || 'the worker failed while handling the request');
  }
}
