/**
 * `<TaskgateProvider client>` puts a client in React context; hooks take it from there (or,
 * without a provider, from the default client set by `configureTaskgate`).
 */

import { createContext, useContext, type ReactNode } from 'react';

import type { TaskgateClient } from '../client.js';
import { getDefaultClient } from '../default-client.js';

const TaskgateContext = createContext<TaskgateClient | null>(null);

export interface TaskgateProviderProps {
  /** Make it once, outside components (`createClient` at module level): StrictMode renders twice. */
  client: TaskgateClient;
  children?: ReactNode;
}

export function TaskgateProvider({ client, children }: TaskgateProviderProps) {
  return <TaskgateContext.Provider value={client}>{children}</TaskgateContext.Provider>;
}

/** The provider's client, else the default client; throws when there is neither. */
export function useTaskgateClient(): TaskgateClient {
  const client = useContext(TaskgateContext);
  if (client) return client;
  try {
    return getDefaultClient();
  } catch {
    throw new Error(
      'taskgate: no client for this component; wrap the app in <TaskgateProvider client={createClient(…)}> or call configureTaskgate({ url }) first',
    );
  }
}
