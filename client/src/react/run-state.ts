/**
 * One run at a time as component state: what `useBackendRequest` (a request) and `useTask` (an
 * attach to a task) share. A run is any promise the client makes from request options (signal,
 * releaseSignal, onChunk); its chunks and outcome go to the state while it is the latest run of
 * a mounted component.
 *
 * Leaving a run — a newer run, unmounting, `reset` — cancels it on the host, except a task's
 * (a detached request, an attached task): that one is only *released* (`releaseSignal`), so the
 * work goes on and the page can find it again (`useTasks`, `useTask(id)`). `cancel()` always
 * cancels. The callbacks are stable: they read the latest client and options from refs.
 */

import { useCallback, useEffect, useRef, useState } from 'react';

import type { RequestOptions, TaskgateClient } from '../client.js';
import { TaskgateError } from '../errors.js';

/** As in TanStack Query: nothing run yet, running, ended with a result, ended with an error. */
export type RequestStatus = 'idle' | 'pending' | 'success' | 'error';

export interface BackendRequestState<Result, Chunk> {
  status: RequestStatus;
  isIdle: boolean;
  isPending: boolean;
  isSuccess: boolean;
  isError: boolean;
  /** The latest run's result (`undefined` until it succeeds). */
  data: Result | undefined;
  /** The latest run's error (`CANCELLED` after `cancel()`); `null` unless status is `error`. */
  error: TaskgateError | null;
  /** The latest run's chunks so far, in order (empty with `keepChunks: false`). */
  chunks: Chunk[];
  /** The latest run's last chunk. */
  latestChunk: Chunk | undefined;
}

/** What every run of a hook shares. */
export interface RunStateOptions<Chunk> {
  /** Called for every chunk of every run. */
  onChunk?: (data: Chunk, seq: number) => void;
  /** Keep every chunk in `chunks` (default true); false keeps only `latestChunk` (long streams). */
  keepChunks?: boolean;
}

/** Makes a run's promise from the options the state needs it to honour. */
export type StartRun = (
  client: TaskgateClient,
  options: Required<Pick<RequestOptions<unknown>, 'signal' | 'releaseSignal' | 'onChunk'>>,
) => Promise<unknown>;

/** The pending run: its two ways out, and whether leaving it only releases it (a task). */
interface Run {
  readonly cancel: AbortController;
  readonly release: AbortController;
  readonly task: boolean;
}

export function stateOf<Result, Chunk>(
  status: RequestStatus,
  fields: Partial<Pick<BackendRequestState<Result, Chunk>, 'data' | 'error' | 'chunks' | 'latestChunk'>> = {},
): BackendRequestState<Result, Chunk> {
  return {
    status,
    isIdle: status === 'idle',
    isPending: status === 'pending',
    isSuccess: status === 'success',
    isError: status === 'error',
    data: fields.data,
    error: fields.error ?? null,
    chunks: fields.chunks ?? [],
    latestChunk: fields.latestChunk,
  };
}

/** Errors in the state are TaskgateErrors, so a UI can always read `error.code`. */
export function asTaskgateError(error: unknown): TaskgateError {
  if (error instanceof TaskgateError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new TaskgateError('INTERNAL', message, { cause: error });
}

/** Stops following `run`: a task is released (it goes on), anything else cancelled. */
function leave(run: Run | null): void {
  if (!run) return;
  if (run.task) run.release.abort();
  else run.cancel.abort();
}

export function useRunState(
  client: TaskgateClient,
  options: RunStateOptions<unknown>,
): {
  state: BackendRequestState<unknown, unknown>;
  start: (startRun: StartRun, task: boolean, onChunk?: (data: unknown, seq: number) => void) => Promise<unknown>;
  cancel: () => void;
  reset: () => void;
} {
  const [state, setState] = useState(() => stateOf<unknown, unknown>('idle'));

  // The latest props, for the stable callbacks below ("latest ref" pattern).
  const latest = useRef({ client, options });
  latest.current = { client, options };

  /** The pending run, if any; a run may touch the state only while it is this one. */
  const current = useRef<Run | null>(null);
  const mounted = useRef(false);

  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
      const pending = current.current;
      current.current = null;
      leave(pending);
    };
  }, []);

  const start = useCallback(
    async (startRun: StartRun, task: boolean, onChunk?: (data: unknown, seq: number) => void): Promise<unknown> => {
      const run: Run = { cancel: new AbortController(), release: new AbortController(), task };
      const previous = current.current;
      current.current = run;
      leave(previous);
      const isCurrent = () => current.current === run && mounted.current;
      setState(stateOf('pending'));

      try {
        const result = await startRun(latest.current.client, {
          signal: run.cancel.signal,
          releaseSignal: run.release.signal,
          onChunk: (data, seq) => {
            latest.current.options.onChunk?.(data, seq);
            onChunk?.(data, seq);
            if (!isCurrent()) return;
            const keep = latest.current.options.keepChunks ?? true;
            setState((s) => stateOf('pending', { chunks: keep ? [...s.chunks, data] : s.chunks, latestChunk: data }));
          },
        });
        if (isCurrent()) {
          current.current = null;
          setState((s) => stateOf('success', { data: result, chunks: s.chunks, latestChunk: s.latestChunk }));
        }
        return result;
      } catch (error) {
        if (isCurrent()) {
          current.current = null;
          setState((s) => stateOf('error', { error: asTaskgateError(error), chunks: s.chunks, latestChunk: s.latestChunk }));
        }
        throw error;
      }
    },
    [],
  );

  const cancel = useCallback(() => {
    current.current?.cancel.abort(); // the run's own rejection (CANCELLED) sets the state
  }, []);

  const reset = useCallback(() => {
    const pending = current.current;
    current.current = null; // first: the left run must not touch the state any more
    leave(pending);
    setState(stateOf('idle'));
  }, []);

  return { state, start, cancel, reset };
}
