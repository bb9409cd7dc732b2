/** Small helpers shared by the client's tests. */

import { TaskgateError } from '../src/index.js';

/** Tracks how a promise settled, so a test can check it settled without waiting for it. */
export function track<T>(promise: Promise<T>): { settled: () => boolean; value: () => T | undefined; error: () => unknown } {
  let settled = false;
  let value: T | undefined;
  let error: unknown;
  promise.then(
    (v) => {
      settled = true;
      value = v;
    },
    (e) => {
      settled = true;
      error = e;
    },
  );
  return { settled: () => settled, value: () => value, error: () => error };
}

export const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function rejection(promise: Promise<unknown>): Promise<TaskgateError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(TaskgateError);
    return error as TaskgateError;
  }
  throw new Error('expected the request to reject');
}

/** Lets promise callbacks run while fake timers are installed. */
export async function flushFake(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}
