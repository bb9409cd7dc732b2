/**
 * Resuming after a network blip (protocol §4.1–4.2, the client's rules in §3.7): the fake socket
 * plays a host that opens a session, keeps the requests of a dropped connection and answers
 * `attach`. The handshake and where the token is kept; requests in flight that wait instead of
 * failing; attach with the last seq seen; gaps, refusals and malformed acks that end a request
 * loudly; the resume window; cancels while away; exactly-once chunks; and no leaks.
 */

import { getEventListeners } from 'node:events';

import { createClient, type ClientOptions, type StorageLike, type TaskgateClient, type TaskgateError } from '../src/index.js';
import { fakeSocketFactory, type FakeSocket } from './fake-socket.js';
import { flushFake, rejection, track } from './helpers.js';

const URL = 'http://host.test';
const WINDOW_MS = 60_000;

/** Every client a test made: closed after it, so that no window timer outlives the test. */
const clients: TaskgateClient[] = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

function make(options: ClientOptions): TaskgateClient {
  const client = createClient(options);
  clients.push(client);
  return client;
}

/** A connected client whose host has opened session `tok-1`. */
function resumable(options: Partial<ClientOptions> = {}): { client: TaskgateClient; socket: FakeSocket } {
  const io = fakeSocketFactory();
  const client = make({ url: URL, io, session: { storage: 'memory' }, ...options });
  const socket = io.last();
  socket.serverAccepts();
  socket.session('tok-1', WINDOW_MS);
  return { client, socket };
}

/** The connection drops and comes back, and the host resumes session `tok-1` on it. */
function blip(socket: FakeSocket, reason = 'transport close'): void {
  socket.drop(reason);
  socket.serverAccepts();
  socket.session('tok-1');
}

/** Sends a request and has the host accept it; returns its id. */
function accepted(client: TaskgateClient, socket: FakeSocket, options: Parameters<TaskgateClient['request']>[2] = {}) {
  const promise = client.request('demo.countdown', { from: 10 }, options);
  promise.catch(() => undefined); // tests that leave it pending: its rejection at close is expected
  const { id } = socket.lastRequest();
  socket.ack(id);
  return { id, promise };
}

class MapStorage implements StorageLike {
  readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
}

