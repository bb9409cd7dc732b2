/**
 * @taskgate/client/react — `<TaskgateProvider client>`, `useBackendRequest(requestType)`,
 * `useConnectionState()`, and for tasks that outlive the page (protocol §4.3) `useTasks()` and
 * `useTask(id)`. Status names and callback stability follow TanStack Query's
 * mutations: `status` is idle | pending | success | error, and `run`, `runAsync`, `cancel`,
 * `reset` keep their identity across renders.
 */

export { TaskgateProvider, useTaskgateClient } from './context.js';
export type { TaskgateProviderProps } from './context.js';
export { useBackendRequest } from './use-backend-request.js';
export type { BackendRequest, BackendRequestState, RequestStatus, RunOptions, UseBackendRequestOptions } from './use-backend-request.js';
export { useConnectionState } from './use-connection-state.js';
export { useTask } from './use-task.js';
export type { TaskBinding, UseTaskOptions } from './use-task.js';
export { useTasks } from './use-tasks.js';
export type { TaskList, UseTasksOptions } from './use-tasks.js';
