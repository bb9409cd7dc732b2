/**
 * What a handler sees of its request: metadata, a way to stream chunks, cancellation.
 *
 * The context also owns the request's reply sequence: `x-seq` is taken when `chunk` is
 * called and replies are handed to the transport one after the other in that order, so
 * seq follows publish order even when a handler sends chunks without awaiting each; nothing
 * is published after the final reply.
 */

import { TaskError } from './errors.js';
import type { Logger } from './log.js';
import { ErrorCodes, type ReplyKind } from './protocol.js';
import type { Confirmation, Identity, Reply, Transport } from './transport.js';

/** The handler's view of one request. */
export interface Context {
  /** The request type (the message's `type` property), e.g. `demo.countdown`. */
  readonly requestType: string;
  /** The host's correlation id of this request (not the client's id). */
  readonly correlationId: string;
  /** The deadline (header `x-deadline-ms`), if the host set one. */
  readonly deadline: Date | undefined;
  /** Whether RabbitMQ delivered this request before: another worker may have started it and died. */
  readonly redelivered: boolean;
  /** Which attempt this is: 1, then 2, 3 … when the request type's retry policy retries a retryable failure. */
  readonly attempt: number;
  /** Whether the request type streams chunks (header `x-stream`). */
  readonly streams: boolean;
  /** The W3C `traceparent` the host sent with the request, if any. */
  readonly traceparent: string | undefined;
  /**
   * Who sent the request, as the host authenticated them (header `x-identity`); `undefined`
   * when the host runs without authentication. The host already checked the request type's
   * required roles; use it for finer checks (e.g. that a record belongs to `subject`).
   */
  readonly identity: Identity | undefined;
  /**
   * Aborted when the request is cancelled (by the client, a timeout or a disconnect; reason:
   * a `CANCELLED` TaskError), or when the worker gives up on it (the broker connection was lost,
   * or the shutdown grace period ran out; reason: a `RequestAbandoned`). Pass it to `fetch`,
   * timers and child processes; after it fires the handler has the cancel grace period
   * (default 1 s) to return, then the SDK answers `CANCELLED` without it.
   */
  readonly signal: AbortSignal;
  /** Milliseconds left until the deadline (0 once passed; `undefined` without one). */
  remainingMs(): number | undefined;
  /**
   * Sends one partial result (a `chunk` reply with the next `x-seq`); resolves once it is
   * handed to the broker. Throws the `CANCELLED` TaskError once the request is cancelled (so
   * an unhandled throw stops the handler at its next chunk), and a `WORKER_ERROR` TaskError
   * after the final reply, for data that is not JSON, or when the broker connection is lost.
   */
  chunk(data: unknown): Promise<void>;
  /** Waits `ms`; rejects with the signal's reason as soon as the request is cancelled. */
  sleep(ms: number): Promise<void>;
  /** Log lines that carry this request's correlation id (and traceparent). */
  readonly log: Logger;
}

/** The reason `ctx.signal` fires with when the worker gives up on a request (not a client's cancel). */
export class RequestAbandoned extends Error {
  override readonly name = 'RequestAbandoned';
}

export interface ContextParts {
  requestType: string;
  correlationId: string;
  replyTo: string;
  deadlineMs: number | undefined;
  streams: boolean;
  redelivered: boolean;
  attempt?: number;
  traceparent: string | undefined;
  identity: Identity | undefined;
  controller: AbortController;
  transport: Transport;
  log: Logger;
}

/** JSON text of `value` as a reply body (`undefined` is written as `null`). */
export function jsonBody(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value === undefined ? null : value) ?? 'null', 'utf8');
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class RequestContext implements Context {
  readonly requestType: string;
  readonly correlationId: string;
  readonly deadline: Date | undefined;
  readonly redelivered: boolean;
  readonly attempt: number;
  readonly streams: boolean;
  readonly traceparent: string | undefined;
  readonly identity: Identity | undefined;
  readonly signal: AbortSignal;
  readonly log: Logger;
  private readonly replyTo: string;
  private readonly transport: Transport;
  private nextSeq = 0;
  /** The final reply is out (or being sent): no more chunks. */
  private finished = false;
  /** A chunk could not be handed to the broker: the request must not be acked with it missing. */
  private failed: Error | undefined;
  /** Confirmations of the chunks handed over so far, awaited before the request is acked. */
  private readonly pending: Confirmation[] = [];
  /** The last reply handed (or being handed) to the transport: the next one waits for it. */
  private tail: Promise<void> = Promise.resolve();

  constructor(parts: ContextParts) {
    this.requestType = parts.requestType;
    this.correlationId = parts.correlationId;
    this.replyTo = parts.replyTo;
    this.deadline = parts.deadlineMs === undefined ? undefined : new Date(parts.deadlineMs);
    this.streams = parts.streams;
    this.redelivered = parts.redelivered;
    this.attempt = parts.attempt ?? 1;
    this.traceparent = parts.traceparent;
    this.identity = parts.identity;
    this.signal = parts.controller.signal;
    this.transport = parts.transport;
    this.log = parts.log;
  }

  /** Whether a chunk was sent (or is being sent) in this attempt: then it is never retried. */
  get chunksSent(): boolean {
    return this.nextSeq > 0;
  }

  remainingMs(): number | undefined {
    return this.deadline === undefined ? undefined : Math.max(0, this.deadline.getTime() - Date.now());
  }

  /** The error a cancelled or abandoned request's operations fail with. */
  private stopped(): Error {
    const reason: unknown = this.signal.reason;
    return reason instanceof Error ? reason : TaskError.cancelled();
  }

  async chunk(data: unknown): Promise<void> {
    if (this.signal.aborted) throw this.stopped();
    if (this.finished) {
      throw new TaskError(ErrorCodes.WORKER_ERROR, 'the request is already answered: no chunk is sent after the final reply');
    }
    let body: Buffer;
    try {
      body = jsonBody(data);
    } catch (error) {
      throw new TaskError(ErrorCodes.WORKER_ERROR, `the chunk could not be serialised: ${describe(error)}`);
    }
    const reply = this.reply('chunk', body, this.nextSeq++);
    const publishing = this.tail.then(async () => {
      if (this.failed) throw this.failed;
      const { confirmed } = await this.transport.publish(reply);
      this.pending.push(confirmed);
    });
    this.tail = publishing.catch((error: unknown) => {
      this.failed ??= error instanceof Error ? error : new Error(String(error));
    });
    try {
      await publishing;
    } catch (error) {
      throw new TaskError(ErrorCodes.WORKER_ERROR, `the chunk could not be sent: ${describe(error)}`);
    }
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.signal.aborted) {
        reject(this.stopped());
        return;
      }
      const onAbort = () => {
        clearTimeout(timer);
        reject(this.stopped());
      };
      const timer = setTimeout(() => {
        this.signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      this.signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Publishes the final reply after every chunk, and returns the confirmations of all the
   * request's replies, or why they cannot all reach the broker. Chunks fail afterwards.
   */
  async finish(kind: ReplyKind, body: Buffer): Promise<Confirmation[] | Error> {
    this.finished = true;
    await this.tail;
    if (this.failed) return this.failed;
    try {
      const { confirmed } = await this.transport.publish(this.reply(kind, body));
      return [...this.pending, confirmed];
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
  }

  private reply(kind: ReplyKind, body: Buffer, seq?: number): Reply {
    const reply: Reply = { replyTo: this.replyTo, correlationId: this.correlationId, kind, body };
    if (seq !== undefined) reply.seq = seq;
    return reply;
  }
}