describe('the handshake asks for a session (protocol §4.1)', () => {
  test('auth is a function: socket.io-client calls it before every (re)connect, with the latest token', () => {
    const io = fakeSocketFactory();
    make({ url: URL, io, auth: { token: 'secret' }, session: { storage: 'memory' } });
    const socket = io.last();
    socket.serverAccepts();
    socket.session('tok-1');
    socket.drop();
    socket.serverAccepts();
    socket.session('tok-2'); // the host did not accept tok-1
    socket.drop();
    socket.serverAccepts();
    expect(socket.handshakes).toEqual([
      { token: 'secret', session: true },
      { token: 'secret', session: 'tok-1' },
      { token: 'secret', session: 'tok-2' },
    ]);
  });

  test('auth fields given in socketOptions are kept too, a function among them', () => {
    const io = fakeSocketFactory();
    make({ io, session: { storage: 'memory' }, socketOptions: { auth: (cb) => cb({ token: 'from-fn' }) } });
    io.last().serverAccepts();
    expect(io.last().handshakes).toEqual([{ token: 'from-fn', session: true }]);
  });

  describe('where the token is kept', () => {
    const original = Object.getOwnPropertyDescriptor(globalThis, 'sessionStorage');
    afterEach(() => {
      if (original) Object.defineProperty(globalThis, 'sessionStorage', original);
      else delete (globalThis as { sessionStorage?: unknown }).sessionStorage;
    });

    function setSessionStorage(value: () => unknown): void {
      Object.defineProperty(globalThis, 'sessionStorage', { configurable: true, get: value });
    }

    test('by default in sessionStorage, under a key per host url: a reloaded page presents it', () => {
      const storage = new MapStorage();
      setSessionStorage(() => storage);
      const first = fakeSocketFactory();
      make({ url: URL, io: first });
      first.last().serverAccepts();
      first.last().session('tok-1');
      expect(storage.items).toEqual(new Map([[`taskgate.session:${URL}`, 'tok-1']]));

      const afterReload = fakeSocketFactory();
      make({ url: URL, io: afterReload });
      afterReload.last().serverAccepts();
      expect(afterReload.last().handshakes).toEqual([{ session: 'tok-1' }]);
    });

    test('without sessionStorage (Node, workers) or when it throws (private modes), in memory', () => {
      for (const broken of [
        () => undefined,
        () => {
          throw new Error('SecurityError: access denied');
        },
        () => ({
          getItem: () => {
            throw new Error('SecurityError');
          },
          setItem: () => {
            throw new Error('QuotaExceededError');
          },
        }),
      ]) {
        setSessionStorage(broken);
        const io = fakeSocketFactory();
        make({ url: URL, io });
        const socket = io.last();
        socket.serverAccepts();
        socket.session('tok-1');
        socket.drop();
        socket.serverAccepts();
        expect(socket.handshakes).toEqual([{ session: true }, { session: 'tok-1' }]);
      }
    });

    test("storage: 'memory' leaves sessionStorage alone; a StorageLike and a key of one's own are used", () => {
      const pageStorage = new MapStorage();
      pageStorage.setItem(`taskgate.session:${URL}`, 'stale');
      setSessionStorage(() => pageStorage);
      const inMemory = fakeSocketFactory();
      make({ url: URL, io: inMemory, session: { storage: 'memory' } });
      inMemory.last().serverAccepts();
      inMemory.last().session('tok-m');
      expect(inMemory.last().handshakes).toEqual([{ session: true }]);
      expect(pageStorage.getItem(`taskgate.session:${URL}`)).toBe('stale');

      const own = new MapStorage();
      const io = fakeSocketFactory();
      make({ url: URL, io, session: { storage: own, key: 'my-app.session' } });
      io.last().serverAccepts();
      io.last().session('tok-own');
      expect(own.items).toEqual(new Map([['my-app.session', 'tok-own']]));
    });
  });

  test('session: false: no session listener, and a drop rejects as in v1', async () => {
    const io = fakeSocketFactory();
    const client = make({ url: URL, io, session: false });
    const socket = io.last();
    socket.serverAccepts();
    expect(socket.listenerCount('session')).toBe(0);
    const { promise } = accepted(client, socket);
    socket.drop('transport close');
    await expect(promise).rejects.toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
  });
});

describe('a host that never sends `session` (an older host)', () => {
  test('a drop rejects requests in flight at once, as in v1, though the client asked for a session', async () => {
    const io = fakeSocketFactory({ autoConnect: true });
    const client = make({ url: URL, io, session: { storage: 'memory' } });
    const socket = io.last();
    const { promise } = accepted(client, socket);
    socket.drop('transport close');
    const error = await rejection(promise);
    expect(error).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
    socket.serverAccepts();
    expect(socket.attaches()).toEqual([]);
  });

  test('a malformed `session` event makes no connection resumable', async () => {
    for (const body of [undefined, 'tok', { token: '' }, { token: 'tok' }, { token: 'tok', resumeWindowMs: -1 }, { token: 5, resumeWindowMs: 1 }]) {
      const io = fakeSocketFactory({ autoConnect: true });
      const client = make({ url: URL, io, session: { storage: 'memory' } });
      const socket = io.last();
      socket.hostEmits('session', body);
      const { promise } = accepted(client, socket);
      socket.drop();
      await expect(promise).rejects.toMatchObject({ code: 'UNAVAILABLE' });
      socket.serverAccepts();
      expect(socket.handshakes.at(-1)).toEqual({ session: true });
    }
  });
});

