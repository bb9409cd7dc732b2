/**
 * @jest-environment jsdom
 *
 * The React bindings with the fake socket playing the host: provider and default-client
 * lookup, useConnectionState, every branch of useBackendRequest (run, chunks, result,
 * refusal, error, cancel, reset, superseding runs, unmount, stable callbacks), and tasks:
 * detached runs that unmounting releases, useTask(id) and the polling useTasks().
 */

import { StrictMode, type ReactNode } from 'react';
import { act, render, renderHook, screen } from '@testing-library/react';

import { createClient, setDefaultClient, TaskgateError, type TaskgateClient, type TaskInfo } from '../src/index.js';
import { TaskgateProvider, useBackendRequest, useConnectionState, useTask, useTaskgateClient, useTasks } from '../src/react/index.js';
import { fakeSocketFactory, type FakeSocket } from './fake-socket.js';

function setup(autoConnect = true): { client: TaskgateClient; socket: FakeSocket; wrapper: (p: { children: ReactNode }) => ReactNode } {
  const io = fakeSocketFactory({ autoConnect });
  const client = createClient({ url: 'http://host.test', io });
  const wrapper = ({ children }: { children: ReactNode }) => <TaskgateProvider client={client}>{children}</TaskgateProvider>;
  return { client, socket: io.last(), wrapper };
}

/** Runs `fn` in act() and lets promise callbacks settle. */
async function host(fn: () => void): Promise<void> {
  await act(async () => {
    fn();
    await new Promise((resolve) => setTimeout(resolve, 0));
  });
}

afterEach(() => setDefaultClient(undefined));

describe('TaskgateProvider and useTaskgateClient', () => {
  test('hooks use the provider’s client', () => {
    const { client, wrapper } = setup();
    const { result } = renderHook(() => useTaskgateClient(), { wrapper });
    expect(result.current).toBe(client);
  });

  test('without a provider, the default client', () => {
    const { client } = setup();
    setDefaultClient(client);
    const { result } = renderHook(() => useTaskgateClient());
    expect(result.current).toBe(client);
  });

  test('with neither, a clear error', () => {
    jest.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      expect(() => renderHook(() => useBackendRequest('echo'))).toThrow(/TaskgateProvider.*configureTaskgate/);
    } finally {
      jest.mocked(console.error).mockRestore();
    }
  });
});

describe('useConnectionState', () => {
  test('follows the connection: connecting, connected, reconnecting, disconnected', () => {
    const { client, socket, wrapper } = setup(false);
    const { result } = renderHook(() => useConnectionState(), { wrapper });
    expect(result.current).toBe('connecting');
    act(() => socket.serverAccepts());
    expect(result.current).toBe('connected');
    act(() => socket.drop());
    expect(result.current).toBe('reconnecting');
    act(() => client.close());
    expect(result.current).toBe('disconnected');
  });

  test('unsubscribes on unmount', () => {
    const { client, socket, wrapper } = setup(false);
    const renders: string[] = [];
    const { unmount } = renderHook(() => renders.push(useConnectionState()), { wrapper });
    unmount();
    const before = renders.length;
    act(() => socket.serverAccepts());
    expect(renders.length).toBe(before);
    expect(client.connectionState).toBe('connected');
  });
});

