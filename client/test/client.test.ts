/**
 * The client against an in-memory fake socket that plays the host (protocol v1 §1): results,
 * chunks, every refusal, worker errors, cancel, timeouts, (re)connecting, drops, and no leaks.
 */

import { getEventListeners } from 'node:events';

import {
  configureTaskgate,
  createClient,
  ERROR_CODES,
  getDefaultClient,
  isTaskgateError,
  makeBackendRequest,
  setDefaultClient,
  TaskgateError,
  type ConnectionState,
  type TaskgateClient,
} from '../src/index.js';
import { fakeSocketFactory, type FakeSocket } from './fake-socket.js';
import { flush, flushFake, rejection, track } from './helpers.js';

/** A connected client and its fake socket. */
function connected(options: { timeoutMs?: number } = {}): { client: TaskgateClient; socket: FakeSocket } {
  const io = fakeSocketFactory({ autoConnect: true });
  const client = createClient({ url: 'http://host.test', io, ...options });
  return { client, socket: io.last() };
}

/** A client whose socket has not connected yet. */
function connecting(): { client: TaskgateClient; socket: FakeSocket } {
  const io = fakeSocketFactory();
  const client = createClient({ url: 'http://host.test', io });
  return { client, socket: io.last() };
}

describe('createClient', () => {
  test('makes its socket with the url and socket options, without auto-connect, then connects', () => {
    const io = fakeSocketFactory();
    const client = createClient({
      url: 'http://host.test:8080',
      auth: { token: 'secret' },
      socketOptions: { transports: ['websocket'], path: '/socket.io/' },
      io,
    });
    const socket = io.last();
    expect(socket.url).toBe('http://host.test:8080');
    expect(socket.options).toEqual({
      transports: ['websocket'],
      tryAllTransports: true,
      path: '/socket.io/',
      auth: expect.any(Function), // asks for a session (protocol §4.1), see resume.test.ts
      autoConnect: false,
    });
    expect(socket.connectCalls).toBe(1);
    expect(client.socket).toBe(socket);
    expect(client.connectionState).toBe('connecting');
    socket.serverAccepts();
    expect(socket.handshakes).toEqual([{ token: 'secret', session: true }]);
  });

  test('with session: false the handshake is the v1 one exactly: the auth object as given, or none', () => {
    const withAuth = fakeSocketFactory();
    createClient({ url: 'http://host.test', auth: { token: 'secret' }, session: false, io: withAuth });
    expect(withAuth.last().options.auth).toEqual({ token: 'secret' });
    const without = fakeSocketFactory();
    createClient({ session: false, io: without });
    expect(without.last().options).toEqual({ transports: ['websocket', 'polling'], tryAllTransports: true, autoConnect: false });
  });

  test('connects over WebSocket first and falls back to long-polling only if WebSocket fails', () => {
    // WebSocket first: one connection per session (no sticky sessions behind a load
    // balancer), and the host serves it with its own, leaner transport.
    const io = fakeSocketFactory();
    createClient({ io });
    expect(io.last().options).toEqual({
      transports: ['websocket', 'polling'],
      tryAllTransports: true,
      auth: expect.any(Function),
      autoConnect: false,
    });
  });

  test('socket options override the transport defaults', () => {
    const io = fakeSocketFactory();
    createClient({ io, socketOptions: { transports: ['polling'], tryAllTransports: false } });
    expect(io.last().options).toEqual({ transports: ['polling'], tryAllTransports: false, auth: expect.any(Function), autoConnect: false });
  });

  test('without a url the socket connects to the page origin (socket.io-client default)', () => {
    const io = fakeSocketFactory();
    createClient({ io });
    expect(io.last().url).toBeUndefined();
  });
});

