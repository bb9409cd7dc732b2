/**
 * Tasks (protocol §4.3, the client's rules in §3.7): detached requests that wait for the next
 * session however long the client is away, caller-chosen ids (checked locally; a resend is
 * answered like an attach, chunks from seq 0), `tasks()` and its checks, `attach(id)` as a
 * request-like promise (gaps to `onGap`, refusals, cancel, release, blips), and no leaks. The
 * fake socket plays a host with sessions; a reload is a second client on the same storage.
 */

import { getEventListeners } from 'node:events';

import {
  createClient,
  makeBackendRequest,
  setDefaultClient,
  type ClientOptions,
  type StorageLike,
  type TaskgateClient,
  type TaskgateError,
  type TaskInfo,
} from '../src/index.js';
import { fakeSocketFactory, type FakeSocket } from './fake-socket.js';
import { flushFake, rejection, track } from './helpers.js';

const URL = 'http://host.test';
const WINDOW_MS = 60_000;

const clients: TaskgateClient[] = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

/** A connected client whose host has opened session `tok-1`. */
function resumable(options: Partial<ClientOptions> = {}): { client: TaskgateClient; socket: FakeSocket } {
  const io = fakeSocketFactory();
  const client = createClient({ url: URL, io, session: { storage: 'memory' }, ...options });
  clients.push(client);
  const socket = io.last();
  socket.serverAccepts();
  socket.session('tok-1', WINDOW_MS);
  return { client, socket };
}

function settledLater<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined); // a test that leaves it pending: its rejection at close is expected
  return promise;
}

function running(id: string, remaining: number): TaskInfo {
  return { id, requestType: 'demo.countdown', state: 'running', startedAt: 1, lastSeq: 8 - remaining, lastChunk: { remaining } };
}

const TASK: TaskInfo = { id: 'job-1', requestType: 'demo.countdown', state: 'running', startedAt: 1_700_000_000_000, lastSeq: 3, lastChunk: { remaining: 6 } };

describe('request options detach and id', () => {
  test('detach: true is sent in the envelope; without it the envelope is as in v1', () => {
    const { client, socket } = resumable();
    settledLater(client.request('demo.countdown', { from: 3 }, { detach: true }));
    expect(socket.lastRequest()).toMatchObject({ requestType: 'demo.countdown', payload: { from: 3 }, detach: true });
    settledLater(client.request('echo', 1));
    expect(Object.keys(socket.lastRequest()).sort()).toEqual(['id', 'payload', 'requestType']);
  });

  test('id chooses the request id', async () => {
    const { client, socket } = resumable();
    const promise = client.request('echo', 1, { id: 'order-42:charge' });
    expect(socket.lastRequest().id).toBe('order-42:charge');
    socket.ack('order-42:charge');
    socket.result('order-42:charge', 'ok');
    await expect(promise).resolves.toBe('ok');
  });

  test.each([
    ['empty', ''],
    ['129 characters', 'x'.repeat(129)],
    ['not a string', 42 as unknown as string],
  ])('an id that is %s is refused BAD_REQUEST locally, never sent', async (_name, id) => {
    const { client, socket } = resumable();
    const error = await rejection(client.request('echo', 1, { id }));
    expect(error.code).toBe('BAD_REQUEST');
    expect(socket.requests()).toEqual([]);
    expect(client.inFlight).toBe(0);
  });

  test('128 characters is fine, counted as characters: 128 emoji are 256 UTF-16 units', () => {
    const { client, socket } = resumable();
    settledLater(client.request('echo', 1, { id: 'x'.repeat(128) }));
    settledLater(client.request('echo', 1, { id: '😀'.repeat(128) }));
    expect(socket.requests()).toHaveLength(2);
  });

  test('an id this client already has in flight is refused DUPLICATE_ID locally', async () => {
    const { client, socket } = resumable();
    settledLater(client.request('echo', 1, { id: 'same' }));
    const error = await rejection(client.request('echo', 2, { id: 'same' }));
    expect(error.code).toBe('DUPLICATE_ID');
    expect(socket.requests()).toHaveLength(1);
  });

  test('a resend of an id the host already has: the host answers like an attach, every chunk from seq 0, once each', async () => {
    const { client, socket } = resumable();
    const first = client.request('demo.countdown', { from: 3 }, { id: 'job-1', detach: true });
    socket.drop('io server disconnect', false); // say the host went away: UNAVAILABLE
    await expect(first).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    const io = fakeSocketFactory();
    const again = createClient({ url: URL, io, session: { storage: 'memory' } });
    clients.push(again);
    const s = io.last();
    s.serverAccepts();
    s.session('tok-1');
    const seen: Array<[unknown, number]> = [];
    const retry = again.request('demo.countdown', { from: 3 }, { id: 'job-1', detach: true, onChunk: (d, seq) => seen.push([d, seq]) });
    s.ack('job-1', { ok: true });
    s.chunk('job-1', 0, 'a');
    s.chunk('job-1', 1, 'b');
    s.chunk('job-1', 1, 'b'); // a live chunk racing the replay
    s.chunk('job-1', 2, 'c');
    s.result('job-1', 'done');
    await expect(retry).resolves.toBe('done');
    expect(seen).toEqual([
      ['a', 0],
      ['b', 1],
      ['c', 2],
    ]);
  });
});

