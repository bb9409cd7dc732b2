import { useState } from 'react';
import { useBackendRequest } from '@taskgate/client/react';

import { ErrorMessage } from './ErrorMessage';

/** demo.countdown: a progress bar fed by streamed chunks, and a Cancel button. */
export function CountdownPanel() {
  const [from, setFrom] = useState(20);
  const [intervalMs, setIntervalMs] = useState(250);
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
      <div className="fields">
        <label>
          from <input type="number" min={1} max={10000} value={from} onChange={(e) => setFrom(Number(e.target.value))} />
        </label>
        <label>
          every{' '}
          <input type="number" min={0} max={60000} value={intervalMs} onChange={(e) => setIntervalMs(Number(e.target.value))} />{' '}
          ms
        </label>
      </div>
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
