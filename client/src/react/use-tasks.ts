/**
 * `useTasks()`: the owner's tasks (protocol §4.3) as a live list — loaded on mount and every time
 * the connection (re)connects, and again every `intervalMs` while any task is running, so their
 * progress (`lastChunk`) moves. One `tasks` call at a time: a reconnect while one is unanswered
 * leaves it to the client, which asks again on the new connection. A failed load keeps the last
 * list and shows the error; the next (re)connect or `refresh()` tries again.
 */

import { useCallback, useEffect, useRef, useState } from 'react';

import type { TaskgateClient } from '../client.js';
import type { TaskgateError } from '../errors.js';
import type { TaskInfo } from '../tasks.js';
import { useTaskgateClient } from './context.js';
import { asTaskgateError } from './run-state.js';

export interface UseTasksOptions {
  /** How often to reload while a task is running, in ms (default 2000). */
  intervalMs?: number;
}

export interface TaskList {
  /** Newest first; empty until the first answer. */
  tasks: TaskInfo[];
  /** The latest load's error (`null` once a load succeeds). */
  error: TaskgateError | null;
  /** True until the first load has ended. */
  isLoading: boolean;
  /** Loads the list now (unless a load is under way). */
  refresh: () => void;
}

export function useTasks(options: UseTasksOptions = {}): TaskList {
  const client = useTaskgateClient();
  const [state, setState] = useState<Omit<TaskList, 'refresh'>>({ tasks: [], error: null, isLoading: true });
  const latest = useRef({ client, intervalMs: options.intervalMs ?? 2000 });
  latest.current = { client, intervalMs: options.intervalMs ?? 2000 };
  /** The client whose `tasks()` call is unanswered, if any. */
  const loading = useRef<TaskgateClient | null>(null);
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const mounted = useRef(false);

  const stopPolling = () => {
    if (timer.current !== undefined) clearTimeout(timer.current);
    timer.current = undefined;
  };

  const refresh = useCallback(() => {
    const { client: c } = latest.current;
    if (!mounted.current || loading.current === c) return;
    stopPolling();
    loading.current = c;
    const done = () => {
      if (loading.current === c) loading.current = null;
      return mounted.current && latest.current.client === c;
    };
    c.tasks().then(
      (tasks) => {
        if (!done()) return;
        setState({ tasks, error: null, isLoading: false });
        if (tasks.some((task) => task.state === 'running')) timer.current = setTimeout(refresh, latest.current.intervalMs);
      },
      (error: unknown) => {
        if (!done()) return;
        setState((s) => ({ tasks: s.tasks, error: asTaskgateError(error), isLoading: false }));
      },
    );
  }, []);

  useEffect(() => {
    mounted.current = true;
    refresh();
    const unsubscribe = client.subscribe((connection) => {
      if (connection === 'connected') refresh();
    });
    return () => {
      mounted.current = false;
      unsubscribe();
      stopPolling();
    };
  }, [client, refresh]);

  return { ...state, refresh };
}