describe('request', () => {
  test('sends { id, requestType, payload } with an ack callback and resolves with the result', async () => {
    const { client, socket } = connected();
    const p = client.request('text.wordcount', { text: 'a b' });
    const sent = socket.lastRequest();
    expect(sent).toEqual({ id: expect.any(String), requestType: 'text.wordcount', payload: { text: 'a b' } });
    expect(socket.acks.has(sent.id)).toBe(true);
    socket.ack(sent.id);
    socket.result(sent.id, { words: 2, lines: 1, chars: 3 });
    await expect(p).resolves.toEqual({ words: 2, lines: 1, chars: 3 });
    expect(client.inFlight).toBe(0);
  });

  test('a traceparent option travels in the envelope (protocol §3.10), and only when given', () => {
    const { client, socket } = connected();
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    void client.request('echo', {}, { traceparent }).catch(() => undefined);
    expect(socket.lastRequest()).toEqual({ id: expect.any(String), requestType: 'echo', payload: {}, traceparent });
    void client.request('echo', {}).catch(() => undefined);
    expect('traceparent' in socket.lastRequest()).toBe(false);
    client.close();
  });

  test('ids are unique on a connection, and 1 to 128 characters', () => {
    const { client, socket } = connected();
    for (let i = 0; i < 200; i++) void client.request('echo', i).catch(() => undefined);
    const ids = socket.requests().map((r) => r.id);
    expect(new Set(ids).size).toBe(200);
    for (const id of ids) expect(id.length).toBeGreaterThanOrEqual(1), expect(id.length).toBeLessThanOrEqual(128);
  });

  test('two clients do not share ids by construction (random prefix)', () => {
    const a = connected();
    const b = connected();
    void a.client.request('echo', 1);
    void b.client.request('echo', 1);
    expect(a.socket.lastRequest().id).not.toBe(b.socket.lastRequest().id);
  });

  test('null, false, 0 and "" results resolve as themselves', async () => {
    const { client, socket } = connected();
    for (const data of [null, false, 0, '']) {
      const p = client.request('echo', data);
      const { id } = socket.lastRequest();
      socket.ack(id);
      socket.result(id, data);
      await expect(p).resolves.toBe(data);
    }
  });

  test('chunks reach onChunk(data, seq) in order, before the result', async () => {
    const { client, socket } = connected();
    const seen: Array<[unknown, number]> = [];
    const p = client.request('demo.countdown', { from: 3 }, { onChunk: (data, seq) => seen.push([data, seq]) });
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.chunk(id, 0, { remaining: 2 });
    socket.chunk(id, 1, { remaining: 1 });
    expect(seen).toEqual([
      [{ remaining: 2 }, 0],
      [{ remaining: 1 }, 1],
    ]);
    socket.chunk(id, 2, { remaining: 0 });
    socket.result(id, { done: true });
    await expect(p).resolves.toEqual({ done: true });
    expect(seen.map(([, seq]) => seq)).toEqual([0, 1, 2]);
  });

  test('chunks without onChunk are ignored, and the result still arrives', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', { chunks: 2 });
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.chunk(id, 0, { index: 0 });
    socket.result(id, 'ok');
    await expect(p).resolves.toBe('ok');
  });

  test('an onChunk that throws ends the request with that error and cancels it on the host', async () => {
    const { client, socket } = connected();
    const bug = new Error('bug in onChunk');
    const p = client.request('echo', {}, {
      onChunk: () => {
        throw bug;
      },
    });
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.chunk(id, 0, 'x');
    await expect(p).rejects.toBe(bug);
    expect(socket.cancels()).toEqual([id]);
    expect(client.inFlight).toBe(0);
  });
});

