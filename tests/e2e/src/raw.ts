/**
 * A Socket.IO client written by hand on the `ws` package: it speaks engine.io v4 and
 * Socket.IO v5 frame by frame, so tests can send what no well-behaved client library
 * would — frames before the handshake, invalid UTF-8, 100,000-deep JSON, forged acks —
 * and can stop reading its socket altogether (a stalled client).
 *
 * Frames: the host sends `0{"sid",…}` (engine.io open), pings as `2`; Socket.IO packets
 * ride in engine.io messages: `40{auth}` connects the default namespace, `42[…]` is an
 * event, `42<n>[…]` an event with ack id n, `43<n>[…]` an ack, `44{message}` a
 * connect_error.
 */

import WebSocket from 'ws';

import { sleep } from './harness.js';

export interface RawOptions {
  /** The `Origin` header of the upgrade request (default: none, like a non-browser client). */
  origin?: string;
  /** Answer engine.io pings (default true). */
  pong?: boolean;
}

export interface Closed {
  code: number;
  reason: string;
}

/** The WebSocket URL of a host's Socket.IO endpoint. */
export function wsUrl(hostUrl: string): string {
  return `${hostUrl.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`;
}

/** The status of a WebSocket upgrade with these request headers (101 when it succeeds). */
export function upgradeStatus(hostUrl: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl(hostUrl), { headers });
    ws.once('open', () => {
      ws.terminate();
      resolve(101);
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('error', () => resolve(0));
  });
}

export class RawSocket {
  /** Text frames received, in order. */
  readonly texts: string[] = [];
  readonly closed: Promise<Closed>;
  closeInfo: Closed | undefined;
  private listeners = new Set<() => void>();
  private ackId = 1;

  private constructor(readonly ws: WebSocket, private readonly options: RawOptions) {
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        this.changed();
        resolve(this.closeInfo);
      });
    });
    ws.on('error', () => undefined);
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString();
      if (text === '2' && (this.options.pong ?? true)) this.send('3');
      this.texts.push(text);
      this.changed();
    });
  }

  private changed(): void {
    for (const l of this.listeners) l();
  }

  /** Opens the WebSocket and waits for the engine.io open packet. */
  static async open(hostUrl: string, options: RawOptions = {}): Promise<RawSocket> {
    const ws = new WebSocket(wsUrl(hostUrl), {
      headers: options.origin ? { Origin: options.origin } : {},
      maxPayload: 256 * 1024 * 1024,
    });
    const socket = new RawSocket(ws, options);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
      ws.once('error', reject);
    });
    await socket.waitFor((t) => t.startsWith('0{'), 10_000, 'the engine.io open packet');
    return socket;
  }

  /** Opens, connects the default namespace with `auth` and waits for CONNECT (or throws on connect_error). */
  static async connected(hostUrl: string, auth?: unknown, options: RawOptions = {}): Promise<RawSocket> {
    const socket = await RawSocket.open(hostUrl, options);
    socket.send(auth === undefined ? '40' : `40${JSON.stringify(auth)}`);
    const answer = await socket.waitFor((t) => t.startsWith('40') || t.startsWith('44'), 10_000, 'CONNECT or CONNECT_ERROR');
    if (answer.startsWith('44')) throw new Error(`connect_error ${answer.slice(2)}`);
    return socket;
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(text: string | Buffer, binary = false): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(text, { binary });
  }

  /** Sends a `request` event with an ack id; returns the ack id. */
  request(envelope: unknown): number {
    const id = this.ackId++;
    this.send(`42${id}["request",${JSON.stringify(envelope)}]`);
    return id;
  }

  /** The ack with this id, parsed (`43<id>[ack]`). */
  async ack(id: number, timeoutMs = 10_000): Promise<{ ok: boolean; error?: { code: string } }> {
    const prefix = `43${id}[`;
    const text = await this.waitFor((t) => t.startsWith(prefix), timeoutMs, `ack ${id}`);
    return JSON.parse(text.slice(prefix.length - 1))[0];
  }

  /** Waits for a text frame (already received or future) matching `match`. */
  async waitFor(match: (text: string) => boolean, timeoutMs: number, what: string): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.texts.find(match);
      if (found !== undefined) return found;
      if (this.closeInfo) throw new Error(`the socket closed (${this.closeInfo.code}) before ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.min(left, 200));
        const listeners = this.listeners;
        function done() {
          clearTimeout(timer);
          listeners.delete(done);
          resolve();
        }
        listeners.add(done);
      });
    }
  }

  /** Stops reading from the TCP socket: the host's writes pile up in the kernel, then in the host. */
  stopReading(): void {
    (this.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  }

  /** Waits until the host closes the connection; returns how, or undefined on timeout. */
  async waitClosed(timeoutMs: number): Promise<Closed | undefined> {
    return Promise.race([this.closed, sleep(timeoutMs).then(() => undefined)]);
  }

  terminate(): void {
    this.ws.terminate();
  }
}
