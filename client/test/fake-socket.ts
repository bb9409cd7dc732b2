/**
 * An in-memory stand-in for socket.io-client's `Socket`, injected through `createClient({ io })`.
 * The test plays the host: it connects and drops the socket, answers requests (ack, chunk,
 * result, error), opens sessions and answers `attach` and `tasks` (protocol §4), and sees every event the
 * client emitted and every handshake it sent. Nothing is asynchronous: each call runs the
 * client's handlers at once, so tests need no timing.
 */

import type { Listener, RequestEnvelope, SocketFactory, SocketFactoryOptions, SocketLike } from '../src/socket.js';

export interface Emitted {
  event: string;
  args: unknown[];
}

export class FakeSocket implements SocketLike {
  connected = false;
  active = false;
  /** Everything the client emitted, in order. */
  readonly emitted: Emitted[] = [];
  /** Request id → the ack callback the client passed (removed once called). */
  readonly acks = new Map<string, (ack: unknown) => void>();
  /** Request id → the ack callback of the client's latest `attach` for it (removed once called). */
  readonly attachAcks = new Map<string, (ack: unknown) => void>();
  /** The ack callbacks of the client's `tasks` events not answered yet, oldest first. */
  readonly tasksAcks: Array<(ack: unknown) => void> = [];
  /** The handshake's `auth` of every connection, in order (what socket.io-client would send). */
  readonly handshakes: unknown[] = [];
  /** Events the client emitted while not connected (socket.io-client would buffer them). */
  readonly emittedOffline: Emitted[] = [];
  connectCalls = 0;
  disconnectCalls = 0;
  private readonly listeners = new Map<string, Set<Listener>>();

  constructor(
    readonly url: string | undefined,
    readonly options: SocketFactoryOptions,
    /** Connect as soon as the client asks (like a host that is up). */
    private readonly autoConnect: boolean,
  ) {}

  // --- SocketLike: what the client calls ------------------------------------------------

