/**
 * The client: one Socket.IO connection to a taskgate host, and `request()`, which turns one
 * request of protocol v1 §1 into a promise.
 *
 * Why the rules below (see docs/protocol.md §1, §3.1–3.2, §3.7, §4):
 * - Requests made while (re)connecting wait and go out on `connect`, in the order they were
 *   made. socket.io-client would buffer them by itself, but then a request could be sent on a
 *   connection made long after it was asked for; we keep them in our own map instead, where a
 *   timeout or an AbortSignal can still take them out before they are ever sent.
 * - The handshake asks for a session (§4.1) unless `session: false`. When a connection the host
 *   made resumable (its `session` event) drops, requests already sent wait for the next
 *   connection of the same session and are attached there (resume.ts has the rules); a drop of
 *   any other connection rejects them with `UNAVAILABLE`, as in v1: the host cancels them on
 *   its side (§3.5), and a backend task may not be idempotent, so nothing is ever re-sent.
 * - Each chunk reaches `onChunk` once: one whose `seq` is not above the last one delivered is a
 *   replay after a resume, and is dropped.
 * - Cancelling (AbortSignal, client-side timeout) rejects at once and tells the host with a
 *   `cancel` event (for a request waiting on a resume: once the host has resumed the session);
 *   whatever the host sends later for that id is ignored.
 * - Every request ends once: `settle` removes its map entry, its timer and its abort listener,
 *   whichever way it ends.
 */

import { ConnectionStateStore, type ConnectionState, type StateListener } from './connection-state.js';
import { TaskgateError } from './errors.js';
import type { ChunkOf, KnownRequestType, PayloadOf, ResultOf, UnknownRequestType } from './request-map.js';
import { SessionResume, TokenStore, type ResumableRequest, type ResumeStage, type SessionOptions } from './resume.js';
import {
  EVENTS,
  SESSION_EVENTS,
  defaultSocketFactory,
  type RequestEnvelope,
  type SocketFactory,
  type SocketFactoryOptions,
  type SocketLike,
} from './socket.js';

/**
 * WebSocket first: a session is one connection, so hosts behind a load balancer need no sticky
 * sessions, and it saves the long-polling round trips before an upgrade. Long-polling stays as
 * the fallback for networks that block WebSocket.
 */
const TRANSPORT_DEFAULTS: SocketFactoryOptions = { transports: ['websocket', 'polling'], tryAllTransports: true };

export interface ClientOptions {
  /** The host's URL, e.g. `http://127.0.0.1:8080`; default: the page's own origin. */
  url?: string;
  /** Sent in the handshake (protocol §1: `{ token }`). */
  auth?: { token: string } | Record<string, unknown>;
  /**
   * Resuming after a network blip (protocol §4), on by default: the handshake asks for a session,
   * and requests in flight survive a dropped connection that comes back within the host's resume
   * window. The token is kept in `sessionStorage` when the page has one (else in memory), or where
   * `storage` says. `false`: no session is asked for, and a drop fails requests in flight (v1).
   */
  session?: false | SessionOptions;
  /** Default client-side timeout of every request, in ms (default: none; the host times out each type). */
  timeoutMs?: number;
  /**
   * Passed to socket.io-client's `io()` (transports, path, reconnection …). By default the
   * client connects over WebSocket and falls back to HTTP long-polling only when WebSocket
   * fails (`transports: ['websocket', 'polling'], tryAllTransports: true`).
   */
  socketOptions?: SocketFactoryOptions;
  /** Makes the socket (default: socket.io-client's `io`). Tests inject a fake. */
  io?: SocketFactory;
}

