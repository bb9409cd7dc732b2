/**
 * The RabbitMQ side of a worker, on amqplib: one connection per session, with a channel per
 * concern — replies (publisher confirms), cancellations (the `taskgate.cancel` fanout through
 * an exclusive queue of the session's own) and request consumers (prefetch) — plus throwaway
 * channels for queue checks, since a refused declaration closes its channel.
 *
 * Reconnection is done by the worker loop, not amqplib's recovering connection: a lost
 * connection ends the session (its in-flight requests are redelivered by RabbitMQ, and acks
 * on the old channels could not succeed anyway) and a new session declares and consumes afresh.
 */

import { randomUUID } from 'node:crypto';

import amqp from 'amqplib';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';

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
import type { Logger } from './log.js';
import {
  CANCEL_EXCHANGE,
  CONTENT_TYPE_JSON,
  HEADER_ATTEMPT,
  HEADER_DEADLINE_MS,
  HEADER_IDENTITY,
  HEADER_RETRY,
  REPLY_TYPE_RETRY,
  HEADER_SEQ,
  HEADER_STREAM,
  HEADER_TRACEPARENT,
} from './protocol.js';
import { QUEUE_PATIENCE_MS, waitForQueue } from './queue-wait.js';
import { parseRetryPolicy, waitQueue, waitQueueArguments } from './retry.js';
import type { Confirmation, Delivery, Identity, Reply, Retry, Settle, Transport } from './transport.js';

/** How long one connection attempt may take. */
const CONNECT_TIMEOUT_MS = 10_000;

export interface AmqpBrokerOptions {
  url: string;
  connectionName: string;
  log: Logger;
}

/** The AMQP reply code of an amqplib error, if it carries one. */
function replyCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

/** Connection errors that retrying cannot fix: refused credentials or virtual host. */
export function isRefusal(error: unknown): boolean {
  const code = replyCode(error);
  if (code === 403 || code === 530) return true;
  const text = error instanceof Error ? error.message : String(error);
  return /\b(403|530)\b.*\b(ACCESS[-_]REFUSED|NOT[-_]ALLOWED)\b/.test(text) || /ACCESS_REFUSED - Login was refused/.test(text);
}

/**
 * Whether a channel error is RabbitMQ's consumer timeout (a delivery unacked past
 * `consumer_timeout`), and the timeout it reports.
 */
export function consumerTimeout(error: unknown): ConsumerTimeout | undefined {
  const text = error instanceof Error ? error.message : String(error);
  if (!/PRECONDITION[-_]FAILED/.test(text) || !/acknowledgement on channel \d+ timed out/i.test(text)) return undefined;
  const m = /Timeout value used: (\d+) ms/.exec(text);
  return { message: text, timeoutMs: m?.[1] === undefined ? undefined : Number(m[1]) };
}

/** A header that holds an integer, whatever integer type (or decimal string) the publisher chose. */
export function headerInteger(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? Math.trunc(value) : undefined;
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'string' && /^\s*-?\d+\s*$/.test(value)) return Number(value);
  if (value instanceof Date) return value.getTime();
  return undefined;
}

function headerString(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return undefined;
}

