/**
 * `useBackendRequest(requestType)`: one request type as component state.
 *
 * One run at a time: `run` while a run is pending cancels the older one (its result could
 * otherwise land after the newer one's and overwrite it), so the state always belongs to the
 * latest run. Unmounting cancels the pending run — except a detached one (`run(payload, {
 * detach: true })`), which is only released: the task goes on on the host, and `useTasks` /
 * `useTask(id)` find it again (run-state.ts). Every callback is stable: it reads the latest
 * request type, client and options from refs.
 */

import { useCallback, useRef } from 'react';

import type { RequestOptions } from '../client.js';
import type { ChunkOf, KnownRequestType, PayloadOf, ResultOf, UnknownRequestType } from '../request-map.js';
import { useTaskgateClient } from './context.js';
import { useRunState, type BackendRequestState, type RunStateOptions } from './run-state.js';

export type { BackendRequestState, RequestStatus } from './run-state.js';

export interface RunOptions<Chunk> {
  /** Called for every chunk of this run (after the hook's own `onChunk`). */
  onChunk?: (data: Chunk, seq: number) => void;
  /** Client-side timeout of this run (overrides the hook's and the client's). */
  timeoutMs?: number;
  /**
   * A task (protocol §4.3): it goes on when the page goes away or the component unmounts (then
   * it is released, not cancelled); `useTasks()` lists it, `useTask(id)` follows it again.
   */
  detach?: boolean;
  /** The request id (1–128 characters): resending it follows the host's request instead of running it twice. */
  id?: string;
}

export interface UseBackendRequestOptions<Chunk> extends RunStateOptions<Chunk> {
  /** Client-side timeout of each run, in ms. */
  timeoutMs?: number;
}

export interface BackendRequest<Payload, Result, Chunk> extends BackendRequestState<Result, Chunk> {
  /** Starts a run; the outcome goes to the state (never throws, never rejects). */
  run: (payload: Payload, options?: RunOptions<Chunk>) => void;
  /** Starts a run and returns its promise (rejects with the `TaskgateError`). */
  runAsync: (payload: Payload, options?: RunOptions<Chunk>) => Promise<Result>;
  /** Cancels the pending run: status `error`, `error.code` `CANCELLED`, chunks so far kept. */
  cancel: () => void;
  /** Leaves the pending run, if any (cancelled; a detached one released), and goes back to `idle`. */
  reset: () => void;
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
  const { state, start, cancel, reset } = useRunState(client, options as RunStateOptions<unknown>);
  // The latest props, for the stable callbacks below ("latest ref" pattern).
  const latest = useRef({ requestType, options });
  latest.current = { requestType, options };

  const runAsync = useCallback(
    (payload: unknown, runOptions: RunOptions<unknown> = {}): Promise<unknown> => {
      const { requestType: type, options: hookOptions } = latest.current;
      const detach = runOptions.detach === true;
      return start(
        (c, base) => {
          const requestOptions: RequestOptions<unknown> = { ...base };
          const timeoutMs = runOptions.timeoutMs ?? hookOptions.timeoutMs;
          if (timeoutMs !== undefined) requestOptions.timeoutMs = timeoutMs;
          if (detach) requestOptions.detach = true;
          if (runOptions.id !== undefined) requestOptions.id = runOptions.id;
          const request = c.request as (t: string, p: unknown, o: RequestOptions<unknown>) => Promise<unknown>;
          return request(type, payload, requestOptions);
        },
        detach,
        runOptions.onChunk,
      );
    },
    [start],
  );

  const run = useCallback(
    (payload: unknown, runOptions?: RunOptions<unknown>) => {
      runAsync(payload, runOptions).catch(() => undefined); // the outcome is in the state
    },
    [runAsync],
  );

  return { ...state, run, runAsync, cancel, reset };
}