describe('a drop of a resumable connection (protocol §4.2)', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  test('requests in flight wait (reconnecting) and are attached with the last seq seen; they go on to their result', async () => {
    const { client, socket } = resumable();
    const seen: number[] = [];
    const streaming = accepted(client, socket, { onChunk: (_data, seq) => seen.push(seq) });
    const quiet = accepted(client, socket);
    socket.chunk(streaming.id, 0, 'a');
    socket.chunk(streaming.id, 1, 'b');
    const s = track(streaming.promise);
    const q = track(quiet.promise);

    socket.drop('transport close');
    expect(client.connectionState).toBe('reconnecting');
    jest.advanceTimersByTime(WINDOW_MS - 1);
    await flushFake();
    expect(s.settled() || q.settled()).toBe(false);

    socket.serverAccepts();
    expect(socket.attaches()).toEqual([]); // not before the new connection's session event
    socket.session('tok-1', WINDOW_MS);
    expect(socket.attaches()).toEqual([
      { id: streaming.id, afterSeq: 1 },
      { id: quiet.id, afterSeq: -1 },
    ]);
    socket.ackAttach(streaming.id, { ok: true, state: 'running', firstSeq: 2 });
    socket.ackAttach(quiet.id, { ok: true, state: 'succeeded', firstSeq: 0 });
    expect(jest.getTimerCount()).toBe(0); // everything resumed: the window timer is gone
    socket.chunk(streaming.id, 2, 'c');
    socket.result(streaming.id, 'done');
    socket.result(quiet.id, 'quiet done');
    await flushFake();
    expect(s.value()).toBe('done');
    expect(q.value()).toBe('quiet done');
    expect(seen).toEqual([0, 1, 2]);
    expect(client.connectionState).toBe('connected');
    expect(socket.requests()).toHaveLength(2); // nothing sent twice
    expect(socket.cancels()).toEqual([]);
    expect(socket.emittedOffline).toEqual([]);
  });

  test('requests made while away go out as requests on connect, not as attaches', async () => {
    const { client, socket } = resumable();
    const before = accepted(client, socket);
    socket.drop();
    const during = client.request('echo', 'during');
    expect(socket.requests()).toHaveLength(1);
    socket.serverAccepts();
    expect(socket.requests().map((r) => r.payload)).toEqual([{ from: 10 }, 'during']);
    socket.session('tok-1');
    expect(socket.attaches().map((a) => a.id)).toEqual([before.id]);
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.result(id, 'during');
    await expect(during).resolves.toBe('during');
  });

  test('a request not acked before the drop is attached too (the host may have it)', () => {
    const { client, socket } = resumable();
    void client.request('echo', 1).catch(() => undefined);
    const { id } = socket.lastRequest();
    blip(socket);
    expect(socket.attaches()).toEqual([{ id, afterSeq: -1 }]);
  });

  test('the window (from the disconnect) passes with no connection back: UNAVAILABLE { reason }, and nothing is emitted later', async () => {
    const { client, socket } = resumable();
    const { promise } = accepted(client, socket);
    const t = track(promise);
    socket.drop('ping timeout');
    socket.connectError('websocket error', true);
    jest.advanceTimersByTime(WINDOW_MS);
    await flushFake();
    const error = t.error() as TaskgateError;
    expect(error).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'ping timeout' } });
    expect(error.message).toMatch(/lost.*did not come back within the resume window/);
    expect(client.inFlight).toBe(0);
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.attaches()).toEqual([]);
    expect(socket.cancels()).toEqual([]);
  });

  test('the window length is the one the host announced', async () => {
    const io = fakeSocketFactory();
    const client = make({ url: URL, io, session: { storage: 'memory' } });
    const socket = io.last();
    socket.serverAccepts();
    socket.session('tok-1', 1500);
    const t = track(accepted(client, socket).promise);
    socket.drop();
    jest.advanceTimersByTime(1499);
    await flushFake();
    expect(t.settled()).toBe(false);
    jest.advanceTimersByTime(1);
    await flushFake();
    expect(t.error()).toMatchObject({ code: 'UNAVAILABLE' });
  });

  test('a drop before the new connection’s session event keeps the requests parked; the window still counts from the first drop', async () => {
    const { client, socket } = resumable();
    const { id, promise } = accepted(client, socket);
    const t = track(promise);
    socket.drop('transport close');
    jest.advanceTimersByTime(30_000);
    socket.serverAccepts();
    socket.drop('transport error'); // gone again before its session event: the host never saw an attach
    jest.advanceTimersByTime(29_999);
    await flushFake();
    expect(t.settled()).toBe(false);
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.attaches()).toEqual([{ id, afterSeq: -1 }]);
    jest.advanceTimersByTime(1); // the first drop's window passes before the host answered the attach
    await flushFake();
    expect(t.error()).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
    expect(socket.cancels()).toEqual([id]); // the host may have attached it: stop it
    socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 0 }); // too late: ignored
    expect(client.inFlight).toBe(0);
  });

  test('a drop while attaches are unanswered attaches again on the next session; stale acks are ignored', async () => {
    const { client, socket } = resumable();
    const seen: number[] = [];
    const { id, promise } = accepted(client, socket, { onChunk: (_d, seq) => seen.push(seq) });
    socket.chunk(id, 0, 'a');
    blip(socket);
    const staleAck = socket.attachAcks.get(id)!;
    blip(socket);
    expect(socket.attaches()).toEqual([
      { id, afterSeq: 0 },
      { id, afterSeq: 0 },
    ]);
    staleAck({ ok: false, error: { code: 'TASK_NOT_FOUND', message: 'no such task' } }); // from the dead connection
    expect(client.inFlight).toBe(1);
    socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 1 });
    socket.chunk(id, 1, 'b');
    socket.result(id, 'done');
    await expect(promise).resolves.toBe('done');
    expect(seen).toEqual([0, 1]);
  });

  test('a resumed connection that drops again is resumable again, with a fresh window', async () => {
    const { client, socket } = resumable();
    const { id, promise } = accepted(client, socket);
    const t = track(promise);
    socket.drop();
    jest.advanceTimersByTime(50_000);
    socket.serverAccepts();
    socket.session('tok-1');
    socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 0 });
    socket.drop();
    jest.advanceTimersByTime(WINDOW_MS - 1);
    await flushFake();
    expect(t.settled()).toBe(false);
    socket.serverAccepts();
    socket.session('tok-1');
    socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 0 });
    socket.result(id, 'done');
    await flushFake();
    expect(t.value()).toBe('done');
  });

  test('a disconnect after which socket.io-client will not retry ends everything at once', async () => {
    const { client, socket } = resumable();
    const { promise } = accepted(client, socket);
    socket.drop('io server disconnect', false);
    await expect(promise).rejects.toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'io server disconnect' } });
    expect(client.connectionState).toBe('disconnected');
    expect(jest.getTimerCount()).toBe(0);
  });

  test('close() while requests wait rejects them with the close error and clears the window', async () => {
    const { client, socket } = resumable();
    const { promise } = accepted(client, socket);
    socket.drop();
    client.close();
    await expect(promise).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'the taskgate client was closed' });
    expect(jest.getTimerCount()).toBe(0);
    expect(socket.listenerCount()).toBe(0);
  });
});

