/**
 * In-memory stand-ins for the broker, for unit tests of handlers and of the SDK itself:
 * `runRequest` runs one handler on a payload and returns what it replied; `MemoryTransport`
 * records replies; `MemoryBroker` plays a whole broker (sessions that can be lost, refused
 * connections, deliveries, cancellations) for the worker loop.
 */

import { BrokerRefused, QueueUnusable, type Broker, type BrokerSession, type ConsumerTimeout, type OnDelivery, type QueueArguments, type SessionLost } from './broker.js';
import type { ErrorBody } from './errors.js';
import { memoryLogger, type Logger } from './log.js';
import { Runner, type Handler, type Outcome } from './runner.js';
import type { Confirmation, Delivery, Reply, Retry, Settle, Settlement, Transport } from './transport.js';

/** What happened, in order: replies handed to the transport and settlements of deliveries. */
export type MemoryEvent =
  | { type: 'reply'; reply: Reply; confirmed: boolean }
  | { type: 'settle'; correlationId: string | undefined; settlement: Settlement };

export interface MemoryTransportOptions {
  /** Replies for which `publish` itself fails (the channel is gone). */
  failPublish?: (reply: Reply) => boolean;
  /** Replies the broker does not confirm (a nack). */
  nack?: (reply: Reply) => boolean;
}

/** Records replies; confirms each at once unless told otherwise. */
export class MemoryTransport implements Transport {
  constructor(
    readonly events: MemoryEvent[] = [],
    private readonly options: MemoryTransportOptions = {},
  ) {}

  async publish(reply: Reply): Promise<{ confirmed: Confirmation }> {
    if (this.options.failPublish?.(reply)) throw new Error('the reply channel is closed');
    const confirmed = !this.options.nack?.(reply);
    this.events.push({ type: 'reply', reply, confirmed });
    return { confirmed: Promise.resolve(confirmed ? undefined : new Error('the broker refused the reply (nack)')) };
  }

  /** The replies so far. */
  replies(correlationId?: string): Reply[] {
    return this.events.flatMap((e) =>
      e.type === 'reply' && (correlationId === undefined || e.reply.correlationId === correlationId) ? [e.reply] : [],
    );
  }
}

/** A settle function that records into `events`. */
export function recordingSettle(events: MemoryEvent[], correlationId: string | undefined): Settle {
  return async (settlement) => {
    events.push({ type: 'settle', correlationId, settlement });
  };
}

/** A well-formed delivery for `payload` (JSON-encoded unless it is a Buffer), deadline a minute away. */
export function testDelivery(payload: unknown, overrides: Partial<Delivery> = {}): Delivery {
  return {
    correlationId: 'test-correlation-id',
    replyTo: 'taskgate.reply.test',
    requestType: 'test',
    deadlineMs: Date.now() + 60_000,
    streams: true,
    redelivered: false,
    body: Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload) ?? 'null', 'utf8'),
    ...overrides,
  };
}

/** What `runRequest` saw the handler reply. */
export interface TestReplies {
  /** The chunks, parsed, in seq order. */
  chunks: unknown[];
  /** The result, when the final reply was one. */
  result?: unknown;
  /** The error body, when the final reply was one. */
  error?: ErrorBody;
  outcome: Outcome;
  /** The next attempts scheduled (§3.12), when the handler failed retryably under `delivery.retry`. */
  retries: { attempt: number; delayMs: number }[];
}

export interface RunRequestOptions {
  /** Cancels the request this many ms after it starts (as a client's cancel would). */
  cancelAfterMs?: number;
  /** Default 200 ms. */
  cancelGraceMs?: number;
  delivery?: Partial<Delivery>;
  logger?: Logger;
}

/** Runs `handler` on `payload` through the SDK's request runner, in memory, and returns its replies. */
export async function runRequest(handler: Handler, payload: unknown, options: RunRequestOptions = {}): Promise<TestReplies> {
  const transport = new MemoryTransport();
  const runner = new Runner({
    transport,
    cancelGraceMs: options.cancelGraceMs ?? 200,
    log: options.logger ?? memoryLogger(),
  });
  const delivery = testDelivery(payload, options.delivery);
  const timer =
    options.cancelAfterMs === undefined
      ? undefined
      : setTimeout(() => runner.cancellations.cancel(delivery.correlationId ?? ''), options.cancelAfterMs);
  const retries: { attempt: number; delayMs: number }[] = [];
  const retry: Retry = async (attempt, delayMs) => {
    retries.push({ attempt, delayMs });
  };
  const outcome = await runner.process(delivery, handler, async () => undefined, delivery.requestType, retry);
  clearTimeout(timer);
  const replies: TestReplies = { chunks: [], outcome, retries };
  for (const reply of transport.replies()) {
    const body: unknown = JSON.parse(reply.body.toString('utf8'));
    if (reply.kind === 'chunk') replies.chunks.push(body);
    else if (reply.kind === 'result') replies.result = body;
    else replies.error = body as ErrorBody;
  }
  return replies;
}

