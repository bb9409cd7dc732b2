/**
 * A socket.io-client connection that opts into a session (protocol §4) and reconnects by itself,
 * presenting the latest session token: what the resume and hand-off tests drive.
 */

import { io, type Socket } from 'socket.io-client';

import { waitUntil, type TestContext } from './harness.js';

export interface SessionEvent {
  token: string;
  resumeWindowMs: number;
  resultTtlMs: number;
}

/** A socket.io-client connection that reconnects by itself and presents its session token. */
export class ResumingClient {
  readonly socket: Socket;
  readonly sessions: SessionEvent[] = [];
  /** Per request id, every `response` in arrival order. */
  readonly responses = new Map<string, Array<{ type: string; seq?: number; data?: unknown; error?: unknown }>>();
  connects = 0;

  constructor(
    ctx: TestContext,
    url: string,
    /** `true` asks for a new session; a string presents this token on the first connect. */
    first: true | string = true,
    transport: 'websocket' | 'polling' = 'websocket',
  ) {
    this.socket = io(url, {
      transports: [transport],
      upgrade: false,
      forceNew: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 300,
      randomizationFactor: 0,
      timeout: 5000,
      // Called before every (re)connect: the latest token the host gave us.
      auth: (cb) => cb({ session: this.sessions.at(-1)?.token ?? first }),
    });
    this.socket.on('connect', () => (this.connects += 1));
    this.socket.on('session', (s: SessionEvent) => this.sessions.push(s));
    this.socket.on('response', (r: { id: string; type: string; seq?: number }) => {
      const list = this.responses.get(r.id) ?? [];
      list.push(r);
      this.responses.set(r.id, list);
    });
    ctx.onCleanup(async () => {
      this.socket.disconnect();
    });
  }

  seqs(id: string): number[] {
    return (this.responses.get(id) ?? []).filter((r) => r.type === 'chunk').map((r) => r.seq ?? -1);
  }

  lastSeq(id: string): number {
    const seqs = this.seqs(id);
    return seqs.length === 0 ? -1 : seqs[seqs.length - 1];
  }

  final(id: string) {
    return (this.responses.get(id) ?? []).find((r) => r.type !== 'chunk');
  }

  async session(count = 1): Promise<SessionEvent> {
    return waitUntil(() => (this.sessions.length >= count ? this.sessions[count - 1] : undefined), 10_000, `session event #${count}`);
  }

  request(envelope: unknown): Promise<any> {
    return this.socket.timeout(5000).emitWithAck('request', envelope);
  }

  attach(id: string, afterSeq?: number): Promise<any> {
    return this.socket.timeout(5000).emitWithAck('attach', afterSeq === undefined ? { id } : { id, afterSeq });
  }
}