describe('what the new connection says', () => {
  test('the host resumes it, but chunks in between were not kept: UNAVAILABLE resume-gap, and the request is cancelled', async () => {
    const { client, socket } = resumable();
    const { id, promise } = accepted(client, socket, { onChunk: () => undefined });
    socket.chunk(id, 0, 'a');
    socket.chunk(id, 1, 'b');
    blip(socket);
    socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 5 });
    const error = await rejection(promise);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.details).toEqual({ reason: 'resume-gap', afterSeq: 1, firstSeq: 5 });
    expect(socket.cancels()).toEqual([id]);
    socket.chunk(id, 5, 'f'); // whatever still comes is ignored
    expect(client.inFlight).toBe(0);
  });

  test('the host no longer has it (TASK_NOT_FOUND): UNAVAILABLE not-resumed with the host’s error, no cancel', async () => {
    const { client, socket } = resumable();
    const { id, promise } = accepted(client, socket);
    blip(socket, 'transport close');
    socket.ackAttach(id, { ok: false, error: { code: 'TASK_NOT_FOUND', message: 'no such task' } });
    const error = await rejection(promise);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.details).toEqual({ reason: 'not-resumed', error: { code: 'TASK_NOT_FOUND', message: 'no such task' } });
    expect(socket.cancels()).toEqual([]);
  });

  test.each([
    ['no body', undefined],
    ['a string', 'ok'],
    ['ok without firstSeq', { ok: true, state: 'running' }],
    ['a firstSeq that is not an integer', { ok: true, state: 'running', firstSeq: '3' }],
    ['ok neither true nor false', { ok: 'yes', firstSeq: 0 }],
  ])('a malformed attach ack (%s) ends the request with INTERNAL and cancels it', async (_name, ack) => {
    const { client, socket } = resumable();
    const { id, promise } = accepted(client, socket);
    blip(socket);
    socket.ackAttach(id, ack);
    const error = await rejection(promise);
    expect(error.code).toBe('INTERNAL');
    expect(error.details).toEqual({ received: ack });
    expect(socket.cancels()).toEqual([id]);
  });

  test('a different session (the host did not accept the token): requests in flight fail as in v1, new ones work', async () => {
    const { client, socket } = resumable();
    const { promise } = accepted(client, socket);
    socket.drop('transport close');
    socket.serverAccepts();
    socket.session('tok-other');
    const error = await rejection(promise);
    expect(error).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
    expect(socket.attaches()).toEqual([]);
    const next = accepted(client, socket);
    socket.result(next.id, 1);
    await expect(next.promise).resolves.toBe(1);
    // The new session is the one to resume from now on.
    socket.drop();
    socket.serverAccepts();
    expect(socket.handshakes.at(-1)).toEqual({ session: 'tok-other' });
  });

  test('no session event on the new connection (an older host answers first): requests in flight fail as in v1', async () => {
    const { client, socket } = resumable();
    const { promise } = accepted(client, socket);
    const t = track(promise);
    socket.drop('transport close');
    socket.serverAccepts();
    const during = client.request('echo', 'new');
    await flushFake();
    expect(t.settled()).toBe(false);
    socket.ack(socket.lastRequest().id); // any event but `session` first: this host has no sessions
    await flushFake();
    expect(t.error()).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
    socket.result(socket.lastRequest().id, 'new');
    await expect(during).resolves.toBe('new');
  });
});