// ---------------------------------------------------------------------------------------
// A whole broker in memory, for the worker loop
// ---------------------------------------------------------------------------------------

/** One session of a `MemoryBroker`: what the worker set up, and handles to act as the broker. */
export class MemorySession implements BrokerSession {
  readonly lost: Promise<SessionLost>;
  private resolveLost!: (lost: SessionLost) => void;
  readonly ensured: Array<{ queue: string; args: QueueArguments | undefined }> = [];
  consuming: string[] = [];
  prefetch: number | undefined;
  closed = false;
  repliesOpen = false;
  private onCancel: ((id: string) => void) | undefined;
  private onDelivery: OnDelivery | undefined;
  private onConsumerTimeout: ((timeout: ConsumerTimeout) => void) | undefined;
  /** Channels the worker opened to consume (1 + one per recovery from a consumer timeout). */
  consumeChannels = 0;

  constructor(private readonly broker: MemoryBroker) {
    this.lost = new Promise((resolve) => {
      this.resolveLost = resolve;
    });
  }

  /** The broker ends the session (connection closed, channel closed for consumer timeout …). */
  lose(lost: SessionLost): void {
    this.consuming = [];
    this.resolveLost(lost);
  }

  async ensureQueue(queue: string, args?: QueueArguments): Promise<void> {
    const refusal = this.broker.unusableQueues.get(queue);
    if (refusal) throw new QueueUnusable(queue, refusal);
    this.ensured.push({ queue, args });
  }

  async openReplies(): Promise<Transport> {
    this.repliesOpen = true;
    return this.broker.transport;
  }

  async consumeCancellations(onCancel: (correlationId: string) => void): Promise<void> {
    this.onCancel = onCancel;
  }

  async consume(
    queues: string[],
    prefetch: number,
    onDelivery: OnDelivery,
    onConsumerTimeout: (timeout: ConsumerTimeout) => void,
  ): Promise<void> {
    this.consumeChannels += 1;
    this.consuming = [...queues];
    this.prefetch = prefetch;
    this.onDelivery = onDelivery;
    this.onConsumerTimeout = onConsumerTimeout;
  }

  /**
   * The broker closes the consuming channel for its consumer timeout: settling the deliveries
   * made so far fails from now on (they went back to the queue), and nothing is consumed until
   * the worker consumes again.
   */
  timeOutConsumer(timeout: ConsumerTimeout = { message: 'delivery acknowledgement on channel 1 timed out', timeoutMs: 1000 }): void {
    this.consuming = [];
    this.channelGeneration += 1;
    this.onConsumerTimeout?.(timeout);
  }

  private channelGeneration = 0;

  async stopConsuming(): Promise<void> {
    this.consuming = [];
  }

  async close(): Promise<void> {
    this.closed = true;
    this.consuming = [];
  }

  /** Delivers a request on `queue`; resolves with how the worker settled it. */
  deliver(queue: string, delivery: Delivery): Promise<Settlement> {
    const index = this.consuming.indexOf(queue);
    if (index < 0 || !this.onDelivery) throw new Error(`nobody consumes ${queue} in this session`);
    const generation = this.channelGeneration;
    return new Promise((resolve, reject) => {
      this.onDelivery?.(index, delivery, async (settlement) => {
        if (this.closed || generation !== this.channelGeneration) {
          reject(new Error('settled on a closed channel'));
          throw new Error('the channel is closed');
        }
        this.broker.events.push({ type: 'settle', correlationId: delivery.correlationId, settlement });
        resolve(settlement);
      });
    });
  }

  /** Announces a cancellation, as the `taskgate.cancel` fanout would. */
  cancel(correlationId: string): void {
    this.onCancel?.(correlationId);
  }
}

/** A broker in memory: counts connections, can refuse or fail them, and keeps every reply and settlement. */
export class MemoryBroker implements Broker {
  readonly events: MemoryEvent[] = [];
  readonly transport: MemoryTransport;
  readonly sessions: MemorySession[] = [];
  /** The next `connect` calls fail with these, in order (a `BrokerRefused` is final). */
  readonly connectFailures: Error[] = [];
  /** Queue → why the broker refuses it. */
  readonly unusableQueues = new Map<string, string>();
  connects = 0;

  constructor(transportOptions: MemoryTransportOptions = {}) {
    this.transport = new MemoryTransport(this.events, transportOptions);
  }

  async connect(): Promise<BrokerSession> {
    this.connects += 1;
    const failure = this.connectFailures.shift();
    if (failure) throw failure;
    const session = new MemorySession(this);
    this.sessions.push(session);
    return session;
  }

  /** The newest session. */
  get session(): MemorySession | undefined {
    return this.sessions[this.sessions.length - 1];
  }

  static refused(message = 'ACCESS_REFUSED'): BrokerRefused {
    return new BrokerRefused(message);
  }
}
