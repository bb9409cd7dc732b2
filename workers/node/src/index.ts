/**
 * `@taskgate/worker`: the Node.js (and Bun) worker SDK for taskgate. A worker is a set of
 * handlers, one per request type; the SDK hides AMQP (protocol v1 §2, docs/protocol.md):
 *
 * ```ts
 * import { createWorker, TaskError } from '@taskgate/worker';
 *
 * const worker = createWorker({ url: process.env.TASKGATE_AMQP_URL, prefetch: 16 });
 * worker.handle('demo.countdown', async (payload: { from: number }, ctx) => {
 *   for (let remaining = payload.from - 1; remaining >= 0; remaining--) {
 *     await ctx.sleep(100);                 // rejects once the request is cancelled
 *     await ctx.chunk({ remaining });
 *   }
 *   return { done: true };
 * });
 * await worker.run();                       // until SIGTERM / SIGINT
 * ```
 *
 * Layout: `worker.ts` (handlers, the session loop: reconnect, shutdown), `runner.ts` (one
 * request from delivery to ack, independent of AMQP), `context.ts` (what a handler sees),
 * `amqp.ts` (amqplib), `broker.ts` (the broker interface between them), `testing.ts`
 * (in-memory broker and `runRequest` for unit tests).
 */

export { createWorker, Worker, DEFAULT_AMQP_URL, DEFAULT_PREFETCH, DEFAULT_CANCEL_GRACE_MS, DEFAULT_SHUTDOWN_GRACE_MS } from './worker.js';
export type { WorkerOptions, HandleOptions, RunOptions, RequestTypeEntry, RequestTypeMap, TypedHandler, TypedWorker } from './worker.js';
export type { Handler, Outcome } from './runner.js';
export type { Context } from './context.js';
export type { Identity } from './transport.js';
export type { RetryPolicy } from './retry.js';
export { RequestAbandoned } from './context.js';
export { TaskError, WorkerError } from './errors.js';
export type { ErrorBody, Problem } from './errors.js';
export { consoleLogger, memoryLogger, levelFrom } from './log.js';
export type { Logger, Level, Fields, LogRecord } from './log.js';
export type { Broker, BrokerSession, QueueArguments, SessionLost } from './broker.js';
export { BrokerRefused, QueueUnusable } from './broker.js';
export { ErrorCodes, defaultQueue } from './protocol.js';
