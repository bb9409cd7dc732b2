/**
 * Names of taskgate wire protocol v1 (docs/protocol.md §2) that a worker uses. The Rust side
 * takes the same names from `protocol/src/lib.rs`; keep them identical.
 */

/** Fanout exchange on which hosts announce cancellations (§2.4). */
export const CANCEL_EXCHANGE = 'taskgate.cancel';
/** Header: the request's deadline as Unix milliseconds (§2.2). */
export const HEADER_DEADLINE_MS = 'x-deadline-ms';
/** Header: `true` when the request type streams chunks (§2.2). */
export const HEADER_STREAM = 'x-stream';
/** Header on `chunk` replies: 0, 1, 2 … (§2.3). */
export const HEADER_SEQ = 'x-seq';
/** W3C trace context header the host may put on requests; the SDK logs it with the request. */
export const HEADER_TRACEPARENT = 'traceparent';
/** Header set by a host with authentication: the client's identity as JSON `{ subject, roles }`. */
export const HEADER_IDENTITY = 'x-identity';
/** Header: the request type's retry policy as JSON (§3.12); absent: no retries. */
export const HEADER_RETRY = 'x-retry';
/** Header: which attempt this delivery is, 1, 2 … (§3.12); set by the SDK that schedules a retry; absent: 1. */
export const HEADER_ATTEMPT = 'x-attempt';
/** The `type` of a retry notice to the host (§3.12): the next attempt is scheduled; counted, never relayed. */
export const REPLY_TYPE_RETRY = 'retry';
/** Content type of every request and reply body. */
export const CONTENT_TYPE_JSON = 'application/json';

/** The `type` property of a reply message (§2.3). */
export type ReplyKind = 'chunk' | 'result' | 'error';

/** Error codes a worker sends itself (§1; a handler may use codes of its own too). */
export const ErrorCodes = {
  CANCELLED: 'CANCELLED',
  INVALID_PAYLOAD: 'INVALID_PAYLOAD',
  WORKER_ERROR: 'WORKER_ERROR',
} as const;

/** The default queue of a request type, as the example plugins name theirs. */
export function defaultQueue(requestType: string): string {
  return `taskgate.${requestType}`;
}