export interface RequestOptions<Chunk = unknown> {
  /** Called for every streamed chunk, in order (`seq` = 0, 1, 2 …). */
  onChunk?: (data: Chunk, seq: number) => void;
  /** Aborting it rejects the request with `CANCELLED` at once and cancels it on the host. */
  signal?: AbortSignal;
  /** Client-side timeout in ms: rejects with `TIMEOUT` and cancels on the host. Overrides the client's. */
  timeoutMs?: number;
  /**
   * A W3C `traceparent` (e.g. from the page's tracing library) that the host forwards to the
   * worker and puts on its log lines, so one request can be followed browser → host → worker
   * (protocol §3.10). Without it, the host starts a new trace. An invalid one is ignored.
   */
  traceparent?: string;
}

/**
 * `request`/`makeBackendRequest`: typed by the request map for known request types, by
 * explicit generics (`<Payload, Result, Chunk>`) for the others.
 */
export interface RequestFunction {
  <K extends KnownRequestType>(
    requestType: K,
    payload: PayloadOf<K>,
    options?: RequestOptions<ChunkOf<K>>,
  ): Promise<ResultOf<K>>;
  <Payload = unknown, Result = unknown, Chunk = unknown, T extends string = string>(
    requestType: UnknownRequestType<T>,
    payload: Payload,
    options?: RequestOptions<Chunk>,
  ): Promise<Result>;
}

