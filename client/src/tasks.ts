/**
 * The task list (protocol §4.3): what `client.tasks()` resolves with, and the check of the
 * host's `tasks` ack. A list the client cannot read is a fault of the host (`INTERNAL`), never
 * a half-read list: a page that shows tasks must not show a wrong one.
 */

import { TaskgateError } from './errors.js';

/** Where a task is: still running, or ended (and kept for `resultTtlMs`) one of three ways. */
export type TaskState = 'running' | 'succeeded' | 'failed' | 'cancelled';

const TASK_STATES: readonly TaskState[] = ['running', 'succeeded', 'failed', 'cancelled'];

/** One task of the owner (protocol §4.3): a detached request, running or kept. */
export interface TaskInfo {
  /** The request id: `client.attach(id)` follows it. */
  id: string;
  requestType: string;
  state: TaskState;
  /** Unix milliseconds. */
  startedAt: number;
  /** Unix milliseconds; absent while running. */
  endedAt?: number;
  /** The `seq` of the latest chunk; absent before the first. */
  lastSeq?: number;
  /** The data of the latest chunk (the task's progress); present when `lastSeq` is. */
  lastChunk?: unknown;
}

/** The tasks of a `tasks` ack `{ ok: true, tasks }`; throws the error the promise rejects with. */
export function readTasksAck(ack: unknown): TaskInfo[] {
  const a = ack as { ok?: unknown; tasks?: unknown; error?: unknown } | null;
  if (typeof a === 'object' && a !== null && a.ok === false) throw TaskgateError.fromWire(a.error);
  if (typeof a === 'object' && a !== null && a.ok === true && Array.isArray(a.tasks)) {
    const tasks: TaskInfo[] = [];
    for (const item of a.tasks) {
      const task = readTask(item);
      if (!task) break;
      tasks.push(task);
    }
    if (tasks.length === a.tasks.length) return tasks;
  }
  throw new TaskgateError('INTERNAL', 'the host sent a malformed task list', { received: ack });
}

/** Optional fields may be absent or `null` (both mean "none"). */
function absent(value: unknown): boolean {
  return value === undefined || value === null;
}

function readTask(item: unknown): TaskInfo | undefined {
  if (typeof item !== 'object' || item === null) return undefined;
  const t = item as Record<string, unknown>;
  if (typeof t.id !== 'string' || typeof t.requestType !== 'string') return undefined;
  if (!TASK_STATES.includes(t.state as TaskState)) return undefined;
  if (!Number.isFinite(t.startedAt)) return undefined;
  if (!absent(t.endedAt) && !Number.isFinite(t.endedAt)) return undefined;
  if (!absent(t.lastSeq) && !Number.isInteger(t.lastSeq)) return undefined;
  const task: TaskInfo = { id: t.id, requestType: t.requestType, state: t.state as TaskState, startedAt: t.startedAt as number };
  if (!absent(t.endedAt)) task.endedAt = t.endedAt as number;
  if (!absent(t.lastSeq)) {
    task.lastSeq = t.lastSeq as number;
    task.lastChunk = t.lastChunk;
  }
  return task;
}
