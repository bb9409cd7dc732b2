/**
 * The errors of the SDK: `TaskError`, what a handler throws to answer with an `error` reply,
 * and `WorkerError`, why a worker stopped.
 */

import { ErrorCodes } from './protocol.js';

/** One problem with a payload: where (a JSON Pointer into the payload, `""` for all of it) and why. */
export interface Problem {
  pointer: string;
  message: string;
}

/** The body of an `error` reply (protocol §2.3). */
export interface ErrorBody {
  code: string;
  message: string;
  details?: unknown;
}

/**
 * A failure the handler reports to the client: `throw new TaskError("NOT_FOUND", "no such
 * image", { url })`. The client sees `{ code, message, details }`. Any other exception a
 * handler throws is answered `WORKER_ERROR` with its message (the stack goes to the log only).
 */
export class TaskError extends Error {
  override readonly name = 'TaskError';
  /** A protocol code (`WORKER_ERROR`, `INVALID_PAYLOAD` …) or one of the worker's own; never empty. */
  readonly code: string;
  readonly details: unknown;
  /**
   * Trying again later may succeed (a downstream service down, a lock, a rate limit): under the
   * request type's retry policy (docs/protocol.md §3.12) the SDK schedules another attempt
   * instead of replying this error.
   */
  readonly retryable: boolean;

  constructor(code: string | undefined, message: string, details?: unknown, options: { retryable?: boolean } = {}) {
    super(message);
    this.code = code ? code : ErrorCodes.WORKER_ERROR;
    this.details = details;
    this.retryable = options.retryable ?? false;
  }

  /** `CANCELLED`: the request was cancelled. `ctx.chunk` throws it once the request is cancelled. */
  static cancelled(): TaskError {
    return new TaskError(ErrorCodes.CANCELLED, 'the request was cancelled');
  }

  /**
   * `INVALID_PAYLOAD` with `details: { problems: [{ pointer, message }] }`, the shape the host
   * uses for its own validation errors (docs/protocol.md §3.1, §3.4).
   */
  static invalidPayload(problems: Problem[]): TaskError {
    const message = problems.map((p) => (p.pointer ? `${p.pointer} ${p.message}` : p.message)).join('; ');
    return new TaskError(ErrorCodes.INVALID_PAYLOAD, message, { problems });
  }

  get isCancelled(): boolean {
    return this.code === ErrorCodes.CANCELLED;
  }

  /** The `error` reply's body. Details that cannot be written as JSON are left out. */
  toBody(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.details !== undefined) {
      try {
        if (JSON.stringify(this.details) !== undefined) body.details = this.details;
      } catch {
        /* not JSON (a cycle, a BigInt): left out, as the Rust SDK does */
      }
    }
    return body;
  }
}

/** Why a worker stopped other than being asked to: retrying cannot help. */
export class WorkerError extends Error {
  override readonly name = 'WorkerError';
  constructor(
    readonly kind: 'config' | 'refused' | 'queue',
    message: string,
  ) {
    super(message);
  }
}
