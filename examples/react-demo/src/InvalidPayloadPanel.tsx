import type { TextWordcountPayload } from './taskgate-types';
import { useBackendRequest } from '@taskgate/client/react';

import { ErrorMessage } from './ErrorMessage';

/** What a payload the plugin refuses looks like: the host's INVALID_PAYLOAD message. */
export function InvalidPayloadPanel() {
  const request = useBackendRequest('text.wordcount');
  // The generated types would not let `{ text: 5 }` compile; this panel sends it on purpose.
  const invalid = { text: 5 } as unknown as TextWordcountPayload;
  return (
    <section data-testid="invalid-panel">
      <h2>
        An invalid payload <small>the server's validation message</small>
      </h2>
      <div className="actions">
        <button onClick={() => request.run(invalid)}>Send {'{ "text": 5 }'}</button>
      </div>
      <output data-testid="invalid-status" data-status={request.status}>
        {request.isPending && 'Sending…'}
        {request.isSuccess && 'Accepted?!'}
      </output>
      {request.error && <ErrorMessage error={request.error} testId="invalid-error" />}
    </section>
  );
}