describe('errors', () => {
  test.each(ERROR_CODES.map((code) => [code]))('an ack refusal with %s rejects with that code, message and details', async (code) => {
    const { client, socket } = connected();
    const p = client.request('text.wordcount', { text: 5 });
    const { id } = socket.lastRequest();
    socket.refuse(id, code, `refused: ${code}`, { problems: [{ pointer: '/text', message: 'must be a string' }] });
    const error = await rejection(p);
    expect(error.code).toBe(code);
    expect(error.message).toBe(`refused: ${code}`);
    expect(error.details).toEqual({ problems: [{ pointer: '/text', message: 'must be a string' }] });
    expect(error.name).toBe('TaskgateError');
    expect(error).toBeInstanceOf(Error);
    expect(socket.cancels()).toEqual([]); // a refused request is not in flight: nothing to cancel
    expect(client.inFlight).toBe(0);
  });

  test('INVALID_PAYLOAD problems are readable through error.problems', async () => {
    const { client, socket } = connected();
    const p = client.request('text.wordcount', { text: 5 });
    socket.refuse(socket.lastRequest().id, 'INVALID_PAYLOAD', '/text: invalid type: integer `5`, expected a string', {
      problems: [{ pointer: '/text', message: 'invalid type: integer `5`, expected a string' }, { nonsense: true }],
    });
    const error = await rejection(p);
    expect(error.problems).toEqual([{ pointer: '/text', message: 'invalid type: integer `5`, expected a string' }]);
  });

  test('a refusal without details has details undefined and toJSON without them', async () => {
    const { client, socket } = connected();
    const p = client.request('no.such.type', {});
    socket.refuse(socket.lastRequest().id, 'UNKNOWN_REQUEST_TYPE', 'no enabled plugin serves `no.such.type`');
    const error = await rejection(p);
    expect(error.details).toBeUndefined();
    expect(error.problems).toEqual([]);
    expect(error.toJSON()).toEqual({ code: 'UNKNOWN_REQUEST_TYPE', message: 'no enabled plugin serves `no.such.type`' });
  });

  test.each([
    ['TIMEOUT', { timeoutMs: 30000 }],
    ['CANCELLED', undefined],
    ['WORKER_ERROR', { trace: 'x' }],
    ['NOT_FOUND', { what: 'image' }], // a worker's own code is kept
  ])('an error response %s rejects with it', async (code, details) => {
    const { client, socket } = connected();
    const p = client.request('echo', {});
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.error(id, details === undefined ? { code, message: 'it failed' } : { code, message: 'it failed', details });
    const error = await rejection(p);
    expect(error.toJSON()).toEqual(details === undefined ? { code, message: 'it failed' } : { code, message: 'it failed', details });
  });

  test('a malformed error object becomes INTERNAL and keeps what was received', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', {});
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.error(id, 'not an object');
    const error = await rejection(p);
    expect(error.code).toBe('INTERNAL');
    expect(error.details).toEqual({ received: 'not an object' });
  });

  test('a malformed ack becomes INTERNAL and the request is cancelled on the host', async () => {
    const { client, socket } = connected();
    for (const ack of [undefined, null, 'yes', { ok: 'true' }, {}]) {
      const p = client.request('echo', {});
      const { id } = socket.lastRequest();
      socket.rawAck(id, ack);
      const error = await rejection(p);
      expect(error.code).toBe('INTERNAL');
      expect(socket.cancels()).toContain(id);
    }
    expect(client.inFlight).toBe(0);
  });

  test('a refusal whose error is malformed becomes INTERNAL', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', {});
    socket.ack(socket.lastRequest().id, { ok: false, error: { code: 5 } });
    expect((await rejection(p)).code).toBe('INTERNAL');
  });
});