describe('a page reload (protocol §4.3)', () => {
  test('the reloaded page presents the stored token, lists the task with its progress, and follows it to the end', async () => {
    const items = new Map<string, string>();
    const storage: StorageLike = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => void items.set(k, v) };
    const before = fakeSocketFactory();
    const page1 = createClient({ url: URL, io: before, session: { storage } });
    clients.push(page1);
    before.last().serverAccepts();
    before.last().session('tok-1');
    setDefaultClient(page1);
    try {
      const started = makeBackendRequest('demo.countdown', { from: 9 }, { detach: true, id: 'job-1' });
      expect(before.last().lastRequest()).toMatchObject({ id: 'job-1', detach: true });
      before.last().ack('job-1');
      before.last().chunk('job-1', 0, { remaining: 8 });
      page1.close(); // the page goes away
      await expect(started).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    } finally {
      setDefaultClient(undefined);
    }

    const after = fakeSocketFactory();
    const page2 = createClient({ url: URL, io: after, session: { storage } });
    clients.push(page2);
    const socket = after.last();
    socket.serverAccepts();
    expect(socket.handshakes).toEqual([{ session: 'tok-1' }]);
    socket.session('tok-1');
    const listed = page2.tasks();
    socket.ackTasks({ ok: true, tasks: [running('job-1', 8)] });
    const [task] = await listed;
    expect(task).toMatchObject({ id: 'job-1', state: 'running', lastChunk: { remaining: 8 } });
    const seen: unknown[] = [];
    const followed = page2.attach(task!.id, { onChunk: (d) => seen.push(d) });
    socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 0 });
    for (let seq = 0; seq < 9; seq++) socket.chunk('job-1', seq, { remaining: 8 - seq });
    socket.result('job-1', { done: true });
    await expect(followed).resolves.toEqual({ done: true });
    expect(seen).toHaveLength(9);
  });
});

