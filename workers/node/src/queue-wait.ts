/**
 * Waiting for a queue the host has not declared yet. The host declares its request types'
 * queues, with their arguments, when it starts; a worker started before it looks again for a
 * while rather than declaring the queue at once without them. Kept apart from `amqp.ts` so the
 * waiting is unit-tested without a broker (the Rust and Python SDKs wait the same way).
 */

import type { Logger } from './log.js';

/** How long a session waits for a missing queue before declaring it itself. */
export const QUEUE_PATIENCE_MS = 5_000;
/** How often it looks meanwhile. */
export const QUEUE_POLL_MS = 1_000;

/**
 * Waits for `queue` to exist, asking `exists` now and then every `pollMs` until `patienceMs` is
 * over; resolves whether it exists in the end. A queue that is missing at first is announced by
 * one info line, and nothing is logged while waiting: a worker started before the host is not an
 * error. A rejection of `exists` ends the wait with it.
 */
export async function waitForQueue(
  exists: () => Promise<boolean>,
  queue: string,
  log: Logger,
  { patienceMs = QUEUE_PATIENCE_MS, pollMs = QUEUE_POLL_MS }: { patienceMs?: number; pollMs?: number } = {},
): Promise<boolean> {
  if (await exists()) return true;
  log.info(`waiting for queue ${queue} to be declared by the host`, { queue, patience_ms: patienceMs });
  const giveUp = Date.now() + patienceMs;
  for (;;) {
    const left = giveUp - Date.now();
    if (left <= 0) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(pollMs, left)));
    if (await exists()) {
      log.debug('the queue exists now', { queue });
      return true;
    }
  }
}
