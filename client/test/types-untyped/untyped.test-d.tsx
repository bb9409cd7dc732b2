/**
 * Type tests WITHOUT generated types (a program with an empty request map): every request
 * type is accepted, results are `unknown` unless explicit generics say more.
 */
import { createClient, makeBackendRequest, type KnownRequestType } from '@taskgate/client';
import { useBackendRequest } from '@taskgate/client/react';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const assertType = <T extends true>(_: T) => undefined;

export async function untyped(): Promise<void> {
  assertType<Equal<KnownRequestType, never>>(true);
  const anything = await makeBackendRequest('text.wordcount', { text: 5 });
  assertType<Equal<typeof anything, unknown>>(true);

  const client = createClient();
  const typed = await client.request<{ text: string }, { words: number }, never>('text.wordcount', { text: 'a' });
  assertType<Equal<typeof typed, { words: number }>>(true);
  // @ts-expect-error the explicit Payload type is enforced
  await client.request<{ text: string }, { words: number }>('text.wordcount', { text: 5 });
  await client.request('x', 1, {
    onChunk: (chunk, seq) => {
      assertType<Equal<typeof chunk, unknown>>(true);
      assertType<Equal<typeof seq, number>>(true);
    },
  });
}

export function Untyped() {
  const r = useBackendRequest<{ text: string }, { words: number }>('text.wordcount');
  r.run({ text: 'x' });
  // @ts-expect-error the explicit Payload type is enforced
  r.run({ text: 5 });
  const loose = useBackendRequest('anything');
  loose.run(42);
  assertType<Equal<typeof loose.data, unknown>>(true);
  return null;
}