/** One request that has not ended yet. */
interface Pending extends ResumableRequest {
  readonly id: string;
  readonly envelope: RequestEnvelope;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: unknown) => void;
  readonly onChunk: ((data: any, seq: number) => void) | undefined;
  /** Emitted to the host (false while it waits for a connection). */
  sent: boolean;
  /** The highest chunk `seq` received (-1: none): later ones at or below it are replays, dropped. */
  lastSeq: number;
  resume: ResumeStage;
  timer: ReturnType<typeof setTimeout> | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export class TaskgateClient {
  /** The underlying socket (socket.io-client's `Socket` unless a factory was injected). */
  readonly socket: SocketLike;
  private readonly defaultTimeoutMs: number | undefined;
  /** Every request not yet ended, in the order they were made. */
  private readonly pending = new Map<string, Pending>();
  private readonly state: ConnectionStateStore;
  private readonly idPrefix = Math.random().toString(36).slice(2, 10);
  private nextId = 0;
  private closed = false;
  private everConnected = false;
  private readonly socketListeners: Array<[string, (...args: any[]) => void]>;
  /** Sessions (protocol §4); undefined with `session: false`. */
  private readonly resume: SessionResume<Pending> | undefined;

  constructor(options: ClientOptions = {}) {
    this.defaultTimeoutMs = options.timeoutMs;
    const socketOptions: SocketFactoryOptions = { ...TRANSPORT_DEFAULTS, ...options.socketOptions };
    if (options.auth !== undefined) socketOptions.auth = options.auth;
    this.state = new ConnectionStateStore('connecting');
    this.socketListeners = [
      ['connect', () => this.onConnect()],
      ['disconnect', (reason: unknown) => this.onDisconnect(String(reason))],
      ['connect_error', (error: unknown) => this.onConnectError(error)],
      [EVENTS.response, (message: unknown) => this.onResponse(message)],
    ];
    if (options.session !== false) {
      const resume = new SessionResume<Pending>(
        {
          emit: (event, ...args) => this.socket.emit(event, ...args),
          requests: () => [...this.pending.values()],
          isPending: (entry) => this.pending.get(entry.id) === entry,
          end: (entry, error, cancelOnHost) => this.end(entry, error, cancelOnHost),
        },
        TokenStore.create(options.session ?? {}, options.url),
      );
      socketOptions.auth = withSessionField(socketOptions.auth, () => resume.handshakeField());
      this.socketListeners.push([SESSION_EVENTS.session, (body: unknown) => resume.onSession(body)]);
      this.resume = resume;
    }
    // Listeners first, then connect: a socket that connects at once must not be missed.
    const socket = (options.io ?? defaultSocketFactory)(options.url, { ...socketOptions, autoConnect: false });
    for (const [event, listener] of this.socketListeners) socket.on(event, listener);
    this.socket = socket;
    socket.connect();
  }

  /** Sends one request; see `RequestFunction`. */
  readonly request: RequestFunction = ((requestType: string, payload: unknown, options: RequestOptions = {}) =>
    this.send(requestType, payload, options)) as RequestFunction;

  get connectionState(): ConnectionState {
    return this.state.get();
  }

  /** Calls `listener` on every change of `connectionState`; returns the function that unsubscribes. */
  subscribe(listener: StateListener): () => void {
    return this.state.subscribe(listener);
  }

  /** How many requests have not ended (waiting for the connection, or sent). */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Rejects every request with `UNAVAILABLE` and closes the connection for good. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.resume?.stop();
    for (const entry of [...this.pending.values()]) {
      this.settle(entry);
      entry.reject(new TaskgateError('UNAVAILABLE', 'the taskgate client was closed'));
    }
    for (const [event, listener] of this.socketListeners) this.socket.off(event, listener);
    this.socket.disconnect();
    this.state.set('disconnected');
  }

  private send(requestType: string, payload: unknown, options: RequestOptions): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new TaskgateError('UNAVAILABLE', 'the taskgate client was closed'));
        return;
      }
      if (options.signal?.aborted) {
        reject(cancelledError());
        return;
      }
      if (this.state.get() === 'disconnected') {
        reject(new TaskgateError('UNAVAILABLE', 'not connected to the taskgate host, and not trying to'));
        return;
      }
      const id = `${this.idPrefix}-${(this.nextId++).toString(36)}`;
      const entry: Pending = {
        id,
        envelope:
          options.traceparent === undefined
            ? { id, requestType, payload }
            : { id, requestType, payload, traceparent: options.traceparent },
        resolve,
        reject,
        onChunk: options.onChunk,
        sent: false,
        lastSeq: -1,
        resume: 'none',
        timer: undefined,
        signal: options.signal,
        onAbort: undefined,
      };
      this.pending.set(id, entry);
      const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
      if (timeoutMs !== undefined) {
        entry.timer = setTimeout(() => {
          this.end(entry, new TaskgateError('TIMEOUT', `no result within ${timeoutMs} ms`, { timeoutMs }), true);
        }, timeoutMs);
      }
      if (entry.signal) {
        entry.onAbort = () => this.end(entry, cancelledError(), true);
        entry.signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      if (this.socket.connected) this.emitRequest(entry);
    });
  }

  private emitRequest(entry: Pending): void {
    entry.sent = true;
    this.socket.emit(EVENTS.request, entry.envelope, (ack: unknown) => this.onAck(entry, ack));
  }

  private onAck(entry: Pending, ack: unknown): void {
    this.resume?.onOtherEvent();
    if (this.pending.get(entry.id) !== entry) return; // ended meanwhile (cancelled, timed out, dropped)
    const a = ack as { ok?: unknown; error?: unknown } | null;
    if (typeof a === 'object' && a !== null && a.ok === true) return; // accepted: responses follow
    if (typeof a === 'object' && a !== null && a.ok === false) {
      this.end(entry, TaskgateError.fromWire(a.error), false);
      return;
    }
    this.end(entry, new TaskgateError('INTERNAL', 'the host sent a malformed acknowledgement', { received: ack }), true);
  }

  private onResponse(message: unknown): void {
    this.resume?.onOtherEvent();
    if (typeof message !== 'object' || message === null) return;
    const m = message as Record<string, unknown>;
    if (typeof m.id !== 'string') return;
    const entry = this.pending.get(m.id);
    if (!entry) return; // ended on our side already: late responses are expected after a cancel
    switch (m.type) {
      case 'chunk': {
        const seq = typeof m.seq === 'number' ? m.seq : Number(m.seq);
        if (Number.isFinite(seq)) {
          if (seq <= entry.lastSeq) return; // a replay after a resume that raced a live chunk: seen already
          entry.lastSeq = seq;
        }
        if (!entry.onChunk) return;
        try {
          entry.onChunk(m.data, seq);
        } catch (error) {
          // The caller's own code failed: end the request with that error, and stop the work.
          this.end(entry, error, true);
        }
        return;
      }
      case 'result':
        this.settle(entry);
        entry.resolve(m.data);
        return;
      case 'error':
        this.end(entry, TaskgateError.fromWire(m.error), false);
        return;
      default:
        return; // not a response type of protocol v1: ignored
    }
  }

  private onConnect(): void {
    this.everConnected = true;
    this.resume?.onConnect();
    this.state.set('connected');
    for (const entry of [...this.pending.values()]) {
      if (!entry.sent && this.pending.get(entry.id) === entry) this.emitRequest(entry);
    }
  }

  private onDisconnect(reason: string): void {
    if (this.closed) return;
    this.resume?.onDisconnect(reason); // parks what a resumable connection carried
    for (const entry of [...this.pending.values()]) {
      if (!entry.sent || entry.resume !== 'none') continue;
      this.end(
        entry,
        new TaskgateError('UNAVAILABLE', `the connection to the taskgate host was lost (${reason})`, { reason }),
        false,
      );
    }
    if (this.socket.active) {
      this.state.set('reconnecting');
    } else {
      this.giveUp(new TaskgateError('UNAVAILABLE', `disconnected from the taskgate host (${reason})`, { reason }));
    }
  }

  private onConnectError(error: unknown): void {
    if (this.closed) return;
    if (this.socket.active) {
      // socket.io-client tries again by itself; waiting requests keep waiting.
      this.state.set(this.everConnected ? 'reconnecting' : 'connecting');
      return;
    }
    // Refused by the host (e.g. `unauthorized`): socket.io-client will not retry.
    const reason = error instanceof Error ? error.message : String(error);
    this.giveUp(new TaskgateError('UNAVAILABLE', `the taskgate host refused the connection: ${reason}`, { reason }));
  }

  /** No connection will come: every waiting request fails. */
  private giveUp(error: TaskgateError): void {
    this.state.set('disconnected');
    this.resume?.stop();
    for (const entry of [...this.pending.values()]) this.end(entry, error, false);
  }

  /**
   * Ends `entry` with `error`; with `cancelOnHost`, tells the host if it has the request: now, or,
   * for a request parked by a drop, once the host has resumed the session.
   */
  private end(entry: Pending, error: unknown, cancelOnHost: boolean): void {
    if (this.pending.get(entry.id) !== entry) return;
    const parked = entry.resume === 'parked';
    this.settle(entry);
    if (cancelOnHost && entry.sent) {
      if (parked) this.resume?.cancelWhenBack(entry.id);
      else if (this.socket.connected) this.socket.emit(EVENTS.cancel, { id: entry.id });
    }
    entry.reject(error);
  }

  /** Forgets `entry`: map entry, timer, abort listener and its part in a resume. */
  private settle(entry: Pending): void {
    this.pending.delete(entry.id);
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    if (entry.signal && entry.onAbort) entry.signal.removeEventListener('abort', entry.onAbort);
    if (entry.resume !== 'none') {
      entry.resume = 'none';
      this.resume?.onEnded();
    }
  }
}

function cancelledError(): TaskgateError {
  return new TaskgateError('CANCELLED', 'the request was cancelled');
}

type AuthOption = SocketFactoryOptions['auth'];

/**
 * The handshake's `auth` as a function, which socket.io-client calls before every (re)connect:
 * the caller's fields (an object, or what their own function gives) plus `session`.
 */
function withSessionField(auth: AuthOption, session: () => string | true): AuthOption {
  return (cb: (data: object) => void) => {
    const send = (fields: object | undefined) => cb({ ...fields, session: session() });
    if (typeof auth === 'function') auth(send);
    else send(auth);
  };
}

/** A client for one taskgate host; it starts connecting at once. */
export function createClient(options: ClientOptions = {}): TaskgateClient {
  return new TaskgateClient(options);
}
