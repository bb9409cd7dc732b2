import { useState } from 'react';
import { useBackendRequest } from '@taskgate/client/react';

import { ErrorMessage } from './ErrorMessage';

/** text.wordcount: a textarea in, the worker's counts out. */
export function WordCountPanel() {
  const [text, setText] = useState('Run backend work from React as if it were a function call.');
  const count = useBackendRequest('text.wordcount');
  return (
    <section data-testid="wordcount-panel">
      <h2>
        Word count <small>text.wordcount</small>
      </h2>
      <textarea aria-label="Text to count" value={text} onChange={(e) => setText(e.target.value)} rows={4} />
      <div className="actions">
        <button onClick={() => count.run({ text })} disabled={count.isPending}>
          Count words
        </button>
      </div>
      <output data-testid="wordcount-result" data-status={count.status}>
        {count.isPending && 'Counting…'}
        {count.data && `${count.data.words} words, ${count.data.lines} lines, ${count.data.chars} characters`}
      </output>
      {count.error && <ErrorMessage error={count.error} testId="wordcount-error" />}
    </section>
  );
}