describe('exactly once', () => {
  test('a chunk whose seq is not higher than the last one delivered is dropped (a replay racing a live chunk)', async () => {
    const { client, socket } = resumable();
    const seen: Array<[unknown, number]> = [];
    const { id, promise } = accepted(client, socket, { onChunk: (data, seq) => seen.push([data, seq]) });
    socket.chunk(id, 0, 'a');
    socket.chunk(id, 1, 'b');
    blip(socket);
    socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 2 });
    socket.chunk(id, 1, 'b again');
    socket.chunk(id, 2, 'c');
    socket.chunk(id, 2, 'c again');
    socket.chunk(id, 3, 'd');
    socket.result(id, 'done');
    await expect(promise).resolves.toBe('done');
    expect(seen).toEqual([
      ['a', 0],
      ['b', 1],
      ['c', 2],
      ['d', 3],
    ]);
  });

  test('without onChunk the last seq is still counted, so the attach asks for what comes after it', () => {
    const { client, socket } = resumable();
    const { id } = accepted(client, socket);
    socket.chunk(id, 0, 'a');
    socket.chunk(id, 1, 'b');
    blip(socket);
    expect(socket.attaches()).toEqual([{ id, afterSeq: 1 }]);
  });
});

describe('cancelled or timed out while away', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  test('ends at once; `cancel` goes out once the next session event has arrived, before the attaches, and the request is not attached', async () => {
    const { client, socket } = resumable();
    const controller = new AbortController();
    const aborted = accepted(client, socket, { signal: controller.signal });
    const timedOut = accepted(client, socket, { timeoutMs: 1000 });
    const kept = accepted(client, socket);
    socket.drop();
    controller.abort();
    await expect(aborted.promise).rejects.toMatchObject({ code: 'CANCELLED' });
    jest.advanceTimersByTime(1000);
    await expect(timedOut.promise).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(socket.emittedOffline).toEqual([]);
    socket.serverAccepts();
    expect(socket.cancels()).toEqual([]); // not before the session event: the host has not resumed yet
    socket.session('tok-1');
    const after = socket.emitted.filter((e) => e.event === 'cancel' || e.event === 'attach').map((e) => [e.event, (e.args[0] as { id: string }).id]);
    expect(after).toEqual([
      ['cancel', aborted.id],
      ['cancel', timedOut.id],
      ['attach', kept.id],
    ]);
    blip(socket);
    expect(socket.cancels()).toEqual([aborted.id, timedOut.id]); // once
    expect(client.inFlight).toBe(1);
  });

  test('cancelled between the new connection and its session event: the cancel waits for the session event', async () => {
    const { client, socket } = resumable();
    const controller = new AbortController();
    const { id, promise } = accepted(client, socket, { signal: controller.signal });
    socket.drop();
    socket.serverAccepts();
    controller.abort();
    await expect(promise).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(socket.cancels()).toEqual([]);
    socket.session('tok-1');
    expect(socket.cancels()).toEqual([id]);
    expect(socket.attaches()).toEqual([]);
    expect(jest.getTimerCount()).toBe(0);
  });

  test('cancelled while its attach is unanswered: the cancel goes out at once', async () => {
    const { client, socket } = resumable();
    const controller = new AbortController();
    const { id, promise } = accepted(client, socket, { signal: controller.signal });
    blip(socket);
    controller.abort();
    await expect(promise).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(socket.cancels()).toEqual([id]);
    expect(jest.getTimerCount()).toBe(0);
  });

  test('once the window has passed there is nothing left to cancel', async () => {
    const { client, socket } = resumable();
    const controller = new AbortController();
    const { promise } = accepted(client, socket, { signal: controller.signal });
    const other = track(accepted(client, socket).promise);
    socket.drop();
    controller.abort();
    await expect(promise).rejects.toMatchObject({ code: 'CANCELLED' });
    jest.advanceTimersByTime(WINDOW_MS);
    await flushFake();
    expect(other.error()).toMatchObject({ code: 'UNAVAILABLE' });
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.cancels()).toEqual([]);
  });
});

