/**
 * The socket the client talks through, as an interface: the real one is socket.io-client's
 * `Socket`; tests inject a small in-memory fake (test/fake-socket.ts). Only what the client
 * uses is here, so a fake stays honest and small.
 */

import { io, type ManagerOptions, type SocketOptions } from 'socket.io-client';

/** Events of protocol v1 §1 (and the Socket.IO connection events the client follows). */
export const EVENTS = {
  request: 'request',
  response: 'response',
  cancel: 'cancel',
  /** Host → client, right before it disconnects a connection whose token expired (§3.9). */
  tokenExpired: 'token_expired',
} as const;

/** socket.io-client's `disconnect` reason when the host disconnected the socket (it then stays away). */
export const SERVER_DISCONNECT = 'io server disconnect';

/**
 * Events of sessions (protocol §4): `session` (host → client, right after CONNECT, §4.1),
 * `attach` (client → host, with an ack: resumes a request after a reconnect, or follows a task,
 * §4.2) and `tasks` (client → host, with an ack: the owner's tasks, §4.3).
 */
export const SESSION_EVENTS = {
  session: 'session',
  attach: 'attach',
  tasks: 'tasks',
} as const;

/** `{ id, requestType, payload, traceparent?, detach? }`, sent with an acknowledgement callback. */
export interface RequestEnvelope {
  id: string;
  requestType: string;
  payload: unknown;
  /** W3C trace context (protocol §3.10, optional). */
  traceparent?: string;
  /** A task that outlives its connection (protocol §4.3); sent only when true. */
  detach?: true;
}

/** An `attach` event (protocol §4.2): resume request `id`, sending the chunks after `afterSeq` (-1: all). */
export interface AttachBody {
  id: string;
  afterSeq: number;
}

/** A `response` event as the host sends it. */
export type ResponseMessage =
  | { id: string; type: 'chunk'; seq: number; data: unknown }
  | { id: string; type: 'result'; data: unknown }
  | { id: string; type: 'error'; error: unknown };

export type Listener = (...args: any[]) => void;

/** The part of socket.io-client's `Socket` the client uses. */
export interface SocketLike {
  /** True while connected. */
  readonly connected: boolean;
  /** True while the socket is connected or will try to (re)connect by itself. */
  readonly active: boolean;
  on(event: string, listener: Listener): unknown;
  off(event: string, listener: Listener): unknown;
  emit(event: string, ...args: unknown[]): unknown;
  connect(): unknown;
  disconnect(): unknown;
}

export type SocketFactoryOptions = Partial<ManagerOptions & SocketOptions>;

/** Makes the socket for `url` (socket.io-client's `io` by default). */
export type SocketFactory = (url: string | undefined, options: SocketFactoryOptions) => SocketLike;

export const defaultSocketFactory: SocketFactory = (url, options) =>
  url === undefined ? io(options) : io(url, options);
