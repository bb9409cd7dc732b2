/**
 * The one error type every request rejects with. `code` is for programs (the protocol's
 * error codes, docs/protocol.md §1), `message` for humans, `details` says more where the
 * host or the worker gave more (e.g. `INVALID_PAYLOAD` → `{ problems: [{ pointer, message }] }`).
 */

/** The error codes of protocol §1 (`TASK_NOT_FOUND`: §4). A worker may use codes of its own, so `code` is open. */
export const ERROR_CODES = [
  'BAD_REQUEST',
  'UNKNOWN_REQUEST_TYPE',
  'INVALID_PAYLOAD',
  'PAYLOAD_TOO_LARGE',
  'DUPLICATE_ID',
  'FORBIDDEN',
  'RATE_LIMITED',
  'UNAVAILABLE',
  'TIMEOUT',
  'CANCELLED',
  'WORKER_ERROR',
  'INTERNAL',
  'TASK_NOT_FOUND',
] as const;

export type ProtocolErrorCode = (typeof ERROR_CODES)[number];
/** A protocol code, or a worker's own (`string & {}` keeps editor completion for the known ones). */
export type ErrorCode = ProtocolErrorCode | (string & {});

/** The wire's error object: `{ code, message, details? }`. */
export interface ErrorObject {
  code: string;
  message: string;
  details?: unknown;
}

/** One problem of an `INVALID_PAYLOAD` refusal: a JSON Pointer into the payload and why. */
export interface PayloadProblem {
  pointer: string;
  message: string;
}

export class TaskgateError extends Error {
  override readonly name = 'TaskgateError';
  readonly code: ErrorCode;
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, details?: unknown) {
    super(message);
    this.code = code;
    this.details = details;
  }

  /** The error the host or worker sent; anything that is not an error object becomes INTERNAL. */
  static fromWire(error: unknown): TaskgateError {
    if (isErrorObject(error)) return new TaskgateError(error.code, error.message, error.details);
    return new TaskgateError('INTERNAL', 'the host sent a malformed error object', { received: error });
  }

  /** The problems of an `INVALID_PAYLOAD` error (empty for other errors). */
  get problems(): PayloadProblem[] {
    const problems = (this.details as { problems?: unknown } | undefined)?.problems;
    if (!Array.isArray(problems)) return [];
    return problems.filter(
      (p): p is PayloadProblem =>
        typeof p === 'object' && p !== null && typeof p.pointer === 'string' && typeof p.message === 'string',
    );
  }

  toJSON(): ErrorObject {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

export function isErrorObject(value: unknown): value is ErrorObject {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.code === 'string' && typeof v.message === 'string';
}

export function isTaskgateError(value: unknown): value is TaskgateError {
  return value instanceof TaskgateError;
}
