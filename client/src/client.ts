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
 * - Tasks (§4.3): a `detach: true` request, or one followed with `attach(id)`, is kept by the
 *   host without a resume window, so it waits for the next session however long the client is
 *   away, and is attached there (for a different session too: with authentication the owner is
 *   the user, and a host that says no answers `TASK_NOT_FOUND`). A caller-chosen `id` makes a
 *   retry safe: the host answers a known id like an attach, chunks from seq 0, so the new entry's
 *   exactly-once bookkeeping needs nothing special. `releaseSignal` stops following a request
 *   here without cancelling it on the host (a page leaving a task it may attach to again).
 */

import { ConnectionStateStore, type ConnectionState, type StateListener } from './connection-state.js';
import { TaskgateError } from './errors.js';
import type { ChunkOf, KnownRequestType, PayloadOf, ResultOf, UnknownRequestType } from './request-map.js';
import { SessionResume, TokenStore, type ResumableRequest, type ResumeStage, type SessionOptions } from './resume.js';
import {
  EVENTS,
  SERVER_DISCONNECT,
  SESSION_EVENTS,
  defaultSocketFactory,
  type AttachBody,
  type RequestEnvelope,
  type SocketFactory,
  type SocketFactoryOptions,
  type SocketLike,
} from './socket.js';
import { readTasksAck, type TaskInfo } from './tasks.js';

/** Request ids are 1 to 128 characters (protocol §1, counted in Unicode characters as in §3.1). */
const MAX_ID_CHARS = 128;

/**
 * WebSocket first: a session is one connection, so hosts behind a load balancer need no sticky
 * sessions, and it saves the long-polling round trips before an upgrade. Long-polling stays as
 * the fallback for networks that block WebSocket.
 */
const TRANSPORT_DEFAULTS: SocketFactoryOptions = { transports: ['websocket', 'polling'], tryAllTransports: true };

export interface ClientOptions {
  /** The host's URL, e.g. `http://127.0.0.1:8080`; default: the page's own origin. */
  url?: string;
  /**
   * Sent in the handshake (protocol §1: `{ token }`). A function (sync or async) is called before
   * every (re)connect for a fresh token — a string (the token) or the fields. With tokens that
   * expire, give a function: the host closes a connection when its token expires (§3.9), and the
   * client then reconnects by itself with what the function gives (requests of a session are
   * resumed). A function that throws or rejects ends the client: requests fail `UNAVAILABLE`.
   */
  auth?: AuthFields | AuthCallback;
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

/** The handshake's fields: `{ token }` (protocol §1), or whatever the host's auth expects. */
export type AuthFields = { token: string } | Record<string, unknown>;

/** Gives the handshake's token (a string) or fields, before every (re)connect. */
export type AuthCallback = () => string | AuthFields | PromiseLike<string | AuthFields>;

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
  /**
   * A task (protocol §4.3): the host keeps it running when the page goes away, until it ends or
   * times out, and keeps its outcome for `resultTtlMs`; `client.tasks()` lists it and
   * `client.attach(id)` follows it again, e.g. after a reload. While disconnected, the promise
   * waits for the next connection however long it takes (no resume window). Needs a session.
   */
  detach?: boolean;
  /**
   * The request id (1–128 characters), instead of a generated one: sending it again — after
   * `UNAVAILABLE`, or from a reloaded page — follows the request the host already has under that
   * id rather than running the work twice (protocol §4.3). `DUPLICATE_ID` (locally) while this
   * client already has a request with that id.
   */
  id?: string;
  /**
   * Aborting it stops following the request here, without cancelling it on the host: the promise
   * rejects with `CANCELLED` (`details: { released: true }`) and nothing more is delivered. For
   * tasks a page leaves running (attach to them again by id); use `signal` to stop the work.
   */
  releaseSignal?: AbortSignal;
}

