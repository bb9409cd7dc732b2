/**
 * `useTask(id)`: a task the owner already has (protocol §4.3) — one a reloaded page found with
 * `useTasks()`, or whose id it kept — as the same state as `useBackendRequest`: chunks so far,
 * then `data` or `error`. It follows the task with `client.attach(id)` whenever `id` changes
 * (null/undefined: idle). Attaching from seq 0 gives every chunk the host kept, so `chunks` is
 * the whole stream when the host still has it; where it no longer does, `onGap` says from which
 * `seq` on chunks follow. Unmounting or a new `id` only stops following (the task goes on);
 * `cancel()` cancels the task on the host.
 */

import { useEffect, useRef } from 'react';

import type { AttachOptions } from '../client.js';
import { useTaskgateClient } from './context.js';
import { useRunState, type BackendRequestState, type RunStateOptions } from './run-state.js';

export interface UseTaskOptions<Chunk> extends RunStateOptions<Chunk> {
  /** The host no longer had the chunks before `firstSeq` (it keeps a bounded amount per task). */
  onGap?: (firstSeq: number) => void;
  /** Client-side timeout of following the task, in ms (default: none); it cancels the task. */
  timeoutMs?: number;
}

export interface TaskBinding<Result, Chunk> extends BackendRequestState<Result, Chunk> {
  /** Cancels the task on the host (status `error`, `CANCELLED`). */
  cancel: () => void;
}

export function useTask<Result = unknown, Chunk = unknown>(
  id: string | null | undefined,
  options: UseTaskOptions<Chunk> = {},
): TaskBinding<Result, Chunk> {
  const client = useTaskgateClient();
  const { state, start, cancel, reset } = useRunState(client, options as RunStateOptions<unknown>);
  const latest = useRef(options);
  latest.current = options;

  useEffect(() => {
    if (id === null || id === undefined) {
      reset();
      return;
    }
    const attachOptions = (base: AttachOptions): AttachOptions => {
      const { timeoutMs } = latest.current;
      const full: AttachOptions = { ...base, onGap: (firstSeq) => latest.current.onGap?.(firstSeq) };
      if (timeoutMs !== undefined) full.timeoutMs = timeoutMs;
      return full;
    };
    start((c, base) => c.attach(id, attachOptions(base)), true).catch(() => undefined); // the outcome is in the state
  }, [client, id, start, reset]);

  return { ...(state as BackendRequestState<Result, Chunk>), cancel };
}