describe('no leaks', () => {
  test('after thousands of requests parked and ended every way, no map entry, timer or listener is left', async () => {
    jest.useFakeTimers();
    try {
      const { client, socket } = resumable({ timeoutMs: 600_000 });
      const listenersBefore = socket.listenerCount();
      const controller = new AbortController();
      const outcomes: Array<Promise<unknown>> = [];
      const N = 3000;
      const ids: string[] = [];
      for (let i = 0; i < N; i++) {
        const signal = i % 5 === 3 ? controller.signal : undefined;
        const { id, promise } = accepted(client, socket, { signal, onChunk: () => undefined });
        socket.chunk(id, 0, i);
        ids.push(id);
        outcomes.push(promise.then(() => 'ok', (e: TaskgateError) => `${e.code}:${(e.details as { reason?: string })?.reason ?? ''}`));
      }
      socket.drop();
      controller.abort(); // every 5th, while away
      socket.serverAccepts();
      socket.session('tok-1');
      ids.forEach((id, i) => {
        switch (i % 5) {
          case 0: // resumed, then a result
            socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 1 });
            socket.result(id, i);
            break;
          case 1: // resumed with a gap
            socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 3 });
            break;
          case 2: // not resumed
            socket.ackAttach(id, { ok: false, error: { code: 'TASK_NOT_FOUND', message: 'no such task' } });
            break;
          case 3: // cancelled while away: never attached
            break;
          case 4: // attach unanswered until the window passes
            break;
        }
      });
      jest.advanceTimersByTime(WINDOW_MS);
      const codes = await Promise.all(outcomes);
      const count = (code: string) => codes.filter((c) => c === code).length;
      expect(count('ok')).toBe(N / 5);
      expect(count('UNAVAILABLE:resume-gap')).toBe(N / 5);
      expect(count('UNAVAILABLE:not-resumed')).toBe(N / 5);
      expect(count('CANCELLED:')).toBe(N / 5);
      expect(count('UNAVAILABLE:transport close')).toBe(N / 5);

      expect(client.inFlight).toBe(0);
      expect(jest.getTimerCount()).toBe(0);
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
      expect(socket.listenerCount()).toBe(listenersBefore);
      expect(socket.acks.size).toBe(0);
      expect(socket.emittedOffline).toEqual([]);
    } finally {
      jest.useRealTimers();
    }
  });
});
