/**
 * The broker as the worker loop sees it: connect, then a session that makes sure queues
 * exist, publishes replies, listens for cancellations and consumes requests, until it is
 * closed or lost. `amqp.ts` implements it on amqplib; `testing.ts` has an in-memory one, so
 * that reconnection, shutdown and consumer-timeout handling are unit-tested without RabbitMQ.
 */

import type { Delivery, Retry, Settle, Transport } from './transport.js';

/** Queue arguments, e.g. `{ "x-queue-type": "quorum" }`. */
export type QueueArguments = Record<string, string | number | boolean>;

/** The broker refused the connection for good (credentials, virtual host): retrying cannot help. */
export class BrokerRefused extends Error {
  override readonly name = 'BrokerRefused';
}

/** A queue cannot be used (permissions, exclusive to another connection …): retrying cannot help. */
export class QueueUnusable extends Error {
  override readonly name = 'QueueUnusable';
  constructor(
    readonly queue: string,
    reason: string,
  ) {
    super(`queue \`${queue}\` cannot be used: ${reason}`);
  }
}

/** Why a session ended without being closed by the worker. */
export interface SessionLost {
  message: string;
}

/**
 * RabbitMQ closed the consumer's channel because a delivery stayed unacked past its
 * `consumer_timeout` (PRECONDITION_FAILED, "delivery acknowledgement on channel N timed out").
 * Every delivery unacked on that channel went back to its queue; the connection and the other
 * channels are still up.
 */
export interface ConsumerTimeout {
  /** The broker's words. */
  message: string;
  /** The timeout it reports, if it does. */
  timeoutMs: number | undefined;
}

/**
 * Called for each request a consumer receives: `queueIndex` is its queue's index in `consume`'s
 * list; `retry` schedules another attempt of it (§3.12), where the broker supports that.
 */
export type OnDelivery = (queueIndex: number, delivery: Delivery, settle: Settle, retry?: Retry) => void;

export interface BrokerSession {
  /** Resolves (once) when the session can no longer be used: the connection or one of its channels closed. */
  readonly lost: Promise<SessionLost>;
  /**
   * Makes sure `queue` exists. An existing queue is used as it is (the host declares the
   * queues of its request types, with their arguments); a missing one is waited for a while
   * (`queue-wait.ts`: the host may be starting too), then declared durable with `args`. Rejects
   * with `QueueUnusable` when the broker refuses the queue.
   */
  ensureQueue(queue: string, args?: QueueArguments): Promise<void>;
  /** Opens the reply channel (publisher confirms on). */
  openReplies(): Promise<Transport>;
  /** Binds an exclusive, auto-delete queue of this session's own to the cancel fanout exchange and consumes it. */
  consumeCancellations(onCancel: (correlationId: string) => void): Promise<void>;
  /**
   * Consumes `queues` on a new channel with `prefetch` unacked requests per consumer. When the
   * broker closes that channel for its consumer timeout, `onConsumerTimeout` is called instead
   * of the session being lost (the worker may consume again); any other failure loses the session.
   */
  consume(queues: string[], prefetch: number, onDelivery: OnDelivery, onConsumerTimeout: (timeout: ConsumerTimeout) => void): Promise<void>;
  /** Cancels the consumers (`basic.cancel`): no new requests arrive. */
  stopConsuming(): Promise<void>;
  /** Closes the channels and the connection; unacked requests go back to their queues. Never rejects. */
  close(): Promise<void>;
}

export interface Broker {
  /** Opens a session. Rejects with `BrokerRefused` when retrying cannot help, with another error when it may. */
  connect(): Promise<BrokerSession>;
}
