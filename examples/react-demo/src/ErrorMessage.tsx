import type { TaskgateError } from '@taskgate/client';

/** A request's error as the host or worker sent it: code, message and, for payloads, where. */
export function ErrorMessage({ error, testId }: { error: TaskgateError; testId: string }) {
  return (
    <div className="error" role="alert" data-testid={testId}>
      <strong>{error.code}</strong>: {error.message}
      {error.problems.length > 0 && (
        <ul>
          {error.problems.map((p, i) => (
            <li key={i}>
              <code>{p.pointer || '(the payload)'}</code> {p.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