describe('useBackendRequest', () => {
  test('starts idle', () => {
    const { wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('text.wordcount'), { wrapper });
    expect(result.current).toMatchObject({
      status: 'idle',
      isIdle: true,
      isPending: false,
      data: undefined,
      error: null,
      chunks: [],
      latestChunk: undefined,
    });
  });

  test('run → pending → chunks in order → success with the result', async () => {
    const { socket, wrapper } = setup();
    const onChunk = jest.fn();
    const { result } = renderHook(() => useBackendRequest('demo.countdown', { onChunk }), { wrapper });
    act(() => result.current.run({ from: 2, intervalMs: 10 }));
    expect(result.current.status).toBe('pending');
    expect(result.current.isPending).toBe(true);
    const { id, requestType, payload } = socket.lastRequest();
    expect({ requestType, payload }).toEqual({ requestType: 'demo.countdown', payload: { from: 2, intervalMs: 10 } });
    await host(() => {
      socket.ack(id);
      socket.chunk(id, 0, { remaining: 1 });
    });
    expect(result.current.chunks).toEqual([{ remaining: 1 }]);
    expect(result.current.latestChunk).toEqual({ remaining: 1 });
    expect(result.current.status).toBe('pending');
    await host(() => {
      socket.chunk(id, 1, { remaining: 0 });
      socket.result(id, { done: true });
    });
    expect(result.current).toMatchObject({
      status: 'success',
      isSuccess: true,
      data: { done: true },
      error: null,
      chunks: [{ remaining: 1 }, { remaining: 0 }],
      latestChunk: { remaining: 0 },
    });
    expect(onChunk.mock.calls).toEqual([
      [{ remaining: 1 }, 0],
      [{ remaining: 0 }, 1],
    ]);
  });

  test('a refusal → status error with the server’s message and details', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('text.wordcount'), { wrapper });
    act(() => result.current.run({ text: 5 } as never));
    await host(() =>
      socket.refuse(socket.lastRequest().id, 'INVALID_PAYLOAD', '/text: invalid type: integer `5`, expected a string', {
        problems: [{ pointer: '/text', message: 'invalid type: integer `5`, expected a string' }],
      }),
    );
    expect(result.current.status).toBe('error');
    expect(result.current.isError).toBe(true);
    expect(result.current.error).toBeInstanceOf(TaskgateError);
    expect(result.current.error?.code).toBe('INVALID_PAYLOAD');
    expect(result.current.error?.message).toContain('expected a string');
    expect(result.current.error?.problems[0]?.pointer).toBe('/text');
    expect(result.current.data).toBeUndefined();
  });

  test('an error response after chunks keeps the chunks', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    act(() => result.current.run({ chunks: 1 }));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.chunk(id, 0, { index: 0 });
      socket.error(id, { code: 'WORKER_ERROR', message: 'boom' });
    });
    expect(result.current).toMatchObject({ status: 'error', chunks: [{ index: 0 }] });
    expect(result.current.error?.toJSON()).toEqual({ code: 'WORKER_ERROR', message: 'boom' });
  });

  test('cancel → CANCELLED at once, a cancel event to the host, chunks so far kept', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('demo.countdown'), { wrapper });
    act(() => result.current.run({ from: 10 }));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.chunk(id, 0, { remaining: 9 });
    });
    await host(() => result.current.cancel());
    expect(socket.cancels()).toEqual([id]);
    expect(result.current.status).toBe('error');
    expect(result.current.error?.code).toBe('CANCELLED');
    expect(result.current.latestChunk).toEqual({ remaining: 9 });
    await host(() => socket.chunk(id, 1, { remaining: 8 })); // already on the wire: ignored
    expect(result.current.chunks).toEqual([{ remaining: 9 }]);
  });

  test('cancel with nothing pending does nothing', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    await host(() => result.current.cancel());
    expect(result.current.status).toBe('idle');
    expect(socket.emitted).toEqual([]);
  });

  test('reset cancels the pending run and goes back to idle; the run’s end does not come back', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    act(() => result.current.run({ delayMs: 100 }));
    const { id } = socket.lastRequest();
    await host(() => socket.ack(id));
    await host(() => result.current.reset());
    expect(socket.cancels()).toEqual([id]);
    expect(result.current).toMatchObject({ status: 'idle', error: null, data: undefined, chunks: [] });
  });

  test('reset after success clears the data', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    act(() => result.current.run(1));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.result(id, 1);
    });
    expect(result.current.data).toBe(1);
    await host(() => result.current.reset());
    expect(result.current).toMatchObject({ status: 'idle', data: undefined });
    expect(socket.cancels()).toEqual([]);
  });

  test('a new run cancels the pending one; only the latest run’s outcome shows', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    act(() => result.current.run('first'));
    const first = socket.lastRequest().id;
    await host(() => socket.ack(first));
    act(() => result.current.run('second'));
    const second = socket.lastRequest().id;
    expect(socket.cancels()).toEqual([first]);
    await host(() => {
      socket.result(first, 'first'); // too late: the client forgot it
      socket.ack(second);
    });
    expect(result.current.status).toBe('pending');
    await host(() => socket.result(second, 'second'));
    expect(result.current).toMatchObject({ status: 'success', data: 'second' });
  });

  test('runAsync resolves with the result and rejects with the TaskgateError', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    let ok!: Promise<unknown>;
    act(() => {
      ok = result.current.runAsync('x');
    });
    let id = socket.lastRequest().id;
    await host(() => {
      socket.ack(id);
      socket.result(id, 'x');
    });
    await expect(ok).resolves.toBe('x');

    let failed!: Promise<unknown>;
    act(() => {
      failed = result.current.runAsync('y');
      failed.catch(() => undefined);
    });
    id = socket.lastRequest().id;
    await host(() => socket.refuse(id, 'RATE_LIMITED', 'slow down'));
    await expect(failed).rejects.toMatchObject({ code: 'RATE_LIMITED' });
    expect(result.current.error?.code).toBe('RATE_LIMITED');
  });

  test('per-run onChunk and timeoutMs; hook timeoutMs as default', async () => {
    jest.useFakeTimers();
    try {
      const { socket, wrapper } = setup();
      const { result } = renderHook(() => useBackendRequest('echo', { timeoutMs: 50 }), { wrapper });
      const perRun = jest.fn();
      act(() => result.current.run({ chunks: 1 }, { onChunk: perRun, timeoutMs: 1000 }));
      const { id } = socket.lastRequest();
      act(() => {
        socket.ack(id);
        socket.chunk(id, 0, { index: 0 });
      });
      expect(perRun).toHaveBeenCalledWith({ index: 0 }, 0);
      await act(async () => {
        jest.advanceTimersByTime(999);
      });
      expect(result.current.status).toBe('pending');
      await act(async () => {
        jest.advanceTimersByTime(1);
      });
      expect(result.current.error).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 1000 } });

      act(() => result.current.run({}));
      await act(async () => {
        jest.advanceTimersByTime(50);
      });
      expect(result.current.error).toMatchObject({ code: 'TIMEOUT', details: { timeoutMs: 50 } });
    } finally {
      jest.useRealTimers();
    }
  });

  test('keepChunks: false keeps only the latest chunk', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo', { keepChunks: false }), { wrapper });
    act(() => result.current.run({ chunks: 3 }));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      for (let i = 0; i < 3; i++) socket.chunk(id, i, i);
    });
    expect(result.current.chunks).toEqual([]);
    expect(result.current.latestChunk).toBe(2);
  });

  test('an onChunk that throws ends the run as an INTERNAL error in the state', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(
      () =>
        useBackendRequest('echo', {
          onChunk: () => {
            throw new Error('render bug');
          },
        }),
      { wrapper },
    );
    act(() => result.current.run({ chunks: 1 }));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.chunk(id, 0, 0);
    });
    expect(result.current.error).toMatchObject({ code: 'INTERNAL', message: 'render bug' });
    expect(socket.cancels()).toEqual([id]);
  });

  test('a run waits for the connection while connecting', async () => {
    const { socket, wrapper } = setup(false);
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    act(() => result.current.run(1));
    expect(socket.requests()).toEqual([]);
    expect(result.current.status).toBe('pending');
    act(() => socket.serverAccepts());
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.result(id, 1);
    });
    expect(result.current.data).toBe(1);
  });

  test('a dropped connection → error UNAVAILABLE', async () => {
    const { socket, wrapper } = setup();
    const { result } = renderHook(() => useBackendRequest('echo'), { wrapper });
    act(() => result.current.run(1));
    await host(() => socket.drop());
    expect(result.current.error?.code).toBe('UNAVAILABLE');
  });

  test('a blip the host resumes (protocol §4): reconnecting meanwhile, the run stays pending, chunks go on, then success', async () => {
    const io = fakeSocketFactory({ autoConnect: true });
    const client = createClient({ url: 'http://host.test', io, session: { storage: 'memory' } });
    const socket = io.last();
    socket.session('tok-1');
    const wrapper = ({ children }: { children: ReactNode }) => <TaskgateProvider client={client}>{children}</TaskgateProvider>;
    const { result } = renderHook(() => ({ run: useBackendRequest('demo.countdown'), state: useConnectionState() }), { wrapper });
    act(() => result.current.run.run({ from: 2 }));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.chunk(id, 0, { remaining: 1 });
    });
    await host(() => socket.drop());
    expect(result.current.state).toBe('reconnecting');
    expect(result.current.run.status).toBe('pending');
    await host(() => {
      socket.serverAccepts();
      socket.session('tok-1');
      socket.ackAttach(id, { ok: true, state: 'running', firstSeq: 1 });
      socket.chunk(id, 0, { remaining: 1 }); // a replay: dropped
      socket.chunk(id, 1, { remaining: 0 });
      socket.result(id, { done: true });
    });
    expect(result.current.state).toBe('connected');
    expect(result.current.run.status).toBe('success');
    expect(result.current.run.chunks).toEqual([{ remaining: 1 }, { remaining: 0 }]);
    act(() => client.close());
  });

  test('unmounting cancels the pending run and nothing updates afterwards', async () => {
    const errors = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const { client, socket, wrapper } = setup();
      const { result, unmount } = renderHook(() => useBackendRequest('demo.countdown'), { wrapper });
      act(() => result.current.run({ from: 5 }));
      const { id } = socket.lastRequest();
      await host(() => socket.ack(id));
      unmount();
      expect(socket.cancels()).toEqual([id]);
      await host(() => socket.chunk(id, 0, { remaining: 4 }));
      expect(client.inFlight).toBe(0);
      expect(errors).not.toHaveBeenCalled();
    } finally {
      errors.mockRestore();
    }
  });

  test('run, runAsync, cancel and reset keep their identity across renders and state changes', async () => {
    const { socket, wrapper } = setup();
    const { result, rerender } = renderHook(({ type }) => useBackendRequest(type), {
      wrapper,
      initialProps: { type: 'echo' as string },
    });
    const first = result.current;
    act(() => result.current.run(1));
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.result(id, 1);
    });
    rerender({ type: 'echo.other' });
    for (const key of ['run', 'runAsync', 'cancel', 'reset'] as const) expect(result.current[key]).toBe(first[key]);
    // …and they use the latest request type.
    act(() => result.current.run(2));
    expect(socket.lastRequest().requestType).toBe('echo.other');
  });

  test('works under StrictMode (effects mounted twice) and in a real component', async () => {
    const { client, socket } = setup();
    function WordCount() {
      const count = useBackendRequest<{ text: string }, { words: number }>('text.wordcount');
      const state = useConnectionState();
      return (
        <div>
          <span>{state}</span>
          <button onClick={() => count.run({ text: 'a b c' })}>count</button>
          <output>{count.status === 'success' ? `${count.data?.words} words` : count.status}</output>
        </div>
      );
    }
    render(
      <StrictMode>
        <TaskgateProvider client={client}>
          <WordCount />
        </TaskgateProvider>
      </StrictMode>,
    );
    expect(screen.getByText('connected')).toBeTruthy();
    act(() => screen.getByRole('button').click());
    expect(screen.getByRole('status').textContent).toBe('pending');
    const { id } = socket.lastRequest();
    await host(() => {
      socket.ack(id);
      socket.result(id, { words: 3 });
    });
    expect(screen.getByRole('status').textContent).toBe('3 words');
    expect(socket.requests()).toHaveLength(1);
  });
});

