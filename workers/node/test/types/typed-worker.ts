/**
 * Type test (tsc only, `npm run typecheck`): handlers typed by the module `taskgate-codegen --target node-worker`
 * generated from the client's sample `taskgate schemas` (taskgate-worker-types.ts, kept up to date by the client's
 * codegen tests). Each `@ts-expect-error` is a negative test: tsc fails if that line compiles.
 */

import { createWorker, type TypedHandler } from '../../src/index.js';
import type { TaskgateRequestTypes } from './taskgate-worker-types.js';

const worker = createWorker({ url: 'amqp://127.0.0.1' }).typed<TaskgateRequestTypes>();

// The right use compiles: the payload's fields, the result's shape, the chunks of a streaming type.
worker
  .handle('text.wordcount', async (payload) => {
    const text: string = payload.text;
    return { words: text.split(/\s+/).length, lines: 1, chars: text.length };
  })
  .handle('demo.countdown', async function* (payload, ctx) {
    for (let n = payload.from; n > 0; n--) {
      if (ctx.signal.aborted) break;
      yield { remaining: n - 1 };
    }
    return { done: true };
  })
  .handle('echo', async (payload) => payload);

export const named: TypedHandler<TaskgateRequestTypes['text.wordcount']> = async ({ text }) => ({
  words: 1,
  lines: 1,
  chars: text.length,
});

// A misspelt field of the payload.
// @ts-expect-error `txt` is not a field of TextWordcountPayload
worker.handle('text.wordcount', async (payload) => ({ words: payload.txt.length, lines: 1, chars: 1 }));

// A payload field used as another type.
worker.handle('demo.countdown', async (payload) => {
  // @ts-expect-error `from` is a number, not a string
  const from: string = payload.from;
  return { done: from === '' };
});

// A wrong result.
// @ts-expect-error the result needs `words`, `lines` and `chars`
worker.handle('text.wordcount', async () => ({ words: 1 }));

// A wrong chunk.
// @ts-expect-error a chunk of demo.countdown is `{ remaining: number }`
worker.handle('demo.countdown', async function* () {
  yield { left: 1 };
  return { done: true };
});

// A misspelt request type.
// @ts-expect-error `text.wordcounts` is not a request type of the host
worker.handle('text.wordcounts', async () => ({ words: 0, lines: 0, chars: 0 }));
