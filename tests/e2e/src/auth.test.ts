/**
 * Authentication and authorization through the real host (protocol §1 "Authentication",
 * §3.9 of docs/protocol.md): `[auth] mode` none / static / jwt, `connect_error`
 * "unauthorized" for a refused handshake, the `x-identity` header workers receive,
 * FORBIDDEN for request types whose roles the identity lacks — and that no token ever
 * reaches the host's log, even at TASKGATE_LOG=trace.
 */

import assert from 'node:assert/strict';
import { createHash, createHmac, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

import {
  assertAccepted,
  assertRefused,
  connect,
  connectPolling,
  connectRefusal,
  copyPluginsDir,
  e2e,
  FakeWorker,
  type Host,
  pluginsToml,
  runHostCli,
  startHost,
  TEST_PLUGINS_DIR,
  type TestContext,
  TYPES,
  uniqueId,
} from './harness.js';

const ALICE_TOKEN = `alice-${'a1'.repeat(16)}`;
const BOB_TOKEN = `bob-${'b2'.repeat(16)}`;
const WRONG_TOKENS = [`mallory-${'m3'.repeat(16)}`, `${ALICE_TOKEN}x`, ALICE_TOKEN.toUpperCase(), 'x'.repeat(10_000)];

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** A tokens file: alice's token in plain text, bob's only as its SHA-256. */
async function tokensFile(ctx: TestContext, extra = ''): Promise<string> {
  const file = path.join(await ctx.tmpDir(), 'tokens.toml');
  await writeFile(
    file,
    `[[tokens]]\ntoken = "${ALICE_TOKEN}"\nsubject = "alice"\nroles = ["admin"]\n\n` +
      `[[tokens]]\ntoken_sha256 = "${sha256(BOB_TOKEN)}"\nsubject = "bob"\n${extra}`,
  );
  return file;
}

/** Sends one echo request and returns the `x-identity` header the worker received. */
async function identitySeenByWorker(ctx: TestContext, host: Host, worker: FakeWorker, auth?: Record<string, unknown>) {
  const client = await connect(ctx, host.url, { auth });
  assertAccepted(await client.request({ id: uniqueId(), requestType: TYPES.echo, payload: 1 }));
  const received = await worker.next();
  await worker.result(received, 1);
  worker.ack(received);
  client.close();
  return received.headers['x-identity'];
}

const base64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

type Alg = 'HS256' | 'RS256' | 'ES256';

/** A JWT signed with node's crypto (no JWT library: the host must accept standard tokens). */
function jwt(alg: Alg | 'none', claims: Record<string, unknown>, key?: KeyObject | string): string {
  const head = `${base64url(JSON.stringify({ alg, typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  if (alg === 'none') return `${head}.`;
  let signature: Buffer;
  if (alg === 'HS256') signature = createHmac('sha256', key as string).update(head).digest();
  else if (alg === 'RS256') signature = cryptoSign('sha256', Buffer.from(head), key as KeyObject);
  else signature = cryptoSign('sha256', Buffer.from(head), { key: key as KeyObject, dsaEncoding: 'ieee-p1363' });
  return `${head}.${base64url(signature)}`;
}

const ISSUER = 'https://id.example.test/';
const AUDIENCE = 'taskgate-e2e';
const now = () => Math.floor(Date.now() / 1000);

function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { sub: 'carol', iss: ISSUER, aud: AUDIENCE, exp: now() + 600, nbf: now() - 5, roles: ['ops'], ...extra };
}

function assertNoSecretsInLog(host: Host, secrets: string[]): void {
  const log = host.logs().join('\n');
  for (const secret of secrets) {
    // The first 24 characters are enough to find a token even if a line cut it.
    const probe = secret.slice(0, 24);
    assert.ok(!log.includes(probe), `the host's log contains a token (${probe}…)`);
  }
}

e2e('without [auth] the host warns loudly that authentication is off and serves anonymous clients without x-identity', async (ctx) => {
  const host = await startHost(ctx);
  await host.proc.waitForLine(/AUTHENTICATION IS OFF/, 5000);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  // Whatever token is sent, the connection is anonymous.
  assert.equal(await identitySeenByWorker(ctx, host, worker, { token: 'ignored' }), undefined);
  assert.equal(await identitySeenByWorker(ctx, host, worker), undefined);
});

