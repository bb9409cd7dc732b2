/**
 * Resuming requests after a network blip (protocol §4.1–4.2): the client's half of sessions.
 *
 * The host opens a session with a `session` event right after CONNECT; from then on the
 * connection is resumable. When it drops, the requests it carried are *parked* instead of
 * failing: the host keeps them for `resumeWindowMs`. When the next connection's `session`
 * event names the same session, each parked request is *attached* with the highest `seq` the
 * client has seen, and goes on. Everything else ends loudly, never with a silent gap:
 * - a different session (the host did not accept the token), or a new connection that says
 *   anything before a `session` event (a host without sessions: the event always comes first),
 *   fails the parked requests with `UNAVAILABLE`, as a drop does in v1;
 * - the window passing (counted from the drop, as the host counts it) fails those not resumed;
 * - an attach ack that says chunks were not kept (`firstSeq > afterSeq + 1`), or that the host
 *   no longer has the request, fails it with `UNAVAILABLE` and a `details.reason` saying which.
 * A request cancelled while parked cannot be cancelled on a connection the host has not resumed
 * yet, so its `cancel` waits for the next `session` event.
 * Tasks (detached requests and explicit attaches, §4.3) have no window on the host: they stay
 * parked however long the client is away and are attached on the next `session` event, whatever
 * session it names (with authentication the owner is the user; a host that does not know them
 * answers `TASK_NOT_FOUND`). A gap in an explicit attach goes to its `onGap`, not an error. The token is kept in `sessionStorage`
 * by default (so a reloaded page presents it), every access guarded: private modes throw.
 */

import { TaskgateError } from './errors.js';
import { EVENTS, SESSION_EVENTS, type AttachBody } from './socket.js';

/** The part of the Web Storage API the token store uses (`sessionStorage`, `localStorage`, your own). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** `ClientOptions.session`: where the session token is kept (protocol §4.1). */
export interface SessionOptions {
  /** `'session'` (default): `sessionStorage` when the page has one, else memory; or your own storage. */
  storage?: 'session' | 'memory' | StorageLike;
  /** The storage key (default `taskgate.session:<url>`, or `taskgate.session` without a url). */
  key?: string;
}

/** Where a request is in a resume: not parked, waiting for a session, or attach sent. */
export type ResumeStage = 'none' | 'parked' | 'attaching';

/** What the resume bookkeeping reads and writes of one request of the client. */
export interface ResumableRequest {
  readonly id: string;
  /** Emitted to the host. */
  sent: boolean;
  /** The highest chunk `seq` delivered (-1: none). */
  lastSeq: number;
  resume: ResumeStage;
  /** A task (§4.3): the host keeps it without a window, so the window never ends it here. */
  readonly detached: boolean;
  /** Set for explicit attaches: a gap goes there (and the request goes on) instead of failing it. */
  readonly onGap: ((firstSeq: number) => void) | undefined;
}

/** What the resume bookkeeping needs from the client. */
export interface ResumeHost<R extends ResumableRequest> {
  /** Emits on the socket. */
  emit(event: string, ...args: unknown[]): void;
  /** The requests not ended yet, in the order they were made. */
  requests(): R[];
  isPending(entry: R): boolean;
  /** Ends `entry` with `error` (see the client's `end`). */
  end(entry: R, error: unknown, cancelOnHost: boolean): void;
  /** Calls `entry.onGap(firstSeq)` (ending the entry if it throws). */
  reportGap(entry: R, firstSeq: number): void;
}

interface Session {
  token: string;
  resumeWindowMs: number;
}

export class SessionResume<R extends ResumableRequest> {
  /** The current connection's session, from its `session` event; undefined until then. */
  private current: Session | undefined;
  /** Whether the current connection has said anything yet (its first event is `session`, or it has none). */
  private heard = false;
  /** Incremented on every connect: acks of an older connection's attaches are ignored. */
  private generation = 0;
  /** The session the parked requests belong to, and why its connection was lost. */
  private parkedIn: { session: Session; reason: string } | undefined;
  private windowTimer: ReturnType<typeof setTimeout> | undefined;
  /** Ids cancelled while parked → whether a task (kept past the window): `cancel` goes out with the next `session` event. */
  private readonly cancelLater = new Map<string, boolean>();