describe('a detached request while the connection is away', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  test('outlives the resume window (an ordinary one does not), then is attached on the next session and goes on', async () => {
    const { client, socket } = resumable();
    const seen: number[] = [];
    const task = track(client.request('demo.countdown', { from: 9 }, { detach: true, id: 'job-1', onChunk: (_d, seq) => seen.push(seq) }));
    const plain = track(client.request('echo', 1));
    const plainId = socket.lastRequest().id;
    socket.ack('job-1');
    socket.ack(plainId);
    socket.chunk('job-1', 0, 'a');
    socket.drop('transport close');
    socket.connectError('websocket error', true);
    jest.advanceTimersByTime(10 * WINDOW_MS);
    await flushFake();
    expect(plain.error()).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
    expect(task.settled()).toBe(false);
    expect(client.connectionState).toBe('reconnecting');

    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.attaches()).toEqual([{ id: 'job-1', afterSeq: 0 }]);
    socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 1 });
    socket.chunk('job-1', 1, 'b');
    socket.result('job-1', 'done');
    await flushFake();
    expect(task.value()).toBe('done');
    expect(seen).toEqual([0, 1]);
    expect(jest.getTimerCount()).toBe(0);
  });

  test('a different session does not end it: it is attached there too (the owner may be the user); TASK_NOT_FOUND ends it', async () => {
    const { client, socket } = resumable();
    const task = client.request('demo.countdown', { from: 9 }, { detach: true, id: 'job-1' });
    const plain = client.request('echo', 1);
    socket.drop();
    socket.serverAccepts();
    socket.session('tok-2');
    await expect(plain).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(socket.attaches()).toEqual([{ id: 'job-1', afterSeq: -1 }]);
    socket.ackAttach('job-1', { ok: false, error: { code: 'TASK_NOT_FOUND', message: 'no such task' } });
    const error = await rejection(task);
    expect(error).toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'not-resumed', error: { code: 'TASK_NOT_FOUND' } } });
  });

  test('a host without sessions answering first ends it as in v1', async () => {
    const { client, socket } = resumable();
    const task = client.request('demo.countdown', { from: 9 }, { detach: true });
    socket.drop('transport close');
    jest.advanceTimersByTime(2 * WINDOW_MS);
    socket.serverAccepts();
    const other = settledLater(client.request('echo', 2));
    socket.ack(socket.lastRequest().id); // not a session event first
    await expect(task).rejects.toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'transport close' } });
    void other;
  });

  test('cancelled while away after the window passed: the cancel still goes out on the next session (the host kept the task)', async () => {
    const { client, socket } = resumable();
    const controller = new AbortController();
    const task = client.request('demo.countdown', { from: 9 }, { detach: true, id: 'job-1', signal: controller.signal });
    const plainController = new AbortController();
    const plain = client.request('echo', 1, { signal: plainController.signal });
    const plainId = socket.lastRequest().id;
    socket.drop();
    controller.abort();
    plainController.abort();
    await expect(task).rejects.toMatchObject({ code: 'CANCELLED' });
    await expect(plain).rejects.toMatchObject({ code: 'CANCELLED' });
    jest.advanceTimersByTime(WINDOW_MS);
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.cancels()).toEqual(['job-1']); // not the plain one: the host cancelled it itself
    expect(socket.cancels()).not.toContain(plainId);
    expect(socket.attaches()).toEqual([]);
  });

  test('released while away: no cancel, no attach, the promise ends CANCELLED { released }', async () => {
    const { client, socket } = resumable();
    const release = new AbortController();
    const task = client.request('demo.countdown', { from: 9 }, { detach: true, id: 'job-1', releaseSignal: release.signal });
    socket.drop();
    release.abort();
    await expect(task).rejects.toMatchObject({ code: 'CANCELLED', details: { released: true } });
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.cancels()).toEqual([]);
    expect(socket.attaches()).toEqual([]);
    expect(getEventListeners(release.signal, 'abort')).toHaveLength(0);
  });

  test('close() still ends it', async () => {
    const { client, socket } = resumable();
    const task = client.request('demo.countdown', { from: 9 }, { detach: true });
    socket.drop();
    jest.advanceTimersByTime(WINDOW_MS);
    client.close();
    await expect(task).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'the taskgate client was closed' });
    expect(jest.getTimerCount()).toBe(0);
  });
});

