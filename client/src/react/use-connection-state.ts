/** `useConnectionState()`: the client's connection state, re-rendering on every change. */

import { useCallback, useSyncExternalStore } from 'react';

import type { ConnectionState } from '../connection-state.js';
import { useTaskgateClient } from './context.js';

export function useConnectionState(): ConnectionState {
  const client = useTaskgateClient();
  const subscribe = useCallback((onChange: () => void) => client.subscribe(() => onChange()), [client]);
  const get = () => client.connectionState;
  return useSyncExternalStore(subscribe, get, get);
}