e2e('static tokens: a listed token connects and its identity reaches the worker as x-identity; anything else gets connect_error "unauthorized"; no token reaches the log (TASKGATE_LOG=trace)', async (ctx) => {
  const tokens = await tokensFile(ctx);
  const host = await startHost(ctx, {
    sections: { auth: { mode: 'static', tokens_file: tokens } },
    env: { TASKGATE_LOG: 'trace' },
  });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);

  const alice = JSON.parse(String(await identitySeenByWorker(ctx, host, worker, { token: ALICE_TOKEN })));
  assert.deepEqual(alice, { subject: 'alice', roles: ['admin'] });
  const bob = JSON.parse(String(await identitySeenByWorker(ctx, host, worker, { token: BOB_TOKEN })));
  assert.deepEqual(bob, { subject: 'bob', roles: [] });

  const refused: Array<Record<string, unknown> | undefined> = [
    undefined,
    {},
    { token: '' },
    { token: 42 },
    { token: [ALICE_TOKEN] },
    { Token: ALICE_TOKEN },
    ...WRONG_TOKENS.map((token) => ({ token })),
  ];
  for (const auth of refused) {
    assert.equal(await connectRefusal(ctx, host.url, { auth }), 'unauthorized', `auth ${JSON.stringify(auth)?.slice(0, 60)}`);
  }
  // Long-polling is checked the same way.
  assert.equal(await connectRefusal(ctx, host.url, { auth: { token: WRONG_TOKENS[0] }, transport: 'polling' }), 'unauthorized');
  const polling = await connectPolling(ctx, host.url, { auth: { token: ALICE_TOKEN } });
  assertAccepted(await polling.request({ id: uniqueId(), requestType: TYPES.echo, payload: 2 }));
  const r = await worker.next();
  await worker.result(r, 2);

  // A refused handshake leaves nothing in the gateway: only the 3 accepted clients ever connected.
  const refusals = host.logs().filter((l) => l.includes('connection refused: unauthorized')).length;
  assert.equal(refusals, refused.length + 1, 'one log line per refused handshake');
  assert.equal(host.logs().filter((l) => l.includes('client connected')).length, 3);
  assertNoSecretsInLog(host, [ALICE_TOKEN, BOB_TOKEN, ...WRONG_TOKENS]);
  // The log is really at trace level (so the check above means something).
  assert.ok(host.logs().some((l) => /TRACE/.test(l)), 'trace events are logged');
});

e2e('static tokens from an environment variable', async (ctx) => {
  const host = await startHost(ctx, {
    sections: { auth: { mode: 'static', tokens_env: 'E2E_TASKGATE_TOKENS' } },
    env: { E2E_TASKGATE_TOKENS: `tokens = [{ token = "${ALICE_TOKEN}", subject = "env-alice", roles = ["a", "b"] }]` },
  });
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);
  const seen = JSON.parse(String(await identitySeenByWorker(ctx, host, worker, { token: ALICE_TOKEN })));
  assert.deepEqual(seen, { subject: 'env-alice', roles: ['a', 'b'] });
  assert.equal(await connectRefusal(ctx, host.url, { auth: { token: BOB_TOKEN } }), 'unauthorized');
});

async function jwtHost(ctx: TestContext, alg: Alg, key: string) {
  const dir = await ctx.tmpDir();
  const auth: Record<string, unknown> = { mode: 'jwt', algorithm: alg, issuer: ISSUER, audience: AUDIENCE, leeway_secs: 5 };
  const env: Record<string, string> = {};
  if (alg === 'HS256') {
    auth.secret_env = 'E2E_JWT_SECRET';
    env.E2E_JWT_SECRET = key;
  } else {
    auth.public_key_file = path.join(dir, 'public.pem');
    await writeFile(auth.public_key_file as string, key);
  }
  return startHost(ctx, { sections: { auth }, env: { ...env, TASKGATE_LOG: 'trace' } });
}

