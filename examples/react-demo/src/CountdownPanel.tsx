import { useState } from 'react';
import { useBackendRequest } from '@taskgate/client/react';

import { useCountdownFields } from './CountdownFields';
import { ErrorMessage } from './ErrorMessage';

/** demo.countdown: a progress bar fed by streamed chunks, and a Cancel button. */
export function CountdownPanel() {
  const { from, intervalMs, fields } = useCountdownFields(20, 250);
  const countdown = useBackendRequest('demo.countdown', { keepChunks: false });
  // The run's own `from`: the inputs may change while it runs.
  const [runFrom, setRunFrom] = useState(from);
  const done = countdown.latestChunk ? runFrom - countdown.latestChunk.remaining : 0;
  const start = () => {
    setRunFrom(from);
    countdown.run({ from, intervalMs });
  };
  const cancelled = countdown.error?.code === 'CANCELLED';
  return (
    <section data-testid="countdown-panel">
      <h2>
        Countdown <small>demo.countdown, streamed</small>
      </h2>
      {fields}
      <div className="actions">
        <button onClick={start} disabled={countdown.isPending}>
          Start
        </button>
        <button onClick={countdown.cancel} disabled={!countdown.isPending}>
          Cancel
        </button>
      </div>
      <progress data-testid="countdown-progress" max={runFrom} value={done} />
      <output data-testid="countdown-status" data-status={countdown.status} data-steps={done}>
        {countdown.isIdle && 'Not started.'}
        {countdown.isPending && `${done} of ${runFrom} steps`}
        {countdown.isSuccess && `Done: ${done} of ${runFrom} steps.`}
        {cancelled && `Cancelled after ${done} of ${runFrom} steps.`}
      </output>
      {countdown.error && !cancelled && <ErrorMessage error={countdown.error} testId="countdown-error" />}
    </section>
  );
}
