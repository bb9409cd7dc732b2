/**
 * Type tests in strict mode: the generated module (taskgate-types.ts, written by
 * `taskgate-codegen --strict` from test/fixtures/schemas.sample.json) declares the request map
 * closed, so a request type that is not in it — a typo — does not compile, with or without
 * explicit generics, on the client, `makeBackendRequest` and the React hook alike.
 */
import './taskgate-types.ts';

import { createClient, makeBackendRequest, type ResultOf } from '@taskgate/client';
import { useBackendRequest } from '@taskgate/client/react';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const assertType = <T extends true>(_: T) => undefined;

export async function strictCalls(): Promise<void> {
  // Known types work as without strict mode.
  const counted = await makeBackendRequest('text.wordcount', { text: 'a b' });
  assertType<Equal<typeof counted, ResultOf<'text.wordcount'>>>(true);
  // @ts-expect-error the text must be a string
  await makeBackendRequest('text.wordcount', { text: 5 });

  // @ts-expect-error a misspelt request type
  await makeBackendRequest('text.wordcout', { text: 'a b' });
  const client = createClient();
  // @ts-expect-error a misspelt request type on a client
  await client.request('demo.countdwn', { from: 3 });
  // @ts-expect-error explicit generics do not open a closed map
  await client.request<{ n: number }, { doubled: number }>('math.double', { n: 2 });
}

export function StrictHook() {
  const known = useBackendRequest('text.wordcount');
  known.run({ text: 'x' });
  // @ts-expect-error a misspelt request type in the hook
  useBackendRequest('text.wordcout');
  // @ts-expect-error explicit generics do not open a closed map
  useBackendRequest<{ n: number }, { doubled: number }>('math.double');
  return null;
}