describe('responses that do not belong', () => {
  test('garbage, unknown ids and unknown types are ignored; nothing after the final response', async () => {
    const { client, socket } = connected();
    const seen: unknown[] = [];
    const p = client.request('echo', {}, { onChunk: (d) => seen.push(d) });
    const { id } = socket.lastRequest();
    socket.ack(id);
    for (const garbage of [null, 5, 'x', [], { id: 7, type: 'result', data: 1 }, { id: 'other', type: 'result', data: 1 }]) {
      socket.respond(garbage);
    }
    socket.respond({ id, type: 'progress', data: 1 });
    expect(track(p).settled()).toBe(false);
    socket.chunk(id, 0, 'a');
    socket.result(id, 'done');
    socket.chunk(id, 1, 'late');
    socket.result(id, 'again');
    socket.error(id, { code: 'INTERNAL', message: 'late' });
    await expect(p).resolves.toBe('done');
    expect(seen).toEqual(['a']);
  });

  test('an ack arriving after the request ended is ignored', async () => {
    const { client, socket } = connected();
    const controller = new AbortController();
    const p = client.request('echo', {}, { signal: controller.signal });
    const { id } = socket.lastRequest();
    controller.abort();
    await expect(p).rejects.toMatchObject({ code: 'CANCELLED' });
    socket.ack(id, { ok: false, error: { code: 'INVALID_PAYLOAD', message: 'late' } });
    socket.error(id, { code: 'CANCELLED', message: 'the client cancelled the request' });
    expect(client.inFlight).toBe(0);
  });
});

describe('cancel (AbortSignal)', () => {
  test('rejects with CANCELLED at once and sends cancel { id }', async () => {
    const { client, socket } = connected();
    const controller = new AbortController();
    const p = client.request('demo.countdown', { from: 100 }, { signal: controller.signal });
    const t = track(p);
    const { id } = socket.lastRequest();
    socket.ack(id);
    controller.abort();
    await Promise.resolve(); // one microtask: no host reply involved
    await Promise.resolve();
    expect(t.settled()).toBe(true);
    expect(t.error()).toMatchObject({ code: 'CANCELLED' });
    expect(socket.emitted.at(-1)).toEqual({ event: 'cancel', args: [{ id }] });
    socket.chunk(id, 0, { remaining: 99 }); // in flight on the wire: ignored
    expect(client.inFlight).toBe(0);
  });

  test('cancels before the ack too (the host honours it right after its ack)', async () => {
    const { client, socket } = connected();
    const controller = new AbortController();
    const p = client.request('echo', { delayMs: 1000 }, { signal: controller.signal });
    const { id } = socket.lastRequest();
    controller.abort();
    await expect(p).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(socket.cancels()).toEqual([id]);
  });

  test('an already aborted signal rejects without sending anything', async () => {
    const { client, socket } = connected();
    await expect(client.request('echo', {}, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(socket.emitted).toEqual([]);
    expect(client.inFlight).toBe(0);
  });

  test('aborting a request still waiting for the connection never sends it', async () => {
    const { client, socket } = connecting();
    const controller = new AbortController();
    const p = client.request('echo', {}, { signal: controller.signal });
    controller.abort();
    await expect(p).rejects.toMatchObject({ code: 'CANCELLED' });
    socket.serverAccepts();
    expect(socket.emitted).toEqual([]);
  });

  test('aborting after the request ended does nothing', async () => {
    const { client, socket } = connected();
    const controller = new AbortController();
    const p = client.request('echo', 1, { signal: controller.signal });
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.result(id, 1);
    await expect(p).resolves.toBe(1);
    controller.abort();
    expect(socket.cancels()).toEqual([]);
  });
});

describe('client-side timeout', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  test('rejects with TIMEOUT { timeoutMs } and cancels on the host', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', { delayMs: 60000 }, { timeoutMs: 500 });
    const t = track(p);
    const { id } = socket.lastRequest();
    socket.ack(id);
    jest.advanceTimersByTime(499);
    await Promise.resolve();
    expect(t.settled()).toBe(false);
    jest.advanceTimersByTime(1);
    const error = await rejection(p);
    expect(error.code).toBe('TIMEOUT');
    expect(error.details).toEqual({ timeoutMs: 500 });
    expect(socket.cancels()).toEqual([id]);
    expect(jest.getTimerCount()).toBe(0);
  });

  test('the client default applies, and a request may override it', async () => {
    const { client, socket } = connected({ timeoutMs: 1000 });
    const byDefault = track(client.request('echo', 1));
    const longer = track(client.request('echo', 2, { timeoutMs: 5000 }));
    jest.advanceTimersByTime(1000);
    await flushFake();
    expect(byDefault.error()).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 1000 } });
    expect(longer.settled()).toBe(false);
    jest.advanceTimersByTime(4000);
    await flushFake();
    expect(longer.error()).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 5000 } });
    expect(socket.cancels()).toHaveLength(2);
  });

  test('without any timeout a request waits as long as the host does', async () => {
    const { client, socket } = connected();
    const t = track(client.request('echo', 1));
    expect(jest.getTimerCount()).toBe(0);
    jest.advanceTimersByTime(10 * 60 * 1000);
    await flushFake();
    expect(t.settled()).toBe(false);
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.result(id, 1);
    await flushFake();
    expect(t.value()).toBe(1);
  });

  test('a timer is cleared when the request ends first', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', 1, { timeoutMs: 1000 });
    expect(jest.getTimerCount()).toBe(1);
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.result(id, 1);
    await expect(p).resolves.toBe(1);
    expect(jest.getTimerCount()).toBe(0);
  });

  test('the timeout counts while waiting for the connection; the request is then never sent', async () => {
    const { client, socket } = connecting();
    const p = client.request('echo', 1, { timeoutMs: 200 });
    jest.advanceTimersByTime(200);
    await expect(p).rejects.toMatchObject({ code: 'TIMEOUT' });
    socket.serverAccepts();
    expect(socket.emitted).toEqual([]);
  });
});