describe('client.tasks()', () => {
  test('emits tasks with an ack and resolves with the list, null optionals read as absent', async () => {
    const { client, socket } = resumable();
    const promise = client.tasks();
    expect(socket.emitted.at(-1)?.event).toBe('tasks');
    const ended = { id: 'job-0', requestType: 'echo', state: 'succeeded', startedAt: 1, endedAt: 2, lastSeq: null, lastChunk: null };
    socket.ackTasks({ ok: true, tasks: [TASK, ended] });
    await expect(promise).resolves.toEqual([TASK, { id: 'job-0', requestType: 'echo', state: 'succeeded', startedAt: 1, endedAt: 2 }]);
  });

  test('a chunk whose data is null is progress too', async () => {
    const { client, socket } = resumable();
    const promise = client.tasks();
    socket.ackTasks({ ok: true, tasks: [{ ...TASK, lastSeq: 0, lastChunk: null }] });
    await expect(promise).resolves.toEqual([{ ...TASK, lastSeq: 0, lastChunk: null }]);
  });

  test('{ ok: false, error } rejects with that error', async () => {
    const { client, socket } = resumable();
    const promise = client.tasks();
    socket.ackTasks({ ok: false, error: { code: 'BAD_REQUEST', message: 'no session' } });
    await expect(promise).rejects.toMatchObject({ code: 'BAD_REQUEST', message: 'no session' });
  });

  test.each([
    ['no body', undefined],
    ['no tasks', { ok: true }],
    ['tasks not an array', { ok: true, tasks: {} }],
    ['a task without id', { ok: true, tasks: [{ ...TASK, id: undefined }] }],
    ['an unknown state', { ok: true, tasks: [{ ...TASK, state: 'paused' }] }],
    ['startedAt a string', { ok: true, tasks: [{ ...TASK, startedAt: '1' }] }],
    ['lastSeq not an integer', { ok: true, tasks: [{ ...TASK, lastSeq: 1.5 }] }],
    ['endedAt a string', { ok: true, tasks: [{ ...TASK, endedAt: 'later' }] }],
    ['a null task', { ok: true, tasks: [null] }],
  ])('a malformed ack (%s) rejects INTERNAL', async (_name, ack) => {
    const { client, socket } = resumable();
    const promise = client.tasks();
    socket.ackTasks(ack);
    const error = await rejection(promise);
    expect(error.code).toBe('INTERNAL');
    expect(error.details).toEqual({ received: ack });
  });

  test('waits for the connection; a drop before the answer asks again on the next connection, stale answers ignored', async () => {
    const io = fakeSocketFactory();
    const client = createClient({ url: URL, io, session: { storage: 'memory' } });
    clients.push(client);
    const socket = io.last();
    const promise = track(client.tasks());
    expect(socket.tasksCalls()).toBe(0);
    socket.serverAccepts();
    expect(socket.tasksCalls()).toBe(1);
    socket.drop();
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.tasksCalls()).toBe(2);
    socket.ackTasks({ ok: true, tasks: [{ ...TASK, state: 'failed' }] }); // the first connection's: stale
    await flushFake();
    expect(promise.settled()).toBe(false);
    socket.ackTasks({ ok: true, tasks: [TASK] });
    await flushFake();
    expect(promise.value()).toEqual([TASK]);
    expect(socket.emittedOffline).toEqual([]);
  });

  test('a call made by a state listener on connect goes out once', () => {
    const io = fakeSocketFactory();
    const client = createClient({ url: URL, io, session: { storage: 'memory' } });
    clients.push(client);
    client.subscribe((state) => {
      if (state === 'connected') void client.tasks().catch(() => undefined);
    });
    io.last().serverAccepts();
    expect(io.last().tasksCalls()).toBe(1);
  });

  test('timeoutMs (default: the client’s) and signal end a call that gets no answer (a host without tasks never acks)', async () => {
    jest.useFakeTimers();
    try {
      const { client, socket } = resumable({ timeoutMs: 3000 });
      const byDefault = track(client.tasks());
      const own = track(client.tasks({ timeoutMs: 1000 }));
      const controller = new AbortController();
      const aborted = track(client.tasks({ signal: controller.signal }));
      controller.abort();
      jest.advanceTimersByTime(1000);
      await flushFake();
      expect(aborted.error()).toMatchObject({ code: 'CANCELLED' });
      expect(own.error()).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 1000 } });
      expect(byDefault.settled()).toBe(false);
      jest.advanceTimersByTime(2000);
      await flushFake();
      expect(byDefault.error()).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 3000 } });
      socket.ackTasks({ ok: true, tasks: [] }); // too late: ignored
      expect(jest.getTimerCount()).toBe(0);
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
      await expect(client.tasks({ signal: controller.signal })).rejects.toMatchObject({ code: 'CANCELLED' });
    } finally {
      jest.useRealTimers();
    }
  });

  test('closed, refused, or closing while waiting: UNAVAILABLE', async () => {
    const { client } = resumable();
    client.close();
    await expect(client.tasks()).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    const io = fakeSocketFactory();
    const refused = createClient({ url: URL, io, session: { storage: 'memory' } });
    clients.push(refused);
    const waiting = refused.tasks();
    io.last().connectError('unauthorized', false);
    await expect(waiting).rejects.toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'unauthorized' } });
    await expect(refused.tasks()).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    const io2 = fakeSocketFactory();
    const closing = createClient({ url: URL, io: io2, session: { storage: 'memory' } });
    const pending = closing.tasks();
    closing.close();
    await expect(pending).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'the taskgate client was closed' });
  });
});