  constructor(
    private readonly client: ResumeHost<R>,
    private readonly store: TokenStore,
  ) {}

  /** The handshake's `session` field: the token to resume, or `true` for a new session. */
  handshakeField(): string | true {
    return this.store.get() ?? true;
  }

  onConnect(): void {
    this.generation += 1;
    this.current = undefined;
    this.heard = false;
  }

  /**
   * The connection dropped. If it was resumable, parks the requests it carried (the caller must
   * not fail them) and (re)starts the window. Requests parked by an earlier drop stay parked.
   */
  onDisconnect(reason: string): void {
    const session = this.current;
    this.current = undefined;
    if (!session) return; // not resumable: the host cancels what it had (§3.5)
    let parked = 0;
    for (const entry of this.client.requests()) {
      if (!entry.sent) continue;
      entry.resume = 'parked';
      parked += 1;
    }
    if (parked === 0) return;
    this.parkedIn = { session, reason };
    this.stopWindow();
    this.windowTimer = setTimeout(() => this.windowPassed(reason), session.resumeWindowMs);
  }

  /** The host's `session` event: resume what is parked if it is the same session. */
  onSession(body: unknown): void {
    const session = readSession(body);
    if (!session) return; // malformed: this connection is not resumable
    this.heard = true;
    this.current = session;
    this.store.set(session.token);
    for (const id of this.cancelLater.keys()) this.client.emit(EVENTS.cancel, { id });
    this.cancelLater.clear();
    const parkedIn = this.parkedIn;
    this.parkedIn = undefined;
    if (!parkedIn) return;
    if (parkedIn.session.token !== session.token) {
      this.failParked(parkedIn.reason, 'the host did not resume the session', false); // tasks: attached below
    }
    const generation = this.generation;
    for (const entry of this.client.requests()) {
      if (entry.resume !== 'parked') continue;
      entry.resume = 'attaching';
      const afterSeq = entry.lastSeq;
      const body: AttachBody = { id: entry.id, afterSeq };
      this.client.emit(SESSION_EVENTS.attach, body, (ack: unknown) => {
        if (generation === this.generation) this.onAttachAck(entry, afterSeq, ack);
      });
    }
    this.stopWindowIfDone();
  }

  /** Any other event from the host: if no `session` came first, this connection has none. */
  onOtherEvent(): void {
    if (this.heard) return;
    this.heard = true;
    const parkedIn = this.parkedIn;
    if (!parkedIn) return;
    this.parkedIn = undefined;
    this.cancelLater.clear();
    this.failParked(parkedIn.reason, 'the host does not resume sessions', true);
  }

  /** `entry` was parked and is being cancelled: tell the host once it is back. */
  cancelWhenBack(id: string, detached: boolean): void {
    this.cancelLater.set(id, detached);
  }

  /** A request that was parked or attaching has ended. */
  onEnded(): void {
    this.stopWindowIfDone();
  }

  /** The client closes, or no connection will come: forget everything. */
  stop(): void {
    this.stopWindow();
    this.parkedIn = undefined;
    this.cancelLater.clear();
  }

  private onAttachAck(entry: R, afterSeq: number, ack: unknown): void {
    if (!this.client.isPending(entry) || entry.resume !== 'attaching') return;
    entry.resume = 'none';
    const a = ack as { ok?: unknown; firstSeq?: unknown; error?: unknown } | null;
    if (typeof a === 'object' && a !== null && a.ok === true && Number.isInteger(a.firstSeq)) {
      const firstSeq = a.firstSeq as number;
      if (firstSeq > afterSeq + 1 && entry.onGap) {
        this.client.reportGap(entry, firstSeq);
      } else if (firstSeq > afterSeq + 1) {
        const error = new TaskgateError(
          'UNAVAILABLE',
          `chunks ${afterSeq + 1}–${firstSeq - 1} were lost while the connection was down (the host no longer had them)`,
          { reason: 'resume-gap', afterSeq, firstSeq },
        );
        this.client.end(entry, error, true);
      }
    } else if (typeof a === 'object' && a !== null && a.ok === false) {
      const cause = TaskgateError.fromWire(a.error);
      const error = new TaskgateError(
        'UNAVAILABLE',
        `the request could not be resumed after the connection came back: ${cause.message}`,
        { reason: 'not-resumed', error: cause.toJSON() },
      );
      this.client.end(entry, error, false);
    } else {
      this.client.end(entry, new TaskgateError('INTERNAL', 'the host sent a malformed acknowledgement', { received: ack }), true);
    }
    this.stopWindowIfDone();
  }

