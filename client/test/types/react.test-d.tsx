/**
 * Type tests of the React bindings with the generated request map (see typed.test-d.ts).
 */
import './taskgate-types.ts';

import type { TaskInfo } from '@taskgate/client';
import { useBackendRequest, useTask, useTasks } from '@taskgate/client/react';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const assertType = <T extends true>(_: T) => undefined;

export function Typed() {
  const count = useBackendRequest('text.wordcount');
  count.run({ text: 'a b' });
  // @ts-expect-error the text must be a string
  count.run({ text: 5 });
  assertType<Equal<typeof count.data, { words: number; lines: number; chars: number } | undefined>>(true);
  assertType<Equal<typeof count.chunks, never[]>>(true);

  const countdown = useBackendRequest('demo.countdown', { onChunk: (c) => void c.remaining });
  countdown.run({ from: 3 });
  assertType<Equal<typeof countdown.latestChunk, { remaining: number } | undefined>>(true);
  // @ts-expect-error `from` is required
  countdown.run({ intervalMs: 5 });
  // @ts-expect-error not a status
  if (countdown.status === 'loading') return null;
  const code: string | undefined = countdown.error?.code;
  void code;

  const custom = useBackendRequest<{ n: number }, { doubled: number }, { step: number }>('math.double');
  custom.run({ n: 1 });
  // @ts-expect-error the explicit Payload type is enforced
  custom.run({ n: '1' });
  assertType<Equal<typeof custom.latestChunk, { step: number } | undefined>>(true);

  countdown.run({ from: 20 }, { detach: true, id: 'job-1' });
  // @ts-expect-error detach is a boolean
  countdown.run({ from: 20 }, { detach: 'yes' });
  const { tasks, error, refresh } = useTasks({ intervalMs: 500 });
  assertType<Equal<typeof tasks, TaskInfo[]>>(true);
  void error?.code;
  refresh();
  const task = useTask<{ done: boolean }, { remaining: number }>(tasks[0]?.id, { onGap: (n) => void n });
  assertType<Equal<typeof task.data, { done: boolean } | undefined>>(true);
  assertType<Equal<typeof task.latestChunk, { remaining: number } | undefined>>(true);
  task.cancel();
  return null;
}