describe('client.attach(id)', () => {
  test('emits attach { id, afterSeq: -1 }; chunks to onChunk once each in order, then the result', async () => {
    const { client, socket } = resumable();
    const seen: Array<[unknown, number]> = [];
    const promise = client.attach('job-1', { onChunk: (d, seq) => seen.push([d, seq]) });
    expect(socket.attaches()).toEqual([{ id: 'job-1', afterSeq: -1 }]);
    socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 0 });
    socket.chunk('job-1', 0, 'a');
    socket.chunk('job-1', 0, 'a');
    socket.chunk('job-1', 1, 'b');
    socket.result('job-1', 'done');
    await expect(promise).resolves.toBe('done');
    expect(seen).toEqual([
      ['a', 0],
      ['b', 1],
    ]);
    expect(client.inFlight).toBe(0);
  });

  test('an ended task: the kept error rejects the promise', async () => {
    const { client, socket } = resumable();
    const promise = client.attach('job-1');
    socket.ackAttach('job-1', { ok: true, state: 'failed', firstSeq: 0 });
    socket.error('job-1', { code: 'WORKER_ERROR', message: 'boom' });
    await expect(promise).rejects.toMatchObject({ code: 'WORKER_ERROR', message: 'boom' });
  });

  test('afterSeq: chunks at or below it are not delivered', async () => {
    const { client, socket } = resumable();
    const seen: number[] = [];
    const promise = client.attach('job-1', { afterSeq: 4, onChunk: (_d, seq) => seen.push(seq) });
    expect(socket.attaches()).toEqual([{ id: 'job-1', afterSeq: 4 }]);
    socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 5 });
    socket.chunk('job-1', 4, 'old');
    socket.chunk('job-1', 5, 'new');
    socket.result('job-1', 'done');
    await expect(promise).resolves.toBe('done');
    expect(seen).toEqual([5]);
  });

  test('a gap is not an error: onGap(firstSeq), and the chunks from there on follow', async () => {
    const { client, socket } = resumable();
    const gaps: number[] = [];
    const seen: number[] = [];
    const promise = client.attach('job-1', { onGap: (first) => gaps.push(first), onChunk: (_d, seq) => seen.push(seq) });
    socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 40 });
    socket.chunk('job-1', 40, 'x');
    socket.result('job-1', 'done');
    await expect(promise).resolves.toBe('done');
    expect(gaps).toEqual([40]);
    expect(seen).toEqual([40]);
    expect(socket.cancels()).toEqual([]);
  });

  test('{ ok: false, error } rejects with that error (TASK_NOT_FOUND), no cancel', async () => {
    const { client, socket } = resumable();
    const promise = client.attach('job-x');
    socket.ackAttach('job-x', { ok: false, error: { code: 'TASK_NOT_FOUND', message: 'no such task' } });
    await expect(promise).rejects.toMatchObject({ code: 'TASK_NOT_FOUND', message: 'no such task' });
    expect(socket.cancels()).toEqual([]);
    expect(client.inFlight).toBe(0);
  });

  test.each([
    ['no body', undefined],
    ['ok without firstSeq', { ok: true, state: 'running' }],
  ])('a malformed ack (%s): INTERNAL, and the attach is cancelled', async (_name, ack) => {
    const { client, socket } = resumable();
    const promise = client.attach('job-1');
    socket.ackAttach('job-1', ack);
    await expect(promise).rejects.toMatchObject({ code: 'INTERNAL', details: { received: ack } });
    expect(socket.cancels()).toEqual(['job-1']);
  });

  test('a signal cancels the task on the host; a releaseSignal only stops following it', async () => {
    const { client, socket } = resumable();
    const controller = new AbortController();
    const cancelled = client.attach('job-1', { signal: controller.signal });
    socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 0 });
    controller.abort();
    await expect(cancelled).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(socket.cancels()).toEqual(['job-1']);

    const release = new AbortController();
    const released = client.attach('job-2', { releaseSignal: release.signal });
    release.abort();
    await expect(released).rejects.toMatchObject({ code: 'CANCELLED', details: { released: true } });
    expect(socket.cancels()).toEqual(['job-1']);
  });

  test('an id the client already follows: DUPLICATE_ID; a bad id or afterSeq: BAD_REQUEST; none is sent', async () => {
    const { client, socket } = resumable();
    settledLater(client.request('echo', 1, { id: 'job-1' }));
    await expect(client.attach('job-1')).rejects.toMatchObject({ code: 'DUPLICATE_ID' });
    await expect(client.attach('')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(client.attach('job-2', { afterSeq: -2 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(client.attach('job-2', { afterSeq: 1.5 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    expect(socket.attaches()).toEqual([]);
  });

  test("the client's default timeout does not apply to an attach; its own timeoutMs does (TIMEOUT, cancelled)", async () => {
    jest.useFakeTimers();
    try {
      const { client, socket } = resumable({ timeoutMs: 1000 });
      const followed = track(client.attach('job-1'));
      const timed = track(client.attach('job-2', { timeoutMs: 5000 }));
      jest.advanceTimersByTime(4999);
      await flushFake();
      expect(followed.settled() || timed.settled()).toBe(false);
      jest.advanceTimersByTime(1);
      await flushFake();
      expect(timed.error()).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 5000 } });
      expect(socket.cancels()).toEqual(['job-2']);
      expect(followed.settled()).toBe(false);
    } finally {
      jest.useRealTimers();
    }
  });

  test('made while connecting: sent on connect', () => {
    const io = fakeSocketFactory();
    const client = createClient({ url: URL, io, session: { storage: 'memory' } });
    clients.push(client);
    settledLater(client.attach('job-1'));
    const socket = io.last();
    expect(socket.attaches()).toEqual([]);
    socket.serverAccepts();
    expect(socket.attaches()).toEqual([{ id: 'job-1', afterSeq: -1 }]);
  });

  describe('through a blip', () => {
    beforeEach(() => jest.useFakeTimers());
    afterEach(() => jest.useRealTimers());

    test('re-attached with the last seq seen, past the window too; a gap on resume goes to onGap; a stale first ack is ignored', async () => {
      const { client, socket } = resumable();
      const gaps: number[] = [];
      const seen: number[] = [];
      const promise = track(client.attach('job-1', { onGap: (f) => gaps.push(f), onChunk: (_d, seq) => seen.push(seq) }));
      const firstAck = socket.attachAcks.get('job-1')!;
      socket.drop();
      jest.advanceTimersByTime(2 * WINDOW_MS);
      socket.serverAccepts();
      socket.session('tok-1');
      firstAck({ ok: false, error: { code: 'TASK_NOT_FOUND', message: 'stale' } }); // the dead connection's
      expect(socket.attaches()).toEqual([
        { id: 'job-1', afterSeq: -1 },
        { id: 'job-1', afterSeq: -1 },
      ]);
      socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 7 });
      socket.chunk('job-1', 7, 'x');
      socket.result('job-1', 'done');
      await flushFake();
      expect(promise.value()).toBe('done');
      expect(gaps).toEqual([7]);
      expect(seen).toEqual([7]);
      expect(jest.getTimerCount()).toBe(0);
    });
  });
});