/** `client.attach(id, options)`: follow a task the owner has (protocol §4.2–4.3). */
export interface AttachOptions<Chunk = unknown> extends Pick<RequestOptions<Chunk>, 'onChunk' | 'signal' | 'releaseSignal'> {
  /**
   * Client-side timeout in ms: rejects with `TIMEOUT` and cancels the task on the host. The
   * client's default `timeoutMs` does not apply: a task may have run long before it is attached.
   */
  timeoutMs?: number;
  /** Chunks after this `seq` are delivered (default -1: every chunk the host kept, from seq 0). */
  afterSeq?: number;
  /**
   * The host no longer had the chunks before `firstSeq` (it keeps a bounded amount per task).
   * Not an error for an attach: a page that reattaches wants the progress, not every chunk; the
   * chunks from `firstSeq` on follow. Also called when a resume after a blip finds such a gap.
   */
  onGap?: (firstSeq: number) => void;
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

/** How an entry starts on the host: a `request`, or an `attach` to a task it has. */
type Start = { readonly kind: 'request'; readonly envelope: RequestEnvelope } | { readonly kind: 'attach'; readonly afterSeq: number };

/** One request (or attached task) that has not ended yet. */
interface Pending extends ResumableRequest {
  readonly id: string;
  readonly start: Start;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: unknown) => void;
  readonly onChunk: ((data: any, seq: number) => void) | undefined;
  readonly onGap: ((firstSeq: number) => void) | undefined;
  readonly detached: boolean;
  /** Emitted to the host (false while it waits for a connection). */
  sent: boolean;
  /** The highest chunk `seq` received (-1: none): later ones at or below it are replays, dropped. */
  lastSeq: number;
  resume: ResumeStage;
  timer: ReturnType<typeof setTimeout> | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  releaseSignal: AbortSignal | undefined;
  onRelease: (() => void) | undefined;
}

/** A `tasks()` call not answered yet. */
interface TasksCall {
  readonly resolve: (tasks: TaskInfo[]) => void;
  readonly reject: (error: unknown) => void;
  /** The connection it was emitted on (see `connection`); undefined while it waits for one. */
  emittedOn: number | undefined;
  timer: ReturnType<typeof setTimeout> | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** `client.tasks(options)`. */
export interface TasksOptions {
  /** Aborting it rejects with `CANCELLED` at once. */
  signal?: AbortSignal;
  /** Rejects with `TIMEOUT` when no answer came in time (default: the client's `timeoutMs`). */
  timeoutMs?: number;
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
  /** The host said this connection's token expired: its disconnect is to be followed by a reconnect. */
  private tokenExpired = false;
  /** Counts connections: an ack from an earlier one is stale. */
  private connection = 0;
  /** `tasks()` calls not answered yet: (re-)emitted on every connect until answered (they only read). */
  private readonly tasksCalls = new Set<TasksCall>();
  private readonly socketListeners: Array<[string, (...args: any[]) => void]>;
  /** Sessions (protocol §4); undefined with `session: false`. */
  private readonly resume: SessionResume<Pending> | undefined;

