/**
 * Retries with backoff (docs/protocol.md §3.12), without AMQP: the request type's policy as
 * the host sends it (header `x-retry`), whether a failed attempt is retried, and after how
 * long. `amqp.ts` does the waiting: it republishes the request to a wait queue whose TTL
 * dead-letters it back to the request queue, so no worker slot is held. Mirrors the Python
 * SDK's `retry.py`.
 */

import type { TaskError } from './errors.js';
import { ErrorCodes } from './protocol.js';

/** How many attempts a request gets and how long to wait between them. */
export interface RetryPolicy {
  /** Attempts in all, the first one included. */
  readonly attempts: number;
  /** The delay before the first retry, in ms. */
  readonly delayMs: number;
  /** `fixed`: every delay is `delayMs`; `exponential`: it doubles each time. */
  readonly backoff: 'fixed' | 'exponential';
  readonly maxDelayMs: number | undefined;
  /** Wait a random 50 % to 100 % of each delay. */
  readonly jitter: boolean;
  /** Codes retried even when the handler did not mark the error retryable. */
  readonly retryOn: readonly string[];
}

const DAY_MS = 24 * 3600 * 1000;
/** A cancelled request is over, and an invalid payload stays invalid. */
const NEVER_RETRIED: ReadonlySet<string> = new Set([ErrorCodes.CANCELLED, ErrorCodes.INVALID_PAYLOAD]);

const isInt = (v: unknown, min: number, max: number): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;

/** The `x-retry` header's JSON (string or Buffer); `undefined` when absent or not a valid policy. */
export function parseRetryPolicy(value: unknown): RetryPolicy | undefined {
  const text = Buffer.isBuffer(value) ? value.toString('utf8') : value;
  if (typeof text !== 'string') return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return undefined;
  const r = raw as Record<string, unknown>;
  const backoff = r.backoff ?? 'fixed';
  const jitter = r.jitter ?? false;
  const retryOn = r.retryOn ?? [];
  if (!isInt(r.attempts, 1, 100) || !isInt(r.delayMs, 1, DAY_MS)) return undefined;
  if (backoff !== 'fixed' && backoff !== 'exponential') return undefined;
  if (typeof jitter !== 'boolean') return undefined;
  if (r.maxDelayMs !== undefined && !isInt(r.maxDelayMs, r.delayMs, DAY_MS)) return undefined;
  if (!Array.isArray(retryOn) || !retryOn.every((c) => typeof c === 'string')) return undefined;
  return {
    attempts: r.attempts,
    delayMs: r.delayMs,
    backoff,
    maxDelayMs: r.maxDelayMs as number | undefined,
    jitter,
    retryOn: retryOn as string[],
  };
}

/**
 * Milliseconds to wait after failed attempt `attempt` (1, 2 …). With jitter, a random 50–100 %
 * of the delay, in steps of a tenth of it (so that a few wait queues serve every delay).
 */
export function delayAfter(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  let delay = policy.backoff === 'exponential' ? policy.delayMs * 2 ** Math.min(attempt - 1, 40) : policy.delayMs;
  if (policy.maxDelayMs !== undefined) delay = Math.min(delay, policy.maxDelayMs);
  delay = Math.min(delay, DAY_MS);
  if (policy.jitter) {
    const step = Math.max(1, Math.floor(delay / 10));
    const half = Math.floor(delay / 2);
    const jittered = half + Math.floor(random() * (delay - half + 1));
    delay = Math.max(1, Math.min(delay, jittered - (jittered % step)));
  }
  return delay;
}

export function isRetryable(policy: RetryPolicy, error: TaskError): boolean {
  if (NEVER_RETRIED.has(error.code)) return false;
  return error.retryable || policy.retryOn.includes(error.code);
}

export interface AttemptState {
  chunksSent: boolean;
  cancelled: boolean;
  deadlineMs: number | undefined;
  nowMs: number;
  random?: () => number;
}

/**
 * The next attempt and the delay before it, or `undefined` when `error` is final: no policy,
 * not retryable, attempts used up, chunks already streamed (a client never sees a chunk
 * sequence start over), cancelled, or the next attempt would start after the deadline.
 */
export function nextAttempt(
  policy: RetryPolicy | undefined,
  attempt: number,
  error: TaskError,
  state: AttemptState,
): { attempt: number; delayMs: number } | undefined {
  if (!policy || state.cancelled || state.chunksSent || attempt >= policy.attempts) return undefined;
  if (!isRetryable(policy, error)) return undefined;
  const delayMs = delayAfter(policy, attempt, state.random);
  if (state.deadlineMs !== undefined && state.nowMs + delayMs >= state.deadlineMs) return undefined;
  return { attempt: attempt + 1, delayMs };
}

/** The queue a request waits in for `delayMs` before going back to `queue`. */
export function waitQueue(queue: string, delayMs: number): string {
  return `${queue}.retry.${delayMs}`;
}

/** A wait queue holds each request `delayMs`, then dead-letters it back to `queue`; unused for a minute past that, it is deleted. */
export function waitQueueArguments(queue: string, delayMs: number): Record<string, string | number> {
  return {
    'x-message-ttl': delayMs,
    'x-dead-letter-exchange': '',
    'x-dead-letter-routing-key': queue,
    'x-expires': delayMs + 60_000,
  };
}
