import { useConnectionState } from '@taskgate/client/react';

/** connecting / connected / reconnecting / disconnected, as a coloured badge. */
export function ConnectionIndicator() {
  const state = useConnectionState();
  return (
    <p className="connection">
      Connection:{' '}
      <span className={`badge badge-${state}`} data-testid="connection-state">
        {state}
      </span>
    </p>
  );
}