/** Header `x-identity` read as `{ subject, roles }`; anything else is no identity. */
function headerIdentity(value: unknown): Identity | undefined {
  const text = headerString(value);
  if (text === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const { subject, roles } = parsed as { subject?: unknown; roles?: unknown };
  if (typeof subject !== 'string' || !Array.isArray(roles) || !roles.every((r) => typeof r === 'string')) {
    return undefined;
  }
  return { subject, roles: roles as string[] };
}

/** The request as the runner sees it. */
export function toDelivery(message: ConsumeMessage): Delivery {
  const properties = message.properties;
  const headers = (properties.headers ?? {}) as Record<string, unknown>;
  return {
    correlationId: typeof properties.correlationId === 'string' ? properties.correlationId : undefined,
    replyTo: typeof properties.replyTo === 'string' ? properties.replyTo : undefined,
    requestType: typeof properties.type === 'string' ? properties.type : undefined,
    deadlineMs: headerInteger(headers[HEADER_DEADLINE_MS]),
    streams: headers[HEADER_STREAM] === true,
    redelivered: message.fields.redelivered,
    traceparent: headerString(headers[HEADER_TRACEPARENT]),
    identity: headerIdentity(headers[HEADER_IDENTITY]),
    body: message.content,
    attempt: Math.max(1, headerInteger(headers[HEADER_ATTEMPT]) ?? 1),
    retry: parseRetryPolicy(headers[HEADER_RETRY]),
  };
}

export class AmqpBroker implements Broker {
  constructor(private readonly options: AmqpBrokerOptions) {}

  async connect(): Promise<BrokerSession> {
    let model: ChannelModel;
    try {
      model = await amqp.connect(this.options.url, {
        // Replies are small and latency-bound: Nagle's algorithm halves throughput.
        noDelay: true,
        timeout: CONNECT_TIMEOUT_MS,
        clientProperties: { connection_name: this.options.connectionName },
      });
    } catch (error) {
      if (isRefusal(error)) throw new BrokerRefused(error instanceof Error ? error.message : String(error));
      throw error;
    }
    return new AmqpSession(model, this.options.log);
  }
}

class AmqpSession implements BrokerSession {
  readonly lost: Promise<SessionLost>;
  private reportLost!: (lost: SessionLost) => void;
  private closing = false;
  /** Long-lived channels, closed in this order before the connection. */
  private readonly channels: Channel[] = [];
  private consumeChannel: Channel | undefined;
  /** The reply channel (publisher confirms): retries are republished on it too. */
  private replyChannel: ConfirmChannel | undefined;
  private readonly consumerTags: string[] = [];

  constructor(
    private readonly model: ChannelModel,
    private readonly log: Logger,
  ) {
    let settled = false;
    this.lost = new Promise((resolve) => {
      this.reportLost = (lost) => {
        if (settled || this.closing) return;
        settled = true;
        resolve(lost);
      };
    });
    model.on('error', (error: Error) => this.reportLost({ message: error.message }));
    model.on('close', (error?: Error) => this.reportLost({ message: error?.message ?? 'the connection was closed' }));
    model.on('blocked', (reason: string) => this.log.warn('the broker blocks publishing (resource alarm)', { reason }));
    model.on('unblocked', () => this.log.info('the broker accepts publishing again'));
  }

  /**
   * A channel whose failure ends the session (`what` names it in the log), unless `survive`
   * says the failure is one the worker recovers from (then the channel is simply dropped).
   */
  private async longLived<C extends Channel>(
    open: Promise<C>,
    what: string,
    survive: (error: Error) => boolean = () => false,
  ): Promise<C> {
    const channel = await open;
    let survived = false;
    channel.on('error', (error: Error) => {
      if (survive(error)) {
        survived = true;
        return;
      }
      this.reportLost({ message: `the ${what} channel failed: ${error.message}` });
    });
    channel.on('close', () => {
      const index = this.channels.indexOf(channel);
      if (index >= 0) this.channels.splice(index, 1);
      if (!survived) this.reportLost({ message: `the ${what} channel was closed` });
    });
    this.channels.push(channel);
    return channel;
  }

  /** A channel for one operation that the broker may refuse (which closes the channel). */
  private async throwaway<T>(op: (channel: Channel) => Promise<T>): Promise<T> {
    const channel = await this.model.createChannel();
    channel.on('error', () => undefined); // the refusal surfaces as op's rejection
    try {
      return await op(channel);
    } finally {
      await channel.close().catch(() => undefined);
    }
  }

  async ensureQueue(queue: string, args?: QueueArguments): Promise<void> {
    // A missing queue is waited for first: the host may be starting too, and declares it with its arguments.
    const exists = await waitForQueue(() => this.queueExists(queue), queue, this.log);
    if (exists && !args) return;
    try {
      await this.throwaway((ch) => ch.assertQueue(queue, { durable: true, ...(args ? { arguments: args } : {}) }));
      if (!exists) this.log.info(`declared the queue (no host declared it within ${QUEUE_PATIENCE_MS / 1000} s)`, { queue });
    } catch (error) {
      if (replyCode(error) === 406) {
        this.log.warn("the queue exists with other arguments than this worker's; using it as it is", {
          queue,
          error: String(error),
        });
        return;
      }
      throw this.queueError(queue, error);
    }
  }

  /** Whether `queue` exists (a passive declaration, on a throwaway channel: a missing queue closes it). */
  private async queueExists(queue: string): Promise<boolean> {
    try {
      await this.throwaway((ch) => ch.checkQueue(queue));
      return true;
    } catch (error) {
      if (replyCode(error) !== 404) throw this.queueError(queue, error);
      return false;
    }
  }

  /** A channel-level refusal about a queue is final; anything else is a lost connection. */
  private queueError(queue: string, error: unknown): Error {
    const code = replyCode(error);
    const text = error instanceof Error ? error.message : String(error);
    if (code !== undefined && code >= 403 && code <= 406) return new QueueUnusable(queue, text);
    return error instanceof Error ? error : new Error(text);
  }

  async openReplies(): Promise<Transport> {
    const channel = await this.longLived(this.model.createConfirmChannel(), 'reply');
    this.replyChannel = channel;
    return new AmqpTransport(channel);
  }

  /**
   * Schedules another attempt of `message` (§3.12): republishes it, with `x-attempt`, on the
   * reply channel (confirmed) to the wait queue of the delay — declared each time on a throwaway
   * channel, as it may have expired since — whose TTL dead-letters it back to `queue`.
   */
  private retrier(message: ConsumeMessage, queue: string): Retry {
    return async (attempt, delayMs) => {
      const waiting = waitQueue(queue, delayMs);
      await this.throwaway((ch) => ch.assertQueue(waiting, { durable: true, arguments: waitQueueArguments(queue, delayMs) }));
      const channel = this.replyChannel;
      if (!channel) throw new Error('no reply channel');
      const p = message.properties;
      const options = {
        contentType: typeof p.contentType === 'string' ? p.contentType : CONTENT_TYPE_JSON,
        persistent: true,
        mandatory: true,
        correlationId: p.correlationId,
        replyTo: p.replyTo,
        type: p.type,
        timestamp: p.timestamp,
        headers: { ...(p.headers ?? {}), [HEADER_ATTEMPT]: attempt },
      };
      await new Promise<void>((resolve, reject) => {
        try {
          channel.publish('', waiting, message.content, options, (error: unknown) =>
            error ? reject(error instanceof Error ? error : new Error('the broker refused the retry (nack)')) : resolve(),
          );
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      });
      // A retry notice for the host's metrics (§3.12). Best effort: the retry itself is what matters.
      if (typeof p.replyTo === 'string' && p.replyTo) {
        try {
          channel.publish('', p.replyTo, Buffer.from(JSON.stringify({ attempt, delayMs })), {
            contentType: CONTENT_TYPE_JSON,
            correlationId: p.correlationId,
            type: REPLY_TYPE_RETRY,
          });
        } catch (error) {
          this.log.debug('retry notice not published', { error: String(error) });
        }
      }
    };
  }

  async consumeCancellations(onCancel: (correlationId: string) => void): Promise<void> {
    const channel = await this.longLived(this.model.createChannel(), 'cancellation');
    await channel.assertExchange(CANCEL_EXCHANGE, 'fanout', { durable: true });
    // Named by us: a server-named queue could not be declared again by name.
    const queue = `${CANCEL_EXCHANGE}.${randomUUID()}`;
    await channel.assertQueue(queue, { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, CANCEL_EXCHANGE, '');
    await channel.consume(
      queue,
      (message) => {
        if (!message) {
          this.reportLost({ message: 'the broker cancelled the cancellation consumer' });
          return;
        }
        const id = message.properties.correlationId;
        if (typeof id === 'string' && id) onCancel(id);
        else this.log.debug('cancellation without correlation_id ignored');
      },
      { noAck: true },
    );
  }

  async consume(
    queues: string[],
    prefetch: number,
    onDelivery: OnDelivery,
    onConsumerTimeout: (timeout: ConsumerTimeout) => void,
  ): Promise<void> {
    const channel = await this.longLived(this.model.createChannel(), 'request consumer', (error) => {
      const timeout = consumerTimeout(error);
      if (!timeout) return false;
      // Its consumers are gone with it; deliveries it still sees are not ours to settle.
      if (this.consumeChannel === channel) {
        this.consumeChannel = undefined;
        this.consumerTags.splice(0);
      }
      setImmediate(() => onConsumerTimeout(timeout));
      return true;
    });
    this.consumeChannel = channel;
    // Per consumer (global = false), as the Rust SDK's basic.qos.
    await channel.prefetch(prefetch, false);
    for (const [index, queue] of queues.entries()) {
      const tag = `taskgate-worker-${randomUUID()}`;
      try {
        await channel.consume(
          queue,
          (message) => {
            if (!message) {
              if (this.consumeChannel === channel) {
                this.reportLost({ message: `the broker cancelled the consumer of queue \`${queue}\` (was it deleted?)` });
              }
              return;
            }
            onDelivery(index, toDelivery(message), settler(channel, message), this.retrier(message, queue));
          },
          { noAck: false, consumerTag: tag },
        );
      } catch (error) {
        throw this.queueError(queue, error);
      }
      this.consumerTags.push(tag);
    }
  }

  async stopConsuming(): Promise<void> {
    const channel = this.consumeChannel;
    if (!channel) return;
    for (const tag of this.consumerTags.splice(0)) await channel.cancel(tag).catch(() => undefined);
  }

  async close(): Promise<void> {
    this.closing = true;
    // One by one before the connection, newest first: the consumers stop before the replies.
    for (const channel of this.channels.reverse()) await channel.close().catch(() => undefined);
    await this.model.close().catch(() => undefined);
  }
}

/** Acks a delivery or gives it back to its queue. amqplib throws when the channel is closed. */
function settler(channel: Channel, message: ConsumeMessage): Settle {
  return async (settlement) => {
    if (settlement === 'ack') channel.ack(message);
    else channel.nack(message, false, true);
  };
}

/** Publishes replies on one confirm-mode channel, in call order. */
class AmqpTransport implements Transport {
  /** The previous publish: the next waits for it (and for the socket to drain, if it had to). */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly channel: ConfirmChannel) {}

  publish(reply: Reply): Promise<{ confirmed: Confirmation }> {
    const publishing = this.tail.then(() => this.publishNow(reply));
    this.tail = publishing.catch(() => undefined);
    return publishing;
  }

  private publishNow(reply: Reply): Promise<{ confirmed: Confirmation }> {
    return new Promise((resolve, reject) => {
      let confirm!: (error: Error | undefined) => void;
      const confirmed: Confirmation = new Promise((r) => {
        confirm = r;
      });
      const options = {
        contentType: CONTENT_TYPE_JSON,
        correlationId: reply.correlationId,
        type: reply.kind,
        ...(reply.seq === undefined ? {} : { headers: { [HEADER_SEQ]: reply.seq } }),
      };
      let flowing: boolean;
      try {
        flowing = this.channel.publish('', reply.replyTo, reply.body, options, (error: unknown) => {
          if (!error) confirm(undefined);
          else confirm(error instanceof Error ? error : new Error('the broker refused the reply (nack)'));
        });
      } catch (error) {
        reject(error instanceof Error ? error : new Error(String(error)));
        return;
      }
      if (flowing) {
        resolve({ confirmed });
        return;
      }
      // The channel's buffer is full: hand over the next reply only once it drains.
      const done = () => {
        this.channel.off('drain', done);
        this.channel.off('close', done);
        resolve({ confirmed });
      };
      this.channel.on('drain', done);
      this.channel.on('close', done);
    });
  }
}
