/**
 * Type tests, checked by `tsc --noEmit` (npm run typecheck), never run: with the generated
 * request map (taskgate-types.ts, from test/fixtures/schemas.sample.json) wrong payloads,
 * unknown-but-typed misuse and wrong result uses fail to compile; `@ts-expect-error` fails
 * the check if the line below it compiles.
 */
import './taskgate-types.ts';

import { createClient, makeBackendRequest, type ResultOf, type TaskInfo } from '@taskgate/client';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const assertType = <T extends true>(_: T) => undefined;

export async function typedCalls(): Promise<void> {
  // A known type: payload checked, result typed.
  const counted = await makeBackendRequest('text.wordcount', { text: 'a b' });
  assertType<Equal<typeof counted, { words: number; lines: number; chars: number }>>(true);
  const words: number = counted.words;
  void words;

  // @ts-expect-error the text must be a string
  await makeBackendRequest('text.wordcount', { text: 5 });
  // @ts-expect-error the payload needs `text`
  await makeBackendRequest('text.wordcount', {});
  // @ts-expect-error no unknown fields (the schema has additionalProperties: false)
  await makeBackendRequest('text.wordcount', { text: 'a', extra: 1 });
  // @ts-expect-error the result has no `nope`
  void (await makeBackendRequest('text.wordcount', { text: 'a' })).nope;

  // Streams: chunks are typed.
  const done = await makeBackendRequest('demo.countdown', { from: 3, intervalMs: 10 }, {
    onChunk: (chunk, seq) => {
      const remaining: number = chunk.remaining;
      const n: number = seq;
      void remaining;
      void n;
      // @ts-expect-error a countdown chunk has no `progress`
      void chunk.progress;
    },
  });
  assertType<Equal<typeof done, ResultOf<'demo.countdown'>>>(true);
  // @ts-expect-error `from` must be a number
  await makeBackendRequest('demo.countdown', { from: '3' });

  // The same on a client.
  const client = createClient({ url: 'http://127.0.0.1:1' });
  const r = await client.request('text.wordcount', { text: 'x' });
  assertType<Equal<typeof r.chars, number>>(true);
  // @ts-expect-error the text must be a string
  await client.request('text.wordcount', { text: 5 });

  // A type with schemas `true`/null is typed `unknown`.
  const echoed = await client.request('echo', { anything: [1, 2] });
  assertType<Equal<typeof echoed, unknown>>(true);

  // Types not in the map still work, through generics.
  const custom = await client.request<{ n: number }, { doubled: number }, { step: number }>(
    'math.double',
    { n: 2 },
    { onChunk: (c) => void c.step },
  );
  assertType<Equal<typeof custom, { doubled: number }>>(true);
  // @ts-expect-error the explicit Payload type is enforced
  await client.request<{ n: number }, { doubled: number }>('math.double', { n: 'two' });
  const inferred = await makeBackendRequest('not.in.the.map', { whatever: true });
  assertType<Equal<typeof inferred, unknown>>(true);

  // Tasks (protocol §4.3): detach and id are request options; tasks() and attach(id).
  const detached = await makeBackendRequest('demo.countdown', { from: 3 }, { detach: true, id: 'job-1', onChunk: (c) => void c.remaining });
  assertType<Equal<typeof detached, ResultOf<'demo.countdown'>>>(true);
  // @ts-expect-error the id is a string
  await client.request('echo', 1, { id: 5 });
  const tasks = await client.tasks();
  assertType<Equal<typeof tasks, TaskInfo[]>>(true);
  const state: 'running' | 'succeeded' | 'failed' | 'cancelled' = tasks[0]!.state;
  void state;
  const attached = await client.attach<{ done: boolean }, { remaining: number }>('job-1', {
    afterSeq: 2,
    onChunk: (c) => void c.remaining,
    onGap: (firstSeq: number) => void firstSeq,
  });
  assertType<Equal<typeof attached, { done: boolean }>>(true);
  // @ts-expect-error attach takes no payload
  await client.attach('job-1', { from: 3 });
}