  constructor(options: ClientOptions = {}) {
    this.defaultTimeoutMs = options.timeoutMs;
    const socketOptions: SocketFactoryOptions = { ...TRANSPORT_DEFAULTS, ...options.socketOptions };
    if (options.auth !== undefined) socketOptions.auth = this.handshakeAuth(options.auth);
    this.state = new ConnectionStateStore('connecting');
    this.socketListeners = [
      ['connect', () => this.onConnect()],
      ['disconnect', (reason: unknown) => this.onDisconnect(String(reason))],
      ['connect_error', (error: unknown) => this.onConnectError(error)],
      [EVENTS.response, (message: unknown) => this.onResponse(message)],
      [EVENTS.tokenExpired, () => (this.tokenExpired = true)],
    ];
    if (options.session !== false) {
      const resume = new SessionResume<Pending>(
        {
          emit: (event, ...args) => this.socket.emit(event, ...args),
          requests: () => [...this.pending.values()],
          isPending: (entry) => this.pending.get(entry.id) === entry,
          end: (entry, error, cancelOnHost) => this.end(entry, error, cancelOnHost),
          reportGap: (entry, firstSeq) => this.reportGap(entry, firstSeq),
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

  /**
   * The owner's tasks (protocol §4.3), newest first: detached requests running or kept, with
   * their progress (`lastChunk`). Waits for the connection as a request does; rejects with the
   * host's error, `INTERNAL` for a list it cannot read, `UNAVAILABLE` once closed or refused,
   * `TIMEOUT` / `CANCELLED` as a request does.
   */
  tasks(options: TasksOptions = {}): Promise<TaskInfo[]> {
    return new Promise((resolve, reject) => {
      const refused = this.refusedNow(options.signal);
      if (refused) {
        reject(refused);
        return;
      }
      const call: TasksCall = { resolve, reject, emittedOn: undefined, timer: undefined, signal: options.signal, onAbort: undefined };
      this.tasksCalls.add(call);
      const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
      if (timeoutMs !== undefined) {
        call.timer = setTimeout(() => {
          if (this.settleTasksCall(call)) reject(new TaskgateError('TIMEOUT', `no task list within ${timeoutMs} ms`, { timeoutMs }));
        }, timeoutMs);
      }
      if (call.signal) {
        call.onAbort = () => {
          if (this.settleTasksCall(call)) reject(cancelledError());
        };
        call.signal.addEventListener('abort', call.onAbort, { once: true });
      }
      if (this.socket.connected) this.emitTasks(call);
    });
  }

  /**
   * Follows a task the owner has, by id (protocol §4.2–4.3), e.g. after a page reload: the same
   * kind of promise as a request — chunks after `afterSeq` to `onChunk`, once each, in order, then
   * the result or error, whether the task still runs or has ended. Rejects with the host's error
   * when it has no such task (`TASK_NOT_FOUND`). Survives blips as a detached request does.
   */
  attach<Result = unknown, Chunk = unknown>(id: string, options: AttachOptions<Chunk> = {}): Promise<Result> {
    const afterSeq = options.afterSeq ?? -1;
    if (!Number.isInteger(afterSeq) || afterSeq < -1) {
      return Promise.reject(new TaskgateError('BAD_REQUEST', `afterSeq must be an integer ≥ -1 (got ${String(afterSeq)})`));
    }
    return this.open(id, { kind: 'attach', afterSeq }, true, options as AttachOptions) as Promise<Result>;
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
    const closedError = new TaskgateError('UNAVAILABLE', 'the taskgate client was closed');
    for (const entry of [...this.pending.values()]) {
      this.settle(entry);
      entry.reject(closedError);
    }
    this.failTasksCalls(closedError);
    for (const [event, listener] of this.socketListeners) this.socket.off(event, listener);
    this.socket.disconnect();
    this.state.set('disconnected');
  }

  private send(requestType: string, payload: unknown, options: RequestOptions): Promise<unknown> {
    const id = options.id ?? `${this.idPrefix}-${(this.nextId++).toString(36)}`;
    const envelope: RequestEnvelope = { id, requestType, payload };
    if (options.traceparent !== undefined) envelope.traceparent = options.traceparent;
    if (options.detach === true) envelope.detach = true;
    return this.open(id, { kind: 'request', envelope }, options.detach === true, {
      ...options,
      timeoutMs: options.timeoutMs ?? this.defaultTimeoutMs,
    });
  }

  /**
   * Why a call cannot start: the client is closed, `signal` is aborted already, or no connection
   * will come (in that order, as before tasks existed); undefined if it can.
   */
  private refusedNow(signal: AbortSignal | undefined): TaskgateError | undefined {
    if (this.closed) return new TaskgateError('UNAVAILABLE', 'the taskgate client was closed');
    if (signal?.aborted) return cancelledError();
    if (this.state.get() === 'disconnected') {
      return new TaskgateError('UNAVAILABLE', 'not connected to the taskgate host, and not trying to');
    }
    return undefined;
  }

  /** Starts following `id`: a new entry, sent now if connected, else on `connect`. */
  private open(id: string, start: Start, detached: boolean, options: AttachOptions): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const refused = this.refusedNow(options.signal);
      if (refused) {
        reject(refused);
        return;
      }
      const badId = idProblem(id);
      if (badId) {
        reject(new TaskgateError('BAD_REQUEST', badId));
        return;
      }
      if (this.pending.has(id)) {
        reject(new TaskgateError('DUPLICATE_ID', `this client already has a request with id ${JSON.stringify(id)}`));
        return;
      }
      const entry: Pending = {
        id,
        start,
        resolve,
        reject,
        onChunk: options.onChunk,
        onGap: options.onGap,
        detached,
        sent: false,
        lastSeq: start.kind === 'attach' ? start.afterSeq : -1,
        resume: 'none',
        timer: undefined,
        signal: options.signal,
        onAbort: undefined,
        releaseSignal: options.releaseSignal,
        onRelease: undefined,
      };
      this.pending.set(id, entry);
      const { timeoutMs } = options;
      if (timeoutMs !== undefined) {
        entry.timer = setTimeout(() => {
          this.end(entry, new TaskgateError('TIMEOUT', `no result within ${timeoutMs} ms`, { timeoutMs }), true);
        }, timeoutMs);
      }
      if (entry.signal) {
        entry.onAbort = () => this.end(entry, cancelledError(), true);
        entry.signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      if (entry.releaseSignal) {
        if (entry.releaseSignal.aborted) {
          this.end(entry, releasedError(), false);
          return;
        }
        entry.onRelease = () => this.end(entry, releasedError(), false);
        entry.releaseSignal.addEventListener('abort', entry.onRelease, { once: true });
      }
      if (this.socket.connected) this.emitStart(entry);
    });
  }

  private emitStart(entry: Pending): void {
    entry.sent = true;
    if (entry.start.kind === 'request') {
      this.socket.emit(EVENTS.request, entry.start.envelope, (ack: unknown) => this.onAck(entry, ack));
      return;
    }
    const { afterSeq } = entry.start;
    const body: AttachBody = { id: entry.id, afterSeq };
    const connection = this.connection;
    this.socket.emit(SESSION_EVENTS.attach, body, (ack: unknown) => {
      this.resume?.onOtherEvent();
      // From an earlier connection, or the resume logic has taken over (a drop): not ours.
      if (connection !== this.connection || this.pending.get(entry.id) !== entry || entry.resume !== 'none') return;
      this.onAttachAck(entry, afterSeq, ack);
    });
  }

  /** The ack of an explicit `attach`: a gap is reported to `onGap`, a refusal is the error. */
  private onAttachAck(entry: Pending, afterSeq: number, ack: unknown): void {
    const a = ack as { ok?: unknown; firstSeq?: unknown; error?: unknown } | null;
    if (typeof a === 'object' && a !== null && a.ok === true && Number.isInteger(a.firstSeq)) {
      const firstSeq = a.firstSeq as number;
      if (firstSeq > afterSeq + 1) this.reportGap(entry, firstSeq);
      return;
    }
    if (typeof a === 'object' && a !== null && a.ok === false) {
      this.end(entry, TaskgateError.fromWire(a.error), false);
      return;
    }
    this.end(entry, new TaskgateError('INTERNAL', 'the host sent a malformed acknowledgement', { received: ack }), true);
  }

  /** Tells `entry`'s `onGap` that chunks before `firstSeq` are gone; its own failure ends the entry. */
  private reportGap(entry: Pending, firstSeq: number): void {
    try {
      entry.onGap?.(firstSeq);
    } catch (error) {
      this.end(entry, error, true);
    }
  }

  private emitTasks(call: TasksCall): void {
    const connection = this.connection;
    call.emittedOn = connection;
    this.socket.emit(SESSION_EVENTS.tasks, {}, (ack: unknown) => {
      this.resume?.onOtherEvent();
      if (call.emittedOn !== connection || !this.settleTasksCall(call)) return; // stale, or ended
      try {
        call.resolve(readTasksAck(ack));
      } catch (error) {
        call.reject(error);
      }
    });
  }

  private failTasksCalls(error: TaskgateError): void {
    for (const call of [...this.tasksCalls]) if (this.settleTasksCall(call)) call.reject(error);
  }

  /** Forgets `call` (set entry, timer, abort listener); false if it had ended already. */
  private settleTasksCall(call: TasksCall): boolean {
    if (!this.tasksCalls.delete(call)) return false;
    if (call.timer !== undefined) clearTimeout(call.timer);
    if (call.signal && call.onAbort) call.signal.removeEventListener('abort', call.onAbort);
    return true;
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
    this.connection += 1;
    this.resume?.onConnect();
    this.state.set('connected');
    for (const entry of [...this.pending.values()]) {
      if (!entry.sent && this.pending.get(entry.id) === entry) this.emitStart(entry);
    }
    // Unanswered, or answered on a connection that is gone: a `tasks` call only reads, so ask again.
    for (const call of [...this.tasksCalls]) {
      if (this.tasksCalls.has(call) && call.emittedOn !== this.connection) this.emitTasks(call); // not one a listener just made
    }
  }

  private onDisconnect(reason: string): void {
    if (this.closed) return;
    // The host closed the connection because its token expired (protocol §3.9): socket.io-client
    // will not reconnect after a server-side disconnect, so the client does, with a fresh token.
    const expired = this.tokenExpired && reason === SERVER_DISCONNECT;
    this.tokenExpired = false;
    if (expired) reason = EVENTS.tokenExpired;
    this.resume?.onDisconnect(reason); // parks what a resumable connection carried
    for (const entry of [...this.pending.values()]) {
      if (!entry.sent || entry.resume !== 'none') continue;
      this.end(
        entry,
        new TaskgateError('UNAVAILABLE', `the connection to the taskgate host was lost (${reason})`, { reason }),
        false,
      );
    }
    if (expired) {
      this.state.set('reconnecting');
      this.socket.connect();
    } else if (this.socket.active) {
      this.state.set('reconnecting');
    } else {
      this.giveUp(new TaskgateError('UNAVAILABLE', `disconnected from the taskgate host (${reason})`, { reason }));
    }
  }

  /**
   * The `auth` option as socket.io-client takes it: fields as they are; a callback wrapped so that
   * socket.io-client calls it before every (re)connect and gets its token as fields. A callback
   * that fails ends the client, saying why, rather than connecting without a token.
   */
  private handshakeAuth(auth: AuthFields | AuthCallback): AuthOption {
    if (typeof auth !== 'function') return auth;
    const asFields = (given: string | AuthFields): AuthFields => (typeof given === 'string' ? { token: given } : given);
    const failed = (error: unknown) => {
      if (this.closed) return;
      const why = error instanceof Error ? error.message : String(error);
      this.socket.disconnect();
      this.giveUp(
        new TaskgateError('UNAVAILABLE', `the auth callback failed, so the client cannot connect: ${why}`, {
          reason: 'auth-callback-failed',
        }),
      );
    };
    return (cb: (data: object) => void) => {
      let given: ReturnType<AuthCallback>;
      try {
        given = auth();
      } catch (error) {
        failed(error);
        return;
      }
      if (isPromiseLike(given)) given.then((fields) => cb(asFields(fields)), failed);
      else cb(asFields(given));
    };
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
    this.failTasksCalls(error);
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
      if (parked) this.resume?.cancelWhenBack(entry.id, entry.detached);
      else if (this.socket.connected) this.socket.emit(EVENTS.cancel, { id: entry.id });
    }
    entry.reject(error);
  }

  /** Forgets `entry`: map entry, timer, abort listener and its part in a resume. */
  private settle(entry: Pending): void {
    this.pending.delete(entry.id);
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    if (entry.signal && entry.onAbort) entry.signal.removeEventListener('abort', entry.onAbort);
    if (entry.releaseSignal && entry.onRelease) entry.releaseSignal.removeEventListener('abort', entry.onRelease);
    if (entry.resume !== 'none') {
      entry.resume = 'none';
      this.resume?.onEnded();
    }
  }
}

function cancelledError(): TaskgateError {
  return new TaskgateError('CANCELLED', 'the request was cancelled');
}

function releasedError(): TaskgateError {
  return new TaskgateError('CANCELLED', 'no longer followed here (the host goes on with it)', { released: true });
}

/** Why `id` cannot be a request id (protocol §1: a string of 1 to 128 characters); undefined if it can. */
function idProblem(id: unknown): string | undefined {
  if (typeof id !== 'string') return 'a request id must be a string';
  const chars = [...id].length;
  if (chars < 1 || chars > MAX_ID_CHARS) return `a request id must be 1 to ${MAX_ID_CHARS} characters (got ${chars})`;
  return undefined;
}

type AuthOption = SocketFactoryOptions['auth'];

function isPromiseLike<T>(value: unknown): value is PromiseLike<T> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

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
