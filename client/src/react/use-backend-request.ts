/**
 * `useBackendRequest(requestType)`: one request type as component state.
 *
 * One run at a time: `run` while a run is pending cancels the older one (its result could
 * otherwise land after the newer one's and overwrite it), so the state always belongs to the
 * latest run. Unmounting cancels the pending run. Every callback is stable: it reads the
 * latest request type, client and options from refs.
 */

import { useCallback, useEffect, useRef, useState } from 'react';

import type { RequestOptions } from '../client.js';
import { TaskgateError } from '../errors.js';
import type { ChunkOf, KnownRequestType, PayloadOf, ResultOf, UnknownRequestType } from '../request-map.js';
import { useTaskgateClient } from './context.js';

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

export interface RunOptions<Chunk> {
  /** Called for every chunk of this run (after the hook's own `onChunk`). */
  onChunk?: (data: Chunk, seq: number) => void;
  /** Client-side timeout of this run (overrides the hook's and the client's). */
  timeoutMs?: number;
}

export interface UseBackendRequestOptions<Chunk> {
  /** Called for every chunk of every run. */
  onChunk?: (data: Chunk, seq: number) => void;
  /** Client-side timeout of each run, in ms. */
  timeoutMs?: number;
  /** Keep every chunk in `chunks` (default true); false keeps only `latestChunk` (long streams). */
  keepChunks?: boolean;
}

export interface BackendRequest<Payload, Result, Chunk> extends BackendRequestState<Result, Chunk> {
  /** Starts a run; the outcome goes to the state (never throws, never rejects). */
  run: (payload: Payload, options?: RunOptions<Chunk>) => void;
  /** Starts a run and returns its promise (rejects with the `TaskgateError`). */
  runAsync: (payload: Payload, options?: RunOptions<Chunk>) => Promise<Result>;
  /** Cancels the pending run: status `error`, `error.code` `CANCELLED`, chunks so far kept. */
  cancel: () => void;
  /** Cancels the pending run, if any, and goes back to `idle`. */
  reset: () => void;
}

function stateOf<Result, Chunk>(
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
function asTaskgateError(error: unknown): TaskgateError {
  if (error instanceof TaskgateError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new TaskgateError('INTERNAL', message, { cause: error });
}

/** A request type of the generated request map: payload, result and chunks typed. */
export function useBackendRequest<K extends KnownRequestType>(
  requestType: K,
  options?: UseBackendRequestOptions<ChunkOf<K>>,
): BackendRequest<PayloadOf<K>, ResultOf<K>, ChunkOf<K>>;
/** Any other request type, typed by explicit generics. */
export function useBackendRequest<Payload = unknown, Result = unknown, Chunk = unknown, T extends string = string>(
  requestType: UnknownRequestType<T>,
  options?: UseBackendRequestOptions<Chunk>,
): BackendRequest<Payload, Result, Chunk>;
export function useBackendRequest(
  requestType: string,
  options: UseBackendRequestOptions<unknown> = {},
): BackendRequest<unknown, unknown, unknown> {
  const client = useTaskgateClient();
  const [state, setState] = useState(() => stateOf<unknown, unknown>('idle'));

  // The latest props, for the stable callbacks below ("latest ref" pattern).
  const latest = useRef({ client, requestType, options });
  latest.current = { client, requestType, options };

  /** The pending run, if any; a run may touch the state only while it is this one. */
  const current = useRef<AbortController | null>(null);
  const mounted = useRef(false);

  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
      const pending = current.current;
      current.current = null;
      pending?.abort();
    };
  }, []);

  const runAsync = useCallback(async (payload: unknown, runOptions: RunOptions<unknown> = {}): Promise<unknown> => {
    const { client: c, requestType: type, options: hookOptions } = latest.current;
    const controller = new AbortController();
    const previous = current.current;
    current.current = controller;
    previous?.abort();
    const isCurrent = () => current.current === controller && mounted.current;
    setState(stateOf('pending'));

    const requestOptions: RequestOptions<unknown> = {
      signal: controller.signal,
      onChunk: (data, seq) => {
        latest.current.options.onChunk?.(data, seq);
        runOptions.onChunk?.(data, seq);
        if (!isCurrent()) return;
        const keep = latest.current.options.keepChunks ?? true;
        setState((s) => stateOf('pending', { chunks: keep ? [...s.chunks, data] : s.chunks, latestChunk: data }));
      },
    };
    const timeoutMs = runOptions.timeoutMs ?? hookOptions.timeoutMs;
    if (timeoutMs !== undefined) requestOptions.timeoutMs = timeoutMs;

    try {
      const request = c.request as (t: string, p: unknown, o: RequestOptions<unknown>) => Promise<unknown>;
      const result = await request(type, payload, requestOptions);
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
  }, []);

  const run = useCallback(
    (payload: unknown, runOptions?: RunOptions<unknown>) => {
      runAsync(payload, runOptions).catch(() => undefined); // the outcome is in the state
    },
    [runAsync],
  );

  const cancel = useCallback(() => {
    current.current?.abort(); // the run's own rejection (CANCELLED) sets the state
  }, []);

  const reset = useCallback(() => {
    const pending = current.current;
    current.current = null; // first: the cancelled run must not touch the state any more
    pending?.abort();
    setState(stateOf('idle'));
  }, []);

  return { ...state, run, runAsync, cancel, reset };
}
