/**
 * DNS rebinding (README "Security"): a page on `attacker.example` whose name is re-pointed at
 * 127.0.0.1 sends `Host: attacker.example` and an `Origin` that matches it, so an Origin check
 * alone lets it in. The host answers only to the names it is meant to have — IP literals,
 * `localhost` and `*.localhost`, and `[host] allowed_hosts` — and refuses every other `Host`
 * with 421 on every route (Socket.IO over both transports, health, readiness, metrics, static
 * files) before anything else runs.
 */

import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';

import { e2e, pluginsToml, runHostCli, startHost, uniqueId, waitUntil } from './harness.js';
import { upgradeStatus } from './raw.js';

/** A plain HTTP GET with an explicit `Host` header (fetch does not let a caller choose it). */
function get(url: string, path: string, hostHeader: string, origin?: string): Promise<{ status: number; body: string }> {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path,
        headers: { Host: hostHeader, ...(origin ? { Origin: origin } : {}) },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const ROUTES = ['/healthz', '/readyz', '/metrics', '/socket.io/?EIO=4&transport=polling', '/', '/index.html'];

e2e('DNS rebinding: a Host naming another site gets 421 on every route, even with a matching Origin', async (ctx) => {
  const host = await startHost(ctx, { hostSettings: { static_dir: await ctx.tmpDir() } });
  const port = new URL(host.url).port;
  const rebound = `attacker.example:${port}`;
  for (const route of ROUTES) {
    const r = await get(host.url, route, rebound, `http://${rebound}`);
    assert.equal(r.status, 421, `${route} with Host ${rebound}`);
    assert.match(r.body, /allowed_hosts/, `${route}: the refusal says what to configure`);
  }
  assert.equal(await upgradeStatus(host.url, { Host: rebound, Origin: `http://${rebound}` }), 421, 'WebSocket upgrade');
  // The names a local host is meant to have: IP literals, localhost and *.localhost.
  for (const name of [`127.0.0.1:${port}`, `localhost:${port}`, `app.localhost:${port}`, `LOCALHOST.:${port}`, `[::1]:${port}`, '127.0.0.1']) {
    assert.equal((await get(host.url, '/healthz', name)).status, 200, `Host ${name}`);
  }
  const own = `http://localhost:${port}`;
  assert.equal(await upgradeStatus(host.url, { Host: `localhost:${port}`, Origin: own }), 101, 'the host\'s own origin by name');
  assert.equal((await get(host.url, '/socket.io/?EIO=4&transport=polling', `localhost:${port}`, own)).status, 200);
  // Refusals are counted, never echoed into the log verbatim at a level that floods it.
  await waitUntil(
    async () => {
      const m = await get(host.url, '/metrics', `127.0.0.1:${port}`);
      return /taskgate_connections_refused_total\{reason="host"\} ([1-9]\d*)/.test(m.body) || undefined;
    },
    5000,
    'the refusals to be counted',
  );
});

e2e('DNS rebinding: [host] allowed_hosts adds names (exact, or ".example.test" for a domain and its subdomains); "*" turns the check off', async (ctx) => {
  const host = await startHost(ctx, { hostSettings: { allowed_hosts: ['taskgate.example.test', '.apps.example.test'] } });
  const port = new URL(host.url).port;
  for (const name of ['taskgate.example.test', `taskgate.example.test:${port}`, 'apps.example.test', `a.b.apps.example.test:${port}`, 'TaskGate.Example.Test']) {
    assert.equal((await get(host.url, '/healthz', name)).status, 200, `Host ${name}`);
  }
  for (const name of ['example.test', 'xtaskgate.example.test', 'evilapps.example.test', 'taskgate.example.test.evil.example']) {
    assert.equal((await get(host.url, '/healthz', name)).status, 421, `Host ${name}`);
  }
  await host.stop();

  const any = await startHost(ctx, { hostSettings: { allowed_hosts: ['*'] } });
  await any.proc.waitForLine(/answers to any Host name/, 5000);
  assert.equal((await get(any.url, '/healthz', 'whatever.example')).status, 200);
});

e2e('DNS rebinding: a malformed [host] allowed_hosts entry stops the host with a message naming it', async (ctx) => {
  const dir = await ctx.tmpDir();
  for (const bad of ['https://app.example.test', 'app.example.test/path', 'user@app.example.test', '', 'a b']) {
    const { text } = pluginsToml(ctx, { hostSettings: { allowed_hosts: [bad] } });
    const config = path.join(dir, `plugins-${uniqueId()}.toml`);
    await writeFile(config, text);
    const run = await runHostCli(ctx, ['--config', config], 20_000);
    assert.notEqual(run.code, 0, `the host started with allowed_hosts = [${JSON.stringify(bad)}]`);
    assert.match(run.stderr, /allowed_hosts: `.*` is not a host name/, `${JSON.stringify(bad)}: ${run.stderr}`);
  }
});