e2e('JWT RS256: a valid token connects with its subject and roles; expired, not yet valid, foreign issuer or audience, missing claims, forged and unsigned tokens are refused', async (ctx) => {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const host = await jwtHost(ctx, 'RS256', publicKey.export({ type: 'spki', format: 'pem' }).toString());
  await host.proc.waitForLine(/clients must authenticate/, 5000);
  const worker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);

  const good = jwt('RS256', claims(), privateKey);
  const seen = JSON.parse(String(await identitySeenByWorker(ctx, host, worker, { token: good })));
  assert.deepEqual(seen, { subject: 'carol', roles: ['ops'] });

  const withoutSub = claims();
  delete withoutSub.sub;
  const bad: Record<string, string> = {
    expired: jwt('RS256', claims({ exp: now() - 120 }), privateKey),
    'not yet valid': jwt('RS256', claims({ nbf: now() + 600 }), privateKey),
    'foreign issuer': jwt('RS256', claims({ iss: 'https://evil.example/' }), privateKey),
    'foreign audience': jwt('RS256', claims({ aud: 'another-service' }), privateKey),
    'no subject': jwt('RS256', withoutSub, privateKey),
    'another key': jwt('RS256', claims(), other.privateKey),
    'alg none': jwt('none', claims()),
    // The public key used as an HMAC secret (algorithm confusion).
    'HS256 with the public key': jwt('HS256', claims(), publicKey.export({ type: 'spki', format: 'pem' }).toString()),
    tampered: `${good.split('.')[0]}.${base64url(JSON.stringify(claims({ roles: ['admin'] })))}.${good.split('.')[2]}`,
    garbage: 'not.a.jwt',
  };
  for (const [what, token] of Object.entries(bad)) {
    assert.equal(await connectRefusal(ctx, host.url, { auth: { token } }), 'unauthorized', what);
  }
  assertNoSecretsInLog(host, [good, ...Object.values(bad).filter((t) => t.length > 24)]);
});

e2e('JWT ES256 and HS256: valid tokens connect, tokens signed otherwise are refused', async (ctx) => {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const esHost = await jwtHost(ctx, 'ES256', ec.publicKey.export({ type: 'spki', format: 'pem' }).toString());
  const esWorker = await FakeWorker.start(ctx, esHost.queues[TYPES.echo]);
  const es = jwt('ES256', claims({ sub: 'dave', roles: ['x', 'y'] }), ec.privateKey);
  assert.deepEqual(JSON.parse(String(await identitySeenByWorker(ctx, esHost, esWorker, { token: es }))), {
    subject: 'dave',
    roles: ['x', 'y'],
  });
  const otherEc = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  assert.equal(await connectRefusal(ctx, esHost.url, { auth: { token: jwt('ES256', claims(), otherEc.privateKey) } }), 'unauthorized');
  // The next host serves the same queue: this worker must not take its requests.
  await esWorker.close();
  await esHost.stop();

  const secret = `e2e-hmac-secret-${'s'.repeat(32)}`;
  const hsHost = await jwtHost(ctx, 'HS256', secret);
  const hsWorker = await FakeWorker.start(ctx, hsHost.queues[TYPES.echo]);
  const hs = jwt('HS256', claims({ sub: 'erin', roles: 'read write' }), secret);
  assert.deepEqual(JSON.parse(String(await identitySeenByWorker(ctx, hsHost, hsWorker, { token: hs }))), {
    subject: 'erin',
    roles: ['read', 'write'],
  });
  assert.equal(await connectRefusal(ctx, hsHost.url, { auth: { token: jwt('HS256', claims(), `${secret}!`) } }), 'unauthorized');
  assertNoSecretsInLog(hsHost, [secret, hs]);
});

e2e('a host whose [auth] configuration is unusable does not start, and says why without the secret', async (ctx) => {
  const dir = await ctx.tmpDir();
  const cases: Array<[Record<string, unknown>, Record<string, string>, RegExp]> = [
    [{ mode: 'jwt', algorithm: 'HS256', issuer: ISSUER, audience: AUDIENCE, secret_env: 'E2E_SHORT' }, { E2E_SHORT: 'short-secret-xyz' }, /shorter than 32 bytes/],
    [{ mode: 'jwt', algorithm: 'RS256', audience: AUDIENCE, public_key_file: 'k.pem' }, {}, /needs `issuer`/],
    [{ mode: 'static', tokens_file: path.join(dir, 'missing.toml') }, {}, /cannot read static tokens/],
    [{ mode: 'static', tokens_env: 'E2E_UNSET_TOKENS' }, {}, /E2E_UNSET_TOKENS is not set/],
  ];
  for (const [auth, env, expected] of cases) {
    const { text } = pluginsToml(ctx, { sections: { auth } });
    const config = path.join(dir, `plugins-${uniqueId()}.toml`);
    await writeFile(config, text);
    Object.assign(process.env, env);
    try {
      const run = await runHostCli(ctx, ['--config', config], 20_000);
      assert.notEqual(run.code, 0, `the host started with ${JSON.stringify(auth)}`);
      assert.match(run.stderr, expected);
      assert.ok(!run.stderr.includes('short-secret-xyz'), 'the secret is not printed');
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
    }
  }
});