  private windowPassed(reason: string): void {
    this.windowTimer = undefined;
    // The host has cancelled what it parked, except tasks: those stay parked here too.
    for (const [id, detached] of this.cancelLater) if (!detached) this.cancelLater.delete(id);
    const error = new TaskgateError(
      'UNAVAILABLE',
      `the connection to the taskgate host was lost (${reason}) and did not come back within the resume window`,
      { reason },
    );
    for (const entry of this.client.requests()) {
      if (entry.resume === 'none' || entry.detached) continue;
      // An attach in flight may have reached the host: stop it there. A parked one the host cancels.
      const attaching = entry.resume === 'attaching';
      entry.resume = 'none';
      this.client.end(entry, error, attaching);
    }
    if (!this.client.requests().some((entry) => entry.resume === 'parked')) this.parkedIn = undefined;
  }

  /** Fails the parked requests (tasks too when `withTasks`); a task left parked waits for the next session. */
  private failParked(reason: string, why: string, withTasks: boolean): void {
    const error = new TaskgateError('UNAVAILABLE', `the connection to the taskgate host was lost (${reason}) and ${why}`, {
      reason,
    });
    for (const entry of this.client.requests()) {
      if (entry.resume !== 'parked' || (entry.detached && !withTasks)) continue;
      entry.resume = 'none';
      this.client.end(entry, error, false);
    }
    this.stopWindowIfDone();
  }

  private stopWindowIfDone(): void {
    if (this.windowTimer === undefined || this.parkedIn !== undefined) return;
    if (this.client.requests().some((entry) => entry.resume !== 'none' && !entry.detached)) return;
    this.stopWindow();
  }

  private stopWindow(): void {
    if (this.windowTimer !== undefined) clearTimeout(this.windowTimer);
    this.windowTimer = undefined;
  }
}

/** `{ token, resumeWindowMs }`, or undefined when the body is not one. */
function readSession(body: unknown): Session | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const { token, resumeWindowMs } = body as Record<string, unknown>;
  if (typeof token !== 'string' || token === '') return undefined;
  if (typeof resumeWindowMs !== 'number' || !(resumeWindowMs >= 0)) return undefined;
  return { token, resumeWindowMs };
}

/** The session token: in memory, and in a storage when there is one that works. */
export class TokenStore {
  private token: string | undefined;

  private constructor(
    private readonly storage: StorageLike | undefined,
    private readonly key: string,
  ) {}

  static create(options: SessionOptions, url: string | undefined): TokenStore {
    const key = options.key ?? (url === undefined ? 'taskgate.session' : `taskgate.session:${url}`);
    const choice = options.storage ?? 'session';
    const storage = choice === 'memory' ? undefined : choice === 'session' ? pageSessionStorage() : choice;
    return new TokenStore(storage, key);
  }

  /** This client's latest token, else the one a previous page left in the storage. */
  get(): string | undefined {
    if (this.token !== undefined) return this.token;
    try {
      return this.storage?.getItem(this.key) ?? undefined;
    } catch {
      return undefined; // private modes throw: as if there were none
    }
  }

  set(token: string): void {
    this.token = token;
    try {
      this.storage?.setItem(this.key, token);
    } catch {
      // full or forbidden: memory still has it
    }
  }
}

/** `sessionStorage` if the page has one and lets us read it; even the property access may throw. */
function pageSessionStorage(): StorageLike | undefined {
  try {
    const storage = (globalThis as { sessionStorage?: StorageLike }).sessionStorage;
    return storage ?? undefined;
  } catch {
    return undefined;
  }
}
