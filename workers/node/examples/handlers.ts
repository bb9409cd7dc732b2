/**
 * The example handlers, written with the SDK as a worker author would. They follow the Rust
 * example workers' payload conventions (workers/rust/src/bin/taskgate-example-workers.rs).
 *
 * `echo` answers with its payload, unchanged. A payload that is an object may steer it:
 * - `"delayMs": n` (integer 0..=600000): first waits n ms (a cancellation ends the wait);
 * - `"chunks": n` (integer 0..=10000): then streams n chunks `{ "index": 0 }` … `{ "index": n-1 }`;
 * - `"fail": { "code"?: string, "message": string, "details"?: any }`: then replies with that
 *   error instead of the result (`code` defaults to `WORKER_ERROR`).
 * A steering field of the wrong type or out of range is answered `INVALID_PAYLOAD` first.
 *
 * `demo.countdown`: `{ "from": n (0..=10000), "intervalMs"?: ms (0..=60000, default 1000) }`
 * → one chunk every `intervalMs`: `{ "remaining": n-1 }` … `{ "remaining": 0 }`, then
 * `{ "done": true }` (the countdown plugin's chunk and result schemas). A cancellation stops it
 * at once, and its log line `countdown stopped early` says where.
 */

import { TaskError, type Context } from '../src/index.js';

const MAX_ECHO_CHUNKS = 10_000;
const MAX_ECHO_DELAY_MS = 600_000;
const MAX_COUNTDOWN_FROM = 10_000;
const MAX_COUNTDOWN_INTERVAL_MS = 60_000;
const DEFAULT_COUNTDOWN_INTERVAL_MS = 1000;

function invalid(pointer: string, message: string): TaskError {
  return TaskError.invalidPayload([{ pointer, message }]);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function boundedInteger(value: unknown, pointer: string, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max) {
    throw invalid(pointer, `must be an integer from 0 to ${max}`);
  }
  return value;
}

/** What an echo payload asks for, checked before anything is done. */
interface EchoSteering {
  delayMs: number;
  chunks: number;
  fail: TaskError | undefined;
}

function echoSteering(payload: unknown): EchoSteering {
  const steering: EchoSteering = { delayMs: 0, chunks: 0, fail: undefined };
  if (!isObject(payload)) return steering;
  if ('delayMs' in payload) steering.delayMs = boundedInteger(payload.delayMs, '/delayMs', MAX_ECHO_DELAY_MS);
  if ('chunks' in payload) steering.chunks = boundedInteger(payload.chunks, '/chunks', MAX_ECHO_CHUNKS);
  if ('fail' in payload) {
    const fail = payload.fail;
    if (!isObject(fail)) throw invalid('/fail', 'must be an object { code?, message, details? }');
    if (typeof fail.message !== 'string') throw invalid('/fail/message', 'must be a string');
    if (fail.code !== undefined && typeof fail.code !== 'string') throw invalid('/fail/code', 'must be a string');
    steering.fail = new TaskError(fail.code, fail.message, fail.details);
  }
  return steering;
}

export async function echo(payload: unknown, ctx: Context): Promise<unknown> {
  const steering = echoSteering(payload);
  if (steering.delayMs > 0) await ctx.sleep(steering.delayMs);
  for (let index = 0; index < steering.chunks; index++) await ctx.chunk({ index });
  if (steering.fail) throw steering.fail;
  return payload;
}

interface CountdownRequest {
  from: number;
  intervalMs: number;
}

function countdownRequest(payload: unknown): CountdownRequest {
  if (!isObject(payload)) throw invalid('', 'must be an object { from, intervalMs? }');
  if (!('from' in payload)) throw invalid('/from', 'is required');
  const from = boundedInteger(payload.from, '/from', MAX_COUNTDOWN_FROM);
  const intervalMs =
    payload.intervalMs === undefined
      ? DEFAULT_COUNTDOWN_INTERVAL_MS
      : boundedInteger(payload.intervalMs, '/intervalMs', MAX_COUNTDOWN_INTERVAL_MS);
  return { from, intervalMs };
}

export async function countdown(payload: unknown, ctx: Context): Promise<{ done: true }> {
  const { from, intervalMs } = countdownRequest(payload);
  for (let remaining = from - 1; remaining >= 0; remaining--) {
    try {
      await ctx.sleep(intervalMs);
    } catch (error) {
      ctx.log.info('countdown stopped early', { from, chunks_sent: from - 1 - remaining });
      throw error;
    }
    await ctx.chunk({ remaining });
  }
  return { done: true };
}