describe('connecting and reconnecting', () => {
  test('requests made while connecting wait, then go out in order on connect', async () => {
    const { client, socket } = connecting();
    const p1 = client.request('echo', 1);
    const p2 = client.request('echo', 2);
    expect(socket.emitted).toEqual([]);
    expect(client.inFlight).toBe(2);
    socket.serverAccepts();
    expect(socket.requests().map((r) => r.payload)).toEqual([1, 2]);
    for (const r of socket.requests()) {
      socket.ack(r.id);
      socket.result(r.id, r.payload);
    }
    await expect(Promise.all([p1, p2])).resolves.toEqual([1, 2]);
  });

  test('a failed first attempt keeps requests waiting (socket.io-client retries)', async () => {
    const { client, socket } = connecting();
    const t = track(client.request('echo', 1));
    socket.connectError('xhr poll error', true);
    expect(client.connectionState).toBe('connecting');
    await flush();
    expect(t.settled()).toBe(false);
    socket.serverAccepts();
    expect(socket.requests()).toHaveLength(1);
  });

  test('a drop rejects requests in flight with UNAVAILABLE, and does not resend them', async () => {
    const { client, socket } = connected();
    const inFlight = client.request('echo', { delayMs: 1000 });
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.drop('transport close');
    const error = await rejection(inFlight);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.details).toEqual({ reason: 'transport close' });
    expect(client.connectionState).toBe('reconnecting');
    socket.serverAccepts();
    expect(socket.requests()).toHaveLength(1); // not retried
    expect(socket.cancels()).toEqual([]); // the host cancels a dropped connection's requests itself
  });

  test('a request not yet acked when the connection drops rejects too', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', 1);
    socket.drop();
    await expect(p).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    // socket.io-client may still call the old ack callback: it must not matter.
    socket.ack(socket.lastRequest().id, { ok: true });
    expect(client.inFlight).toBe(0);
  });

  test('requests made while reconnecting wait for the new connection', async () => {
    const { client, socket } = connected();
    socket.drop();
    const p = client.request('echo', 'after');
    expect(socket.requests()).toHaveLength(0);
    socket.connectError('websocket error', true);
    expect(client.connectionState).toBe('reconnecting');
    socket.serverAccepts();
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.result(id, 'after');
    await expect(p).resolves.toBe('after');
  });

  test('a host that refuses the connection (unauthorized) fails waiting and new requests with UNAVAILABLE', async () => {
    const { client, socket } = connecting();
    const waiting = client.request('echo', 1);
    socket.connectError('unauthorized', false);
    expect(client.connectionState).toBe('disconnected');
    const error = await rejection(waiting);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.message).toContain('unauthorized');
    expect(error.details).toEqual({ reason: 'unauthorized' });
    await expect(client.request('echo', 2)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(client.inFlight).toBe(0);
    expect(socket.emitted).toEqual([]);
  });

  test('a disconnect by the server (no retry) ends everything and says disconnected', async () => {
    const { client, socket } = connected();
    const sent = client.request('echo', 1);
    socket.drop('io server disconnect', false);
    await expect(sent).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(client.connectionState).toBe('disconnected');
    await expect(client.request('echo', 2)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  test('connecting again after a refusal serves requests again', async () => {
    const { client, socket } = connecting();
    socket.connectError('unauthorized', false);
    socket.serverAccepts();
    expect(client.connectionState).toBe('connected');
    const p = client.request('echo', 1);
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.result(id, 1);
    await expect(p).resolves.toBe(1);
  });
});

describe('connection state', () => {
  test('connecting → connected → reconnecting → connected → disconnected, each change told once', () => {
    const { client, socket } = connecting();
    const seen: ConnectionState[] = [];
    const unsubscribe = client.subscribe((s) => seen.push(s));
    socket.serverAccepts();
    socket.drop();
    socket.connectError('again', true);
    socket.serverAccepts();
    client.close();
    expect(seen).toEqual(['connected', 'reconnecting', 'connected', 'disconnected']);
    unsubscribe();
    expect(client.connectionState).toBe('disconnected');
  });

  test('unsubscribe stops the calls; a listener may unsubscribe another while being called', () => {
    const { client, socket } = connecting();
    const a: ConnectionState[] = [];
    const b: ConnectionState[] = [];
    let unsubscribeB = () => {};
    const unsubscribeA = client.subscribe((s) => {
      a.push(s);
      unsubscribeB();
    });
    unsubscribeB = client.subscribe((s) => b.push(s));
    socket.serverAccepts();
    socket.drop();
    unsubscribeA();
    socket.serverAccepts();
    expect(a).toEqual(['connected', 'reconnecting']);
    expect(b).toEqual(['connected']); // called in the round it was removed in, then never again
  });
});

describe('close', () => {
  test('rejects waiting and in-flight requests, removes its listeners and disconnects', async () => {
    const { client, socket } = connected();
    const listenersBefore = socket.listenerCount();
    expect(listenersBefore).toBe(6); // connect, disconnect, connect_error, response, token_expired, session
    const sent = client.request('echo', 1);
    socket.drop();
    await expect(sent).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    const waiting = client.request('echo', 2);
    client.close();
    await expect(waiting).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'the taskgate client was closed' });
    expect(socket.listenerCount()).toBe(0);
    expect(socket.disconnectCalls).toBe(1);
    await expect(client.request('echo', 3)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    client.close(); // twice is harmless
    expect(socket.disconnectCalls).toBe(1);
  });

  test('requests in flight at close get the close error, not a connection-lost one', async () => {
    const { client, socket } = connected();
    const p = client.request('echo', 1);
    socket.ack(socket.lastRequest().id);
    client.close();
    await expect(p).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'the taskgate client was closed' });
  });
});

