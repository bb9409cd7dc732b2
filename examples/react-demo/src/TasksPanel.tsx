import { useState } from 'react';
import type { ChunkOf, ResultOf, TaskInfo } from '@taskgate/client';
import { useBackendRequest, useTask, useTasks } from '@taskgate/client/react';

import { useCountdownFields } from './CountdownFields';
import { ErrorMessage } from './ErrorMessage';

type Step = ChunkOf<'demo.countdown'>;

/** Steps done and in all, from a countdown chunk and its seq (`remaining` = from − 1 − seq). */
function progressOf(chunk: Step | undefined, seq: number | undefined): { done: number; total: number } | undefined {
  if (!chunk || seq === undefined) return undefined;
  return { done: seq + 1, total: seq + 1 + chunk.remaining };
}

/**
 * Detached tasks (README, "Long-running tasks"): start a countdown that outlives the page, list
 * the tab's tasks with their progress (useTasks), follow one to its end (useTask). Reload the page
 * while one runs: the list finds it again.
 */
export function TasksPanel() {
  const { from, intervalMs, fields } = useCountdownFields(20, 500);
  const [followed, setFollowed] = useState<string | null>(null);
  const list = useTasks({ intervalMs: 500 });
  const starter = useBackendRequest('demo.countdown', { keepChunks: false });
  const start = () =>
    // The first chunk says the host has it: show it in the list at once rather than at the next poll.
    starter.run({ from, intervalMs }, { detach: true, onChunk: (_step, seq) => seq === 0 && list.refresh() });
  return (
    <section data-testid="tasks-panel">
      <h2>
        Tasks <small>demo.countdown, detached: survives a reload</small>
      </h2>
      {fields}
      <div className="actions">
        <button onClick={start}>Start detached</button>
        <button onClick={list.refresh}>Refresh</button>
      </div>
      {starter.error && <ErrorMessage error={starter.error} testId="tasks-start-error" />}
      <ul data-testid="task-list" data-loaded={!list.isLoading}>
        {list.tasks.map((task) => (
          <TaskRow key={task.id} task={task} onFollow={() => setFollowed(task.id)} />
        ))}
      </ul>
      {!list.isLoading && list.tasks.length === 0 && <p>No tasks.</p>}
      {list.error && <ErrorMessage error={list.error} testId="tasks-error" />}
      {followed && <FollowedTask id={followed} />}
    </section>
  );
}

function TaskRow({ task, onFollow }: { task: TaskInfo; onFollow: () => void }) {
  const progress = progressOf(task.lastChunk as Step | undefined, task.lastSeq);
  return (
    <li data-testid="task" data-id={task.id} data-state={task.state} data-steps={progress?.done ?? 0}>
      <code>{task.id}</code> {task.requestType}: {task.state}
      {progress && ` (${progress.done} of ${progress.total} steps)`}{' '}
      <button onClick={onFollow}>Follow</button>
    </li>
  );
}

/** One task followed with useTask: every chunk the host kept, then the outcome; Cancel stops the worker. */
function FollowedTask({ id }: { id: string }) {
  const [lastSeq, setLastSeq] = useState<number | undefined>(undefined);
  const task = useTask<ResultOf<'demo.countdown'>, Step>(id, { keepChunks: false, onChunk: (_step, seq) => setLastSeq(seq) });
  const progress = progressOf(task.latestChunk, lastSeq);
  const cancelled = task.error?.code === 'CANCELLED';
  return (
    <div data-testid="task-followed" data-id={id}>
      <progress max={progress?.total ?? 1} value={progress?.done ?? 0} />
      <output data-testid="task-followed-status" data-status={task.status} data-steps={progress?.done ?? 0}>
        <code>{id}</code>: {task.isPending && (progress ? `${progress.done} of ${progress.total} steps` : 'attaching…')}
        {task.isSuccess && `done${progress ? ` (${progress.done} of ${progress.total} steps)` : ''}.`}
        {cancelled && 'cancelled.'}
      </output>
      <div className="actions">
        <button onClick={task.cancel} disabled={!task.isPending}>
          Cancel task
        </button>
      </div>
      {task.error && !cancelled && <ErrorMessage error={task.error} testId="task-followed-error" />}
    </div>
  );
}