describe('no leaks', () => {
  test('tasks and attaches ended every way leave no entry, timer or listener', async () => {
    jest.useFakeTimers();
    try {
      const { client, socket } = resumable({ timeoutMs: 600_000 });
      const controller = new AbortController();
      const release = new AbortController();
      const outcomes: Array<Promise<unknown>> = [];
      const N = 500;
      for (let i = 0; i < N; i++) {
        const id = `t-${i}`;
        const p =
          i % 2 === 0
            ? client.request('demo.countdown', i, { id, detach: true, signal: controller.signal })
            : client.attach(id, { releaseSignal: release.signal });
        outcomes.push(p.then(() => 'ok', (e: TaskgateError) => e.code));
        outcomes.push(client.tasks().then(() => 'tasks', (e: TaskgateError) => e.code));
      }
      socket.drop();
      jest.advanceTimersByTime(WINDOW_MS);
      socket.serverAccepts();
      socket.session('tok-1');
      for (let i = 0; i < N; i += 4) {
        socket.ackAttach(`t-${i}`, { ok: true, state: 'succeeded', firstSeq: 0 });
        socket.result(`t-${i}`, i);
      }
      while (socket.tasksAcks.length > N) socket.ackTasks({ ok: true, tasks: [] }); // the first connection's: stale
      while (socket.tasksAcks.length > 0) socket.ackTasks({ ok: true, tasks: [] });
      controller.abort();
      release.abort();
      const codes = await Promise.all(outcomes);
      expect(codes.filter((c) => c === 'ok')).toHaveLength(N / 4);
      expect(codes.filter((c) => c === 'tasks')).toHaveLength(N);
      expect(codes.filter((c) => c === 'CANCELLED')).toHaveLength((3 * N) / 4);
      expect(client.inFlight).toBe(0);
      expect(jest.getTimerCount()).toBe(0);
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
      expect(getEventListeners(release.signal, 'abort')).toHaveLength(0);
    } finally {
      jest.useRealTimers();
    }
  });
});