e2e('roles: FORBIDDEN for a type whose roles the identity lacks (the plugin\'s default or plugins.toml\'s override), never published; others pass', async (ctx) => {
  const pluginsDir = await copyPluginsDir(ctx, [path.join(TEST_PLUGINS_DIR, 'libtaskgate_fixture_guarded.so')]);
  const tokens = await tokensFile(ctx, `\n[[tokens]]\ntoken = "${'auditor-'.repeat(3)}"\nsubject = "audra"\nroles = ["admin", "auditor"]\n`);
  const queue = (t: string) => ctx.queueFor(t);
  const host = await startHost(ctx, {
    pluginsDir,
    // echo: every request type of the plugin requires "staff" (per-plugin override).
    plugins: { echo: { required_roles: ['staff'] }, countdown: false },
    sections: { auth: { mode: 'static', tokens_file: tokens } },
    // guarded: test.admin keeps its plugin's default (admin); test.audit (admin + auditor
    // by default) is opened to everyone by a per-type override.
    extraToml: [
      '[plugins.guarded]',
      'enabled = true',
      `[plugins.guarded.request_types."test.admin"]`,
      `queue = "${queue('test.admin')}"`,
      `[plugins.guarded.request_types."test.audit"]`,
      `queue = "${queue('test.audit')}"`,
      'required_roles = []',
    ].join('\n'),
    expectTypes: 4,
  });
  ctx.queues.add(queue('test.admin'));
  ctx.queues.add(queue('test.audit'));
  const adminWorker = await FakeWorker.start(ctx, queue('test.admin'));
  const auditWorker = await FakeWorker.start(ctx, queue('test.audit'));
  const echoWorker = await FakeWorker.start(ctx, host.queues[TYPES.echo]);

  const alice = await connect(ctx, host.url, { auth: { token: ALICE_TOKEN }, name: 'alice(admin)' });
  const bob = await connect(ctx, host.url, { auth: { token: BOB_TOKEN }, name: 'bob(no roles)' });
  const audra = await connect(ctx, host.url, { auth: { token: 'auditor-'.repeat(3) }, name: 'audra(admin,auditor)' });
  const call = (c: typeof alice, requestType: string) =>
    c.request({ id: uniqueId(), requestType, payload: requestType === TYPES.wordcount ? { text: 'a b' } : {} });

  const forbidden = assertRefused(await call(bob, 'test.admin'), 'FORBIDDEN', 'bob → test.admin');
  assert.match(forbidden.message, /test\.admin/);
  assertRefused(await call(bob, TYPES.echo), 'FORBIDDEN', 'bob → echo (staff)');
  assertRefused(await call(alice, TYPES.echo), 'FORBIDDEN', 'alice → echo (staff)');
  await adminWorker.expectNothing(200);
  await echoWorker.expectNothing(0);

  assertAccepted(await call(alice, 'test.admin'), 'alice → test.admin');
  assertAccepted(await call(audra, 'test.admin'), 'audra → test.admin');
  assertAccepted(await call(bob, 'test.audit'), 'bob → test.audit (opened by the override)');
  assertAccepted(await call(bob, TYPES.wordcount), 'bob → wordcount (no roles)');
  const admitted = [await adminWorker.next(), await adminWorker.next()];
  const subjects = admitted.map((r) => JSON.parse(String(r.headers['x-identity'])).subject).sort();
  assert.deepEqual(subjects, ['alice', 'audra']);
  const audit = await auditWorker.next();
  assert.deepEqual(JSON.parse(String(audit.headers['x-identity'])), { subject: 'bob', roles: [] });

  // The operator's report shows each type's roles.
  const report = await runHostCli(ctx, ['plugins', '--config', host.configPath]);
  assert.match(report.stdout, /test\.admin .*roles admin/);
  assert.match(report.stdout, /echo .*roles staff/);
  assert.doesNotMatch(report.stdout, /test\.audit .*roles/);
});