describe('no leaks', () => {
  test('after thousands of requests ending every way, no map entry, timer or listener is left', async () => {
    jest.useFakeTimers();
    try {
      const { client, socket } = connected({ timeoutMs: 60_000 });
      const listenersBefore = socket.listenerCount();
      const controller = new AbortController(); // one signal shared by many requests
      const outcomes: Array<Promise<unknown>> = [];
      const N = 6000;
      for (let i = 0; i < N; i++) {
        const own = new AbortController();
        const signal = i % 2 === 0 ? controller.signal : own.signal;
        const p = client.request('echo', i, { signal, onChunk: () => undefined, timeoutMs: i % 6 === 4 ? 10 : undefined });
        outcomes.push(p.catch((e: TaskgateError) => e.code));
        const { id } = socket.lastRequest();
        switch (i % 6) {
          case 0: // result after chunks
            socket.ack(id);
            socket.chunk(id, 0, i);
            socket.result(id, i);
            break;
          case 1: // refused
            socket.refuse(id, 'INVALID_PAYLOAD', 'no');
            break;
          case 2: // error response
            socket.ack(id);
            socket.error(id, { code: 'WORKER_ERROR', message: 'failed' });
            break;
          case 3: // cancelled by its own signal
            socket.ack(id);
            own.abort();
            break;
          case 4: // timed out (timer fired below)
            socket.ack(id);
            break;
          case 5: // left in flight until the drop below
            socket.ack(id);
            break;
        }
      }
      jest.advanceTimersByTime(10);
      socket.drop();
      socket.serverAccepts();
      const codes = await Promise.all(outcomes);
      const count = (code: unknown) => codes.filter((c) => c === code).length;
      expect(count('INVALID_PAYLOAD')).toBe(N / 6);
      expect(count('WORKER_ERROR')).toBe(N / 6);
      expect(count('CANCELLED')).toBe(N / 6);
      expect(count('TIMEOUT')).toBe(N / 6);
      expect(count('UNAVAILABLE')).toBe(N / 6);

      expect(client.inFlight).toBe(0);
      expect(jest.getTimerCount()).toBe(0);
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
      expect(socket.listenerCount()).toBe(listenersBefore);
      expect(socket.acks.size).toBe(0);
    } finally {
      jest.useRealTimers();
    }
  });
});

