import { useState } from 'react';
import { useBackendRequest } from '@taskgate/client/react';

import { useCountdownFields } from './CountdownFields';
import { ErrorMessage } from './ErrorMessage';

/** demo.countdown: a progress bar fed by streamed chunks, and a Cancel button. */
export function CountdownPanel() {
  const { from, intervalMs, fields } = useCountdownFields(20, 250);
  // Every chunk is kept (a few hundred small ones at most): `data-remaining` lists them, so the
  // browser test can check that a network cut left no gap and no repeat.
  const countdown = useBackendRequest('demo.countdown');
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
      <output
        data-testid="countdown-status"
        data-status={countdown.status}
        data-steps={done}
        data-remaining={countdown.chunks.map((chunk) => chunk.remaining).join(' ')}
      >
        {countdown.isIdle && 'Not started.'}
        {countdown.isPending && `${done} of ${runFrom} steps`}
        {countdown.isSuccess && `Done: ${done} of ${runFrom} steps.`}
        {cancelled && `Cancelled after ${done} of ${runFrom} steps.`}
      </output>
      {countdown.error && !cancelled && <ErrorMessage error={countdown.error} testId="countdown-error" />}
    </section>
  );
}
