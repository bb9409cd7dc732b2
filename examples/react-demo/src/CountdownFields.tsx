import { useState } from 'react';

/** The countdown's two inputs (`from` steps, one `every` N ms), as the payload they make. */
export function useCountdownFields(initialFrom: number, initialIntervalMs: number) {
  const [from, setFrom] = useState(initialFrom);
  const [intervalMs, setIntervalMs] = useState(initialIntervalMs);
  const fields = (
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
  );
  return { from, intervalMs, fields };
}