describe('makeBackendRequest and the default client', () => {
  afterEach(() => setDefaultClient(undefined));

  test('without a default client it rejects, saying how to configure one', async () => {
    await expect(makeBackendRequest('echo', 1)).rejects.toThrow(/configureTaskgate/);
    expect(() => getDefaultClient()).toThrow(/configureTaskgate/);
  });

  test('configureTaskgate makes the default client that makeBackendRequest uses', async () => {
    const io = fakeSocketFactory({ autoConnect: true });
    const client = configureTaskgate({ url: 'http://host.test', io, timeoutMs: 1234 });
    expect(getDefaultClient()).toBe(client);
    const seen: unknown[] = [];
    const p = makeBackendRequest('demo.countdown', { from: 1 }, { onChunk: (c) => seen.push(c) });
    const socket = io.last();
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.chunk(id, 0, { remaining: 0 });
    socket.result(id, { done: true });
    await expect(p).resolves.toEqual({ done: true });
    expect(seen).toEqual([{ remaining: 0 }]);
    client.close();
  });

  test('setDefaultClient switches the client makeBackendRequest uses', async () => {
    const a = connected();
    const b = connected();
    setDefaultClient(a.client);
    void makeBackendRequest('echo', 'to a');
    setDefaultClient(b.client);
    void makeBackendRequest('echo', 'to b');
    expect(a.socket.requests().map((r) => r.payload)).toEqual(['to a']);
    expect(b.socket.requests().map((r) => r.payload)).toEqual(['to b']);
  });
});

describe('TaskgateError', () => {
  test('fromWire keeps code, message and details; toJSON gives the wire object back', () => {
    const e = TaskgateError.fromWire({ code: 'PAYLOAD_TOO_LARGE', message: 'too large', details: { size: 2, limit: 1 } });
    expect(e).toBeInstanceOf(Error);
    expect(isTaskgateError(e)).toBe(true);
    expect(e.toJSON()).toEqual({ code: 'PAYLOAD_TOO_LARGE', message: 'too large', details: { size: 2, limit: 1 } });
    expect(JSON.parse(JSON.stringify(e))).toEqual(e.toJSON());
    expect(isTaskgateError(new Error('x'))).toBe(false);
  });
});
