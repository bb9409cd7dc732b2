/**
 * One event, one log line (security review, issue 20 #5): what a client chooses — a request
 * id, a request type — can hold line breaks, and the host logs it (a cancel, a timeout, a
 * refusal). In the text log every event stays on its own line, so a client cannot forge
 * whole log lines for whoever reads them.
 */

import assert from 'node:assert/strict';

import { connect, e2e, FakeWorker, startHost, TYPES, waitUntil } from './harness.js';

const FORGED = 'ERROR taskgate_host: forged line from a client';

e2e('log lines: a request id or request type with line breaks cannot forge a log line', async (ctx) => {
  const host = await startHost(ctx, { env: { TASKGATE_LOG: 'debug' } });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const client = await connect(ctx, host.url);
  const id = `x\n2026-12-06T00:00:00.000000Z ${FORGED}\r\n`;
  assert.equal((await client.request({ id, requestType: TYPES.echo, payload: 1 })).ok, true);
  await worker.next();
  client.cancel(id);
  await waitUntil(() => host.logs().some((l) => l.includes('request cancelled by the client')) || undefined, 5000, 'the cancel log line');
  // Refused: an unknown type whose name holds a line break (logged at debug).
  const refused = await client.request({ id: 'y', requestType: `nope\n${FORGED}`, payload: 1 });
  assert.equal(refused.ok, false);
  await waitUntil(() => host.logs().some((l) => l.includes('request refused')) || undefined, 5000, 'the refusal log line');
  const forged = host.logs().filter((l) => l.startsWith(FORGED) || /^\S+Z\s+ERROR taskgate_host: forged/.test(l) || l.startsWith('ERROR taskgate_host: forged'));
  assert.deepEqual(forged, [], 'no log line begins with the client\'s text');
  const carrying = host.logs().filter((l) => l.includes('forged line from a client'));
  assert.ok(carrying.length >= 2, `the client's text is logged, escaped, inside the host's own lines:\n${carrying.join('\n')}`);
  for (const line of carrying) assert.match(line, /\\n/, line);
});