  on(event: string, listener: Listener): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return this;
  }

  off(event: string, listener: Listener): this {
    this.listeners.get(event)?.delete(listener);
    return this;
  }

  emit(event: string, ...args: unknown[]): this {
    this.emitted.push({ event, args });
    if (!this.connected) this.emittedOffline.push({ event, args });
    if (event === 'request' && typeof args[1] === 'function') {
      const envelope = args[0] as RequestEnvelope;
      this.acks.set(envelope.id, args[1] as (ack: unknown) => void);
    }
    if (event === 'tasks' && typeof args[1] === 'function') this.tasksAcks.push(args[1] as (ack: unknown) => void);
    if (event === 'attach' && typeof args[1] === 'function') {
      const body = args[0] as { id: string };
      this.attachAcks.set(body.id, args[1] as (ack: unknown) => void);
    }
    return this;
  }

  connect(): this {
    this.connectCalls += 1;
    this.active = true;
    if (this.autoConnect) this.serverAccepts();
    return this;
  }

  disconnect(): this {
    this.disconnectCalls += 1;
    const was = this.connected;
    this.connected = false;
    this.active = false;
    if (was) this.fire('disconnect', 'io client disconnect');
    return this;
  }

  // --- The host's side: what tests call ----------------------------------------------------

  /** The connection is up. Like socket.io-client, it first asks an `auth` function for the handshake. */
  serverAccepts(): void {
    const auth = this.options.auth;
    if (typeof auth !== 'function') {
      this.handshakes.push(auth);
      this.accept();
      return;
    }
    // As socket.io-client: the handshake goes out when the function calls back (maybe later);
    // a socket disconnected meanwhile does not connect.
    const attempt = this.disconnectCalls;
    auth((data: object) => {
      if (attempt !== this.disconnectCalls) return;
      this.handshakes.push(data);
      this.accept();
    });
  }

  private accept(): void {
    this.connected = true;
    this.active = true;
    this.fire('connect');
  }

  /** The connection drops; `willRetry` = socket.io-client reconnects by itself. */
  drop(reason = 'transport close', willRetry = true): void {
    this.connected = false;
    this.active = willRetry;
    this.fire('disconnect', reason);
  }

  /** A connection attempt fails; `willRetry` false is a refusal by the host (e.g. `unauthorized`). */
  connectError(message: string, willRetry: boolean): void {
    this.connected = false;
    this.active = willRetry;
    this.fire('connect_error', new Error(message));
  }

  /** The requests the client sent, in order. */
  requests(): RequestEnvelope[] {
    return this.emitted.filter((e) => e.event === 'request').map((e) => e.args[0] as RequestEnvelope);
  }

  lastRequest(): RequestEnvelope {
    const all = this.requests();
    if (all.length === 0) throw new Error('the client sent no request');
    return all[all.length - 1]!;
  }

  /** Ids of the `cancel` events the client sent. */
  cancels(): string[] {
    return this.emitted.filter((e) => e.event === 'cancel').map((e) => (e.args[0] as { id: string }).id);
  }

  ack(id: string, body: unknown = { ok: true }): void {
    this.rawAck(id, body);
  }

  /** Calls the ack callback with exactly `body` (even `undefined`). */
  rawAck(id: string, body: unknown): void {
    const callback = this.acks.get(id);
    if (!callback) throw new Error(`no ack callback for request ${id}`);
    this.acks.delete(id);
    callback(body);
  }

  refuse(id: string, code: string, message: string, details?: unknown): void {
    this.ack(id, { ok: false, error: details === undefined ? { code, message } : { code, message, details } });
  }

  chunk(id: string, seq: number, data: unknown): void {
    this.fire('response', { id, type: 'chunk', seq, data });
  }

  result(id: string, data: unknown): void {
    this.fire('response', { id, type: 'result', data });
  }

  error(id: string, error: unknown): void {
    this.fire('response', { id, type: 'error', error });
  }

  /** The host opens (or resumes) a session: the `session` event of protocol §4.1. */
  session(token: string, resumeWindowMs = 60_000): void {
    this.fire('session', { token, resumeWindowMs });
  }

  /** The `attach` bodies the client sent, in order. */
  attaches(): Array<{ id: string; afterSeq?: number }> {
    return this.emitted.filter((e) => e.event === 'attach').map((e) => e.args[0] as { id: string; afterSeq?: number });
  }

  /** Answers the client's latest `attach` of `id` with exactly `body`. */
  ackAttach(id: string, body: unknown): void {
    const callback = this.attachAcks.get(id);
    if (!callback) throw new Error(`no attach ack callback for request ${id}`);
    this.attachAcks.delete(id);
    callback(body);
  }

  /** How many `tasks` events the client emitted. */
  tasksCalls(): number {
    return this.emitted.filter((e) => e.event === 'tasks').length;
  }

  /** Answers the oldest unanswered `tasks` event with exactly `body`. */
  ackTasks(body: unknown): void {
    const callback = this.tasksAcks.shift();
    if (!callback) throw new Error('no tasks ack callback');
    callback(body);
  }

  /** Any event from the host, with any body (for malformed ones). */
  hostEmits(event: string, ...args: unknown[]): void {
    this.fire(event, ...args);
  }

  /** Any `response` body at all (for malformed ones). */
  respond(body: unknown): void {
    this.fire('response', body);
  }

  listenerCount(event?: string): number {
    if (event !== undefined) return this.listeners.get(event)?.size ?? 0;
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  private fire(event: string, ...args: unknown[]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) listener(...args);
  }
}

/** A socket factory that records the sockets it made. */
export function fakeSocketFactory(options: { autoConnect?: boolean } = {}): SocketFactory & { sockets: FakeSocket[]; last(): FakeSocket } {
  const sockets: FakeSocket[] = [];
  const make = (url: string | undefined, opts: SocketFactoryOptions) => {
    const socket = new FakeSocket(url, opts, options.autoConnect ?? false);
    sockets.push(socket);
    return socket;
  };
  const last = () => {
    const s = sockets[sockets.length - 1];
    if (!s) throw new Error('no socket was made');
    return s;
  };
  return Object.assign(make, { sockets, last });
}
