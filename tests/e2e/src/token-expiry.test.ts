/**
 * A connection ends with its token (issue 20 #9, docs/protocol.md §3.9): a connection that
 * authenticated with a JSON Web Token is closed at the token's `exp` (plus the host's leeway, 0 s
 * here) — first the event `token_expired`, then a Socket.IO DISCONNECT — on both transports; the
 * same token is refused afterwards. The TypeScript client, given an `auth` callback, reconnects by
 * itself with a fresh token, and a request of its session that spanned the expiry is resumed and
 * ends normally (the owner is the subject, so a new token of the same subject resumes it).
 */

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';

import { createClient } from '../../../client/src/index.js';
import { connect, connectPolling, connectRefusal, e2e, FakeWorker, startHost, TYPES, uniqueId, waitUntil, withTimeout, type TestContext } from './harness.js';

const SECRET = 'an-hmac-secret-for-the-expiry-test-0123456789';
const ISSUER = 'https://id.example.test/';
const AUDIENCE = 'taskgate-e2e';

const base64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

/** An HS256 JWT for `sub` that expires `lifetimeSecs` from now (whole seconds, as JWTs say). */
function token(sub: string, lifetimeSecs: number): { token: string; exp: number } {
  const exp = Math.floor(Date.now() / 1000) + lifetimeSecs;
  const claims = { sub, iss: ISSUER, aud: AUDIENCE, exp, roles: [] };
  const head = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  return { token: `${head}.${base64url(createHmac('sha256', SECRET).update(head).digest())}`, exp };
}

async function jwtHost(ctx: TestContext) {
  return startHost(ctx, {
    sections: {
      auth: { mode: 'jwt', algorithm: 'HS256', issuer: ISSUER, audience: AUDIENCE, leeway_secs: 0, secret_env: 'E2E_JWT_SECRET' },
      resume: { window: '20s' },
    },
    env: { E2E_JWT_SECRET: SECRET },
  });
}

e2e('a JWT connection is closed at its exp, token_expired first, over WebSocket and long-polling; the same token is refused after', async (ctx) => {
  const host = await jwtHost(ctx);
  for (const [transport, open] of [
    ['websocket', connect],
    ['polling', connectPolling],
  ] as const) {
    const { token: jwt, exp } = token('alice', 2);
    const client = await open(ctx, host.url, { auth: { token: jwt } });
    const seen: Array<{ what: string; at: number; detail?: unknown }> = [];
    client.socket.on('token_expired', (body: unknown) => seen.push({ what: 'token_expired', at: Date.now(), detail: body }));
    client.socket.on('disconnect', (reason: string) => seen.push({ what: 'disconnect', at: Date.now(), detail: reason }));
    await waitUntil(() => seen.some((s) => s.what === 'disconnect'), 6000, `${transport}: the host closes the connection`);
    assert.deepEqual(
      seen.map((s) => s.what),
      ['token_expired', 'disconnect'],
      `${transport}: token_expired, then the disconnect`,
    );
    assert.equal(seen[1]!.detail, 'io server disconnect', `${transport}: a server-side disconnect`);
    assert.match(String((seen[0]!.detail as { message?: unknown }).message), /expired/);
    assert.ok(seen[1]!.at >= exp * 1000 - 100, `${transport}: not before exp (${seen[1]!.at - exp * 1000} ms)`);
    assert.ok(seen[1]!.at <= exp * 1000 + 1500, `${transport}: at exp (${seen[1]!.at - exp * 1000} ms late)`);
    assert.equal(await connectRefusal(ctx, host.url, { auth: { token: jwt } }), 'unauthorized');
  }
  assert.ok(
    host.logs().some((l) => /its token expired/.test(l)),
    'the host logs why it closed the connection',
  );
});

e2e('the TypeScript client reconnects with a fresh token from its auth callback; a request spanning the expiry is resumed and ends', async (ctx) => {
  const host = await jwtHost(ctx);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const issued: number[] = [];
  const client = createClient({
    url: host.url,
    socketOptions: { transports: ['websocket'], reconnectionDelay: 100, reconnectionDelayMax: 300 },
    session: { storage: 'memory' },
    auth: async () => {
      const fresh = token('alice', 2);
      issued.push(fresh.exp);
      return fresh.token;
    },
  });
  ctx.onCleanup(async () => client.close());
  const states: string[] = [];
  client.subscribe((state) => states.push(state));

  const id = uniqueId('span');
  const result = client.request(TYPES.echo, { text: 'across the expiry' }, { id });
  const received = await worker.next(5000);
  // The token expires; the client reconnects with a fresh one and resumes the session.
  await waitUntil(() => issued.length >= 2 && client.connectionState === 'connected', 8000, 'a reconnect with a fresh token');
  assert.ok(states.includes('reconnecting'), `the client went through reconnecting (${states.join(', ')})`);
  await worker.result(received, { text: 'across the expiry' });
  worker.ack(received);
  assert.deepEqual(await withTimeout(result, 5000, 'the result after the resume'), { text: 'across the expiry' });
  assert.ok(new Set(issued).size >= 1 && issued.length >= 2, 'the callback was asked again');
});
