/**
 * What the request runner needs from a broker, as plain types: a delivered request, a reply,
 * somewhere to publish replies and a way to settle (ack / requeue) a delivery. `amqp.ts`
 * implements them on amqplib; `testing.ts` in memory.
 */

import type { ReplyKind } from './protocol.js';
import type { RetryPolicy } from './retry.js';

/** A request message as delivered (protocol §2.2), nothing trusted yet. */
export interface Delivery {
  correlationId?: string | undefined;
  replyTo?: string | undefined;
  /** The message's `type` property: the request type. */
  requestType?: string | undefined;
  /** Header `x-deadline-ms`: Unix milliseconds. */
  deadlineMs?: number | undefined;
  /** Header `x-stream`. */
  streams?: boolean;
  redelivered?: boolean;
  /** Header `traceparent` (W3C trace context), logged with the request. */
  traceparent?: string | undefined;
  /** Header `x-identity`: who the host authenticated (absent without authentication). */
  identity?: Identity | undefined;
  body: Buffer;
  /** Header `x-attempt` (§3.12): 1 for the first attempt. */
  attempt?: number;
  /** Header `x-retry`: the request type's retry policy, if it has one. */
  retry?: RetryPolicy | undefined;
}

/** The client's identity as the host authenticated it (protocol §3.9, header `x-identity`). */
export interface Identity {
  readonly subject: string;
  readonly roles: readonly string[];
}

/** A reply message (protocol §2.3). */
export interface Reply {
  replyTo: string;
  correlationId: string;
  kind: ReplyKind;
  /** `x-seq`, on chunks only. */
  seq?: number;
  body: Buffer;
}

/**
 * The broker's publisher confirm of one reply: resolves with `undefined` once confirmed, or
 * with the reason it was not (a nack, a closed channel). It never rejects, so that a confirm
 * nobody awaits yet cannot become an unhandled rejection.
 */
export type Confirmation = Promise<Error | undefined>;

/**
 * Where replies go. `publish` resolves once the reply is handed to the broker's channel
 * (after waiting for the socket to drain, if it must), in call order, with its confirmation;
 * it rejects when the reply could not be handed over at all. One channel carries all replies,
 * so RabbitMQ keeps them in order.
 */
export interface Transport {
  publish(reply: Reply): Promise<{ confirmed: Confirmation }>;
}

/** What the runner tells the broker about a delivery. */
export type Settlement = 'ack' | 'requeue';

/** Acks a delivery or gives it back to the queue (`basic.nack` with requeue); rejects when it cannot. */
export type Settle = (settlement: Settlement) => Promise<void>;

/**
 * Schedules attempt `attempt` of one delivery after `delayMs` (§3.12): republishes it, confirmed,
 * to the wait queue of that delay; rejects when it could not. The runner acks the delivery afterwards.
 */
export type Retry = (attempt: number, delayMs: number) => Promise<void>;
