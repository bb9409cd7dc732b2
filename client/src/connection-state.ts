/**
 * The connection's state as a small observable value: `get()` and `subscribe(listener)`,
 * whose return value unsubscribes (the shape React's `useSyncExternalStore` wants).
 */

/**
 * - `connecting`: the first connection attempt is under way;
 * - `connected`: requests go out at once;
 * - `reconnecting`: the connection was lost (or an attempt failed) and socket.io-client retries
 *   by itself; new requests wait for it;
 * - `disconnected`: no further attempt will be made (closed by `client.close()`, or refused by
 *   the host, e.g. `unauthorized`); new requests fail with `UNAVAILABLE`.
 */
export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

export type StateListener = (state: ConnectionState) => void;

export class ConnectionStateStore {
  private state: ConnectionState;
  private readonly listeners = new Set<StateListener>();

  constructor(initial: ConnectionState) {
    this.state = initial;
  }

  get(): ConnectionState {
    return this.state;
  }

  set(next: ConnectionState): void {
    if (next === this.state) return;
    this.state = next;
    // A copy: a listener may unsubscribe (itself or another) while we iterate.
    for (const listener of [...this.listeners]) listener(next);
  }

  subscribe(listener: StateListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}