describe('tasks (protocol §4.3)', () => {
  /** A connected client whose host has opened a session. */
  function sessionSetup(autoConnect = true) {
    const io = fakeSocketFactory({ autoConnect });
    const client = createClient({ url: 'http://host.test', io, session: { storage: 'memory' } });
    const socket = io.last();
    if (autoConnect) socket.session('tok-1');
    const wrapper = ({ children }: { children: ReactNode }) => <TaskgateProvider client={client}>{children}</TaskgateProvider>;
    return { client, socket, wrapper };
  }

  const running = (id: string, remaining: number): TaskInfo => ({
    id,
    requestType: 'demo.countdown',
    state: 'running',
    startedAt: 1,
    lastSeq: 9 - remaining,
    lastChunk: { remaining },
  });

  describe('useBackendRequest run({ detach, id })', () => {
    test('sends detach and the id; unmounting releases the run (no cancel: the task goes on)', async () => {
      const { client, socket, wrapper } = sessionSetup();
      const { result, unmount } = renderHook(() => useBackendRequest('demo.countdown'), { wrapper });
      act(() => result.current.run({ from: 9 }, { detach: true, id: 'job-1' }));
      expect(socket.lastRequest()).toMatchObject({ id: 'job-1', detach: true });
      await host(() => socket.ack('job-1'));
      unmount();
      expect(socket.cancels()).toEqual([]);
      expect(client.inFlight).toBe(0);
      client.close();
    });

    test('a newer run and reset() release a detached one; cancel() does cancel it on the host', async () => {
      const { client, socket, wrapper } = sessionSetup();
      const { result } = renderHook(() => useBackendRequest('demo.countdown'), { wrapper });
      act(() => result.current.run({ from: 9 }, { detach: true, id: 'job-1' }));
      act(() => result.current.run({ from: 9 }, { detach: true, id: 'job-2' }));
      expect(socket.cancels()).toEqual([]);
      await host(() => result.current.cancel());
      expect(socket.cancels()).toEqual(['job-2']);
      expect(result.current.error?.code).toBe('CANCELLED');
      act(() => result.current.run({ from: 9 }, { detach: true, id: 'job-3' }));
      await host(() => result.current.reset()); // released, not cancelled
      expect(socket.cancels()).toEqual(['job-2']);
      expect(result.current.status).toBe('idle');
      expect(client.inFlight).toBe(0);
      client.close();
    });
  });

  describe('useTask(id)', () => {
    test('attaches from seq 0 and binds the state: chunks, then success; unmounting only releases', async () => {
      const { client, socket, wrapper } = sessionSetup();
      const onChunk = jest.fn();
      const { result, unmount } = renderHook(() => useTask<{ done: boolean }, { remaining: number }>('job-1', { onChunk }), { wrapper });
      expect(result.current.status).toBe('pending');
      expect(socket.attaches()).toEqual([{ id: 'job-1', afterSeq: -1 }]);
      await host(() => {
        socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 0 });
        socket.chunk('job-1', 0, { remaining: 1 });
      });
      expect(result.current.chunks).toEqual([{ remaining: 1 }]);
      await host(() => {
        socket.chunk('job-1', 1, { remaining: 0 });
        socket.result('job-1', { done: true });
      });
      expect(result.current).toMatchObject({ status: 'success', data: { done: true }, latestChunk: { remaining: 0 } });
      expect(onChunk).toHaveBeenCalledTimes(2);
      unmount();
      expect(socket.cancels()).toEqual([]);
      client.close();
    });

    test('TASK_NOT_FOUND → status error; onGap is told of a gap', async () => {
      const { client, socket, wrapper } = sessionSetup();
      const onGap = jest.fn();
      const { result, rerender } = renderHook(({ id }) => useTask(id, { onGap }), { wrapper, initialProps: { id: 'gone' as string | null } });
      await host(() => socket.ackAttach('gone', { ok: false, error: { code: 'TASK_NOT_FOUND', message: 'no such task' } }));
      expect(result.current.error?.code).toBe('TASK_NOT_FOUND');
      rerender({ id: 'job-2' });
      await host(() => socket.ackAttach('job-2', { ok: true, state: 'running', firstSeq: 5 }));
      expect(onGap).toHaveBeenCalledWith(5);
      expect(result.current.status).toBe('pending');
      rerender({ id: null });
      expect(result.current.status).toBe('idle');
      expect(socket.cancels()).toEqual([]);
      client.close();
    });

    test('cancel() cancels the task on the host', async () => {
      const { client, socket, wrapper } = sessionSetup();
      const { result } = renderHook(() => useTask('job-1'), { wrapper });
      await host(() => socket.ackAttach('job-1', { ok: true, state: 'running', firstSeq: 0 }));
      await host(() => result.current.cancel());
      expect(socket.cancels()).toEqual(['job-1']);
      expect(result.current.error?.code).toBe('CANCELLED');
      client.close();
    });

    test('under StrictMode the final attach is the one that binds', async () => {
      const { client, socket } = sessionSetup();
      function Task() {
        const task = useTask<string>('job-1');
        return <output>{task.status === 'success' ? task.data : task.status}</output>;
      }
      render(
        <StrictMode>
          <TaskgateProvider client={client}>
            <Task />
          </TaskgateProvider>
        </StrictMode>,
      );
      await host(() => {
        socket.ackAttach('job-1', { ok: true, state: 'succeeded', firstSeq: 0 });
        socket.result('job-1', 'finished');
      });
      expect(screen.getByRole('status').textContent).toBe('finished');
      expect(socket.cancels()).toEqual([]);
      client.close();
    });
  });

  describe('useTasks()', () => {
    beforeEach(() => jest.useFakeTimers());
    afterEach(() => jest.useRealTimers());

    /** Runs `fn` in act() and lets promise callbacks settle (fake timers installed). */
    async function hostFake(fn: () => void): Promise<void> {
      await act(async () => {
        fn();
        for (let i = 0; i < 5; i++) await Promise.resolve();
      });
    }

    test('loads on mount (waiting for the connection), polls while a task runs, stops when none does', async () => {
      const { client, socket, wrapper } = sessionSetup(false);
      const { result } = renderHook(() => useTasks({ intervalMs: 1000 }), { wrapper });
      expect(result.current).toMatchObject({ tasks: [], error: null, isLoading: true });
      await hostFake(() => {
        socket.serverAccepts();
        socket.session('tok-1');
      });
      expect(socket.tasksCalls()).toBe(1); // the waiting call; the connect does not add another
      await hostFake(() => socket.ackTasks({ ok: true, tasks: [running('job-1', 5)] }));
      expect(result.current).toMatchObject({ tasks: [running('job-1', 5)], isLoading: false });
      await hostFake(() => jest.advanceTimersByTime(999));
      expect(socket.tasksCalls()).toBe(1);
      await hostFake(() => jest.advanceTimersByTime(1));
      expect(socket.tasksCalls()).toBe(2);
      const ended: TaskInfo = { ...running('job-1', 0), state: 'succeeded', endedAt: 2 };
      await hostFake(() => socket.ackTasks({ ok: true, tasks: [ended] }));
      expect(result.current.tasks).toEqual([ended]);
      await hostFake(() => jest.advanceTimersByTime(10_000));
      expect(socket.tasksCalls()).toBe(2);
      client.close();
    });

    test('reloads when the connection comes back; an error keeps the last list; refresh() loads now', async () => {
      const { client, socket, wrapper } = sessionSetup();
      const { result } = renderHook(() => useTasks(), { wrapper });
      expect(socket.tasksCalls()).toBe(1);
      await hostFake(() => socket.ackTasks({ ok: true, tasks: [] }));
      expect(socket.tasksCalls()).toBe(1);
      await hostFake(() => {
        socket.drop();
        socket.serverAccepts();
        socket.session('tok-1');
      });
      expect(socket.tasksCalls()).toBe(2);
      await hostFake(() => socket.ackTasks({ ok: true, tasks: [running('job-1', 3)] }));
      await hostFake(() => result.current.refresh());
      expect(socket.tasksCalls()).toBe(3);
      await hostFake(() => result.current.refresh()); // one call at a time
      expect(socket.tasksCalls()).toBe(3);
      await hostFake(() => socket.ackTasks({ ok: false, error: { code: 'RATE_LIMITED', message: 'slow down' } }));
      expect(result.current.error?.code).toBe('RATE_LIMITED');
      expect(result.current.tasks).toEqual([running('job-1', 3)]);
      client.close();
    });

    test('unmounting stops polling and updates nothing', async () => {
      const errors = jest.spyOn(console, 'error').mockImplementation(() => undefined);
      try {
        const { client, socket, wrapper } = sessionSetup();
        const { unmount } = renderHook(() => useTasks({ intervalMs: 100 }), { wrapper });
        await hostFake(() => socket.ackTasks({ ok: true, tasks: [running('job-1', 3)] }));
        unmount();
        await hostFake(() => jest.advanceTimersByTime(1000));
        expect(socket.tasksCalls()).toBe(1);
        client.close();
        expect(errors).not.toHaveBeenCalled();
      } finally {
        errors.mockRestore();
      }
    });
  });
});
