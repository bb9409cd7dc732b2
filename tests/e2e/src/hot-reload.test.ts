/**
 * Hot reload under load, through the real host, RabbitMQ and the Rust example workers.
 *
 * The proof of issue 5's hot reload: a steady load of `echo` requests runs while the echo
 * plugin file is replaced ten times by rebuilt versions (the `echo-v2` and `echo-v3`
 * fixtures, which stamp every payload with `servedBy: "echo <version>"`, each "rebuilt" by
 * appending a few bytes so that every replacement is new content the host really loads),
 * once as a half-written copy; meanwhile `countdown` is disabled and enabled again in
 * plugins.toml (with a countdown in flight across the switch), and plugins.toml is broken
 * once, then fixed. Afterwards: every request got its correct final response (zero
 * failed, zero lost), each version served every request sent after `/readyz` reported it,
 * and the last version is the one serving (`/readyz`, `taskgate plugins`, the log, and
 * `/metrics` when the build has it).
 */

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { copyFile, mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

import {
  assertAccepted,
  assertRefused,
  connect,
  e2e,
  PLUGINS_DIR,
  pluginsToml,
  request,
  runHostCli,
  sleep,
  startHost,
  startWorkers,
  TEST_PLUGINS_DIR,
  TYPES,
  waitUntil,
  type Client,
  type Host,
  type HostOptions,
  type TestContext,
} from './harness.js';

const ECHO_FILE = 'libtaskgate_plugin_echo.so';

interface ServedPlugin {
  name: string;
  version: string;
  hash: string;
  file: string;
  requestTypes: string[];
}

const shortHash = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex').slice(0, 16);

function fixture(version: 2 | 3): Buffer {
  return readFileSync(path.join(TEST_PLUGINS_DIR, `libtaskgate_fixture_echo_v${version}.so`));
}

/** A "rebuilt" library: the same code plus a few trailing bytes the dynamic loader ignores. */
function rebuilt(library: Buffer, build: number): Buffer {
  return Buffer.concat([library, Buffer.from(`\0rebuild ${build}\0`)]);
}

async function served(host: Host): Promise<ServedPlugin[]> {
  const { body } = await host.readyz();
  return ((body as { plugins?: ServedPlugin[] })?.plugins ?? []) as ServedPlugin[];
}

async function waitForServing(host: Host, check: (plugins: ServedPlugin[]) => boolean, what: string): Promise<void> {
  await waitUntil(async () => check(await served(host)), 30_000, what, 25);
}

/** Waits for a log line matching `pattern` printed after line `since`. */
async function waitForLogAfter(host: Host, since: number, pattern: RegExp, what: string): Promise<string> {
  return waitUntil(() => host.logs().slice(since).find((l) => pattern.test(l)), 30_000, what, 25);
}

/** One load request and what became of it. */
interface Sent {
  payload: { c: number; i: number; delayMs?: number };
  sentAt: number;
  /** The echo version serving (per /readyz) when the request was sent, if known for sure. */
  expected?: string;
  outcome?: 'ok' | string;
  servedBy?: string;
}

/** Closed-loop echo load on `clients`, until `stop()`; every request is checked. */
function startLoad(clients: Client[], expectedVersion: () => string | undefined) {
  const sent: Sent[] = [];
  let running = true;
  const loops = clients.map(async (client, c) => {
    for (let i = 0; running; i++) {
      // Every fourth request is slow, so that requests are in flight across every swap.
      const payload = i % 4 === 0 ? { c, i, delayMs: 400 } : { c, i };
      const record: Sent = { payload, sentAt: Date.now(), expected: expectedVersion() };
      sent.push(record);
      try {
        const outcome = await request(
          client,
          { id: `load-${c}-${i}`, requestType: TYPES.echo, payload },
          { timeout: 30_000, ackTimeout: 30_000 },
        );
        if (!outcome.ack.ok) {
          record.outcome = `refused ${JSON.stringify(outcome.ack.error)}`;
          continue;
        }
        const data = outcome.final?.data as Record<string, unknown> | undefined;
        if (outcome.final?.type !== 'result' || !data) {
          record.outcome = `final ${JSON.stringify(outcome.final)}`;
          continue;
        }
        const { servedBy, ...rest } = data;
        record.servedBy = String(servedBy);
        if (!/^echo [23]\.0\.0$/.test(record.servedBy)) {
          record.outcome = `served by ${JSON.stringify(servedBy)}`;
        } else {
          try {
            assert.deepEqual(rest, payload);
            record.outcome = 'ok';
          } catch {
            record.outcome = `wrong result ${JSON.stringify(data)} for ${JSON.stringify(payload)}`;
          }
        }
      } catch (error) {
        record.outcome = `lost: ${(error as Error).message.split('\n')[0]}`;
      }
    }
  });
  return {
    sent,
    inFlight: () => sent.filter((s) => s.outcome === undefined).length,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

function config(ctx: TestContext, dir: string, countdown: boolean): string {
  const options: HostOptions = { pluginsDir: dir, plugins: { countdown: { enabled: countdown } } };
  return pluginsToml(ctx, options).text;
}

/** Replaces plugins.toml the way editors do: write a temporary file, rename it over. */
async function saveConfig(host: Host, text: string): Promise<void> {
  const tmp = `${host.configPath}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, host.configPath);
}

e2e(
  'hot reload under load: echo replaced 10 times (once half-copied), countdown toggled, plugins.toml broken once — zero failed, zero lost, the new version serves',
  async (ctx) => {
    // A private plugins directory whose echo file starts as echo 2.0.0.
    const dir = path.join(await ctx.tmpDir(), 'plugins');
    await mkdir(dir);
    for (const f of ['libtaskgate_plugin_wordcount.so', 'libtaskgate_plugin_countdown.so']) {
      await copyFile(path.join(PLUGINS_DIR, f), path.join(dir, f));
    }
    const live = path.join(dir, ECHO_FILE);
    await writeFile(live, fixture(2));
    const host = await startHost(ctx, { pluginsDir: dir });
    await startWorkers(ctx, host.queues, { prefetch: 64 });
    await waitForServing(host, (p) => p.some((e) => e.name === 'echo' && e.version === '2.0.0'), 'echo 2.0.0 at start');

    // What /readyz says serves echo, as the load sees it when it sends.
    let confirmed: string | undefined = 'echo 2.0.0';
    const clients = await Promise.all([0, 1, 2, 3].map(() => connect(ctx, host.url)));
    const load = startLoad(clients, () => confirmed);
    const countdownClient = await connect(ctx, host.url);
    const rssBefore = rssKb(host);
    const inFlightAtSwaps: number[] = [];
    let reloadLines = 0;
    let last: Buffer = Buffer.alloc(0);
    let lastSwapConfirmedAt = 0;

    for (let build = 1; build <= 10; build++) {
      await sleep(400);
      const version = build % 2 === 1 ? 3 : 2;
      const bytes = rebuilt(fixture(version), build);
      const since = host.logs().length;
      confirmed = undefined; // from the write until /readyz confirms, either version may serve
      inFlightAtSwaps.push(load.inFlight());
      if (build === 5) {
        // Half a copy, written in place: refused with one line, the old version keeps serving.
        await writeFile(live, bytes.subarray(0, bytes.length / 2));
        const refusal = await waitForLogAfter(host, since, /plugin file refused/, 'the refusal of the half-copied file');
        assert.match(refusal, new RegExp(`${ECHO_FILE}: not a loadable library: `), refusal);
        assert.match(refusal, /kept_version=2\.0\.0/, refusal);
        const echo = (await served(host)).find((p) => p.name === 'echo');
        assert.equal(echo?.hash, shortHash(last), 'the version before the broken copy still serves');
        confirmed = 'echo 2.0.0';
        await sleep(400);
        confirmed = undefined;
        await writeFile(live, bytes); // the rest of the copy arrives
      } else if (build % 2 === 0) {
        await writeFile(live, bytes); // in place, as `cp` writes
      } else {
        await writeFile(`${live}.tmp.${build}`, bytes); // the careful way: copy, then rename
        await rename(`${live}.tmp.${build}`, live);
      }
      await waitForServing(
        host,
        (p) => p.some((e) => e.name === 'echo' && e.hash === shortHash(bytes) && e.version === `${version}.0.0`),
        `build ${build} (echo ${version}.0.0, ${shortHash(bytes)}) to serve`,
      );
      confirmed = `echo ${version}.0.0`;
      lastSwapConfirmedAt = Date.now();
      reloadLines += 1;
      last = bytes;

      if (build === 3) {
        // Disable countdown with a countdown in flight: it completes; new ones are refused.
        const id = 'countdown-across-disable';
        const pending = request(countdownClient, { id, requestType: TYPES.countdown, payload: { from: 10, intervalMs: 150 } }, { timeout: 30_000 });
        await countdownClient.waitFor(() => countdownClient.responses(id).length > 0, 20_000, 'the first countdown chunk');
        await saveConfig(host, config(ctx, dir, false));
        await waitForServing(host, (p) => !p.some((e) => e.name === 'countdown'), 'countdown to be disabled');
        const refused = await countdownClient.request({ id: 'countdown-after-disable', requestType: TYPES.countdown, payload: { from: 1 } });
        assertRefused(refused, 'UNKNOWN_REQUEST_TYPE', 'a countdown after disabling');
        const { ack, responses, final } = await pending;
        assertAccepted(ack);
        assert.deepEqual(final?.data, { done: true }, 'the countdown in flight completed normally');
        assert.equal(responses.length, 11, '10 chunks and the result');
      }
      if (build === 6) {
        await saveConfig(host, config(ctx, dir, true));
        await waitForServing(host, (p) => p.some((e) => e.name === 'countdown'), 'countdown enabled again');
        const { ack, final } = await request(countdownClient, { id: 'countdown-after-enable', requestType: TYPES.countdown, payload: { from: 2, intervalMs: 10 } }, { timeout: 30_000 });
        assertAccepted(ack);
        assert.deepEqual(final?.data, { done: true });
      }
      if (build === 8) {
        // A broken plugins.toml: one error line, everything keeps serving; fixed, it applies.
        const good = config(ctx, dir, true);
        const before = host.logs().length;
        await saveConfig(host, `${good}\n[plugins.wordcount\nenabled = true\n`);
        const line = await waitForLogAfter(host, before, /plugins\.toml not applied/, 'the rejection of the broken plugins.toml');
        assert.match(line, /ERROR/);
        assert.match(line, /TOML parse error at line \d+/, line);
        const plugins = (await served(host)).map((p) => p.name).sort();
        assert.deepEqual(plugins, ['countdown', 'echo', 'wordcount'], 'the previous settings stay');
        await sleep(500);
        await saveConfig(host, config(ctx, dir, false));
        await waitForLogAfter(host, before, /plugins\.toml applied/, 'the fixed plugins.toml to apply');
        await waitForServing(host, (p) => !p.some((e) => e.name === 'countdown'), 'the fixed plugins.toml (countdown off)');
        await saveConfig(host, config(ctx, dir, true));
        await waitForServing(host, (p) => p.some((e) => e.name === 'countdown'), 'countdown back');
      }
    }

    // The same bytes written again are not a new version: nothing is reloaded. The rescan
    // that applies the plugins.toml saved afterwards has seen the rewritten file.
    const since = host.logs().length;
    await writeFile(live, last);
    await saveConfig(host, config(ctx, dir, false));
    await waitForServing(host, (p) => !p.some((e) => e.name === 'countdown'), 'the rescan after rewriting the same bytes');
    assert.equal(host.logs().slice(since).filter((l) => /plugin reloaded/.test(l)).length, 0, 'unchanged content is not reloaded');

    await sleep(1000);
    await load.stop();
    const rssAfter = rssKb(host);

    // Every request answered correctly.
    const failed = load.sent.filter((s) => s.outcome !== 'ok');
    const byVersion = new Map<string, number>();
    for (const s of load.sent) byVersion.set(s.servedBy ?? '-', (byVersion.get(s.servedBy ?? '-') ?? 0) + 1);
    const lost = failed.filter((s) => s.outcome?.startsWith('lost'));
    console.log(
      `# hot reload: ${load.sent.length} echo requests, ${load.sent.length - failed.length} correct, ${failed.length} failed, ` +
        `${lost.length} lost; served by ${[...byVersion].map(([v, n]) => `${v}: ${n}`).join(', ')}; ` +
        `in flight at each swap: ${inFlightAtSwaps.join(' ')}`,
    );
    assert.deepEqual(failed.slice(0, 5), [], `${failed.length} requests failed`);
    assert.ok(load.sent.length >= 100, `a steady load (${load.sent.length} requests)`);
    assert.ok(inFlightAtSwaps.some((n) => n > 0), 'requests were in flight during swaps');

    // Requests sent after /readyz confirmed a version were served by that version.
    const mismatched = load.sent.filter((s) => s.expected !== undefined && s.servedBy !== s.expected);
    assert.deepEqual(mismatched.slice(0, 5), [], `${mismatched.length} requests served by another version than the confirmed one`);
    assert.ok(load.sent.filter((s) => s.expected !== undefined).length >= 50, 'enough requests checked against the confirmed version');

    // The last version serves, and says so everywhere.
    const echo = (await served(host)).find((p) => p.name === 'echo');
    assert.deepEqual(
      { version: echo?.version, hash: echo?.hash },
      { version: '2.0.0', hash: shortHash(last) },
      '/readyz names the last version',
    );
    const afterLastSwap = load.sent.filter((s) => s.sentAt > lastSwapConfirmedAt);
    assert.ok(afterLastSwap.length >= 8, `requests sent after the last swap: ${afterLastSwap.length}`);
    assert.deepEqual(
      afterLastSwap.filter((s) => s.servedBy !== 'echo 2.0.0').map((s) => `${s.payload.c}/${s.payload.i} ${s.servedBy}`),
      [],
      'every request sent after the last swap was served by echo 2.0.0',
    );
    const reloads = host.logs().filter((l) => /plugin reloaded/.test(l) && /plugin=echo/.test(l));
    assert.equal(reloads.length, reloadLines, `one "plugin reloaded" line per replacement:\n${reloads.join('\n')}`);
    assert.match(reloads.at(-1)!, new RegExp(`version=2\\.0\\.0 hash=${shortHash(last)}`));
    const cli = await runHostCli(ctx, ['plugins', '--config', host.configPath]);
    assert.match(cli.stdout, new RegExp(`${ECHO_FILE}: plugin \`echo\` 2\\.0\\.0 \\(sha256 ${shortHash(last)}\\) — enabled`), cli.stdout);
    const metrics = await fetch(`${host.url}/metrics`);
    if (metrics.status === 200) {
      const text = await metrics.text();
      assert.match(text, new RegExp(`taskgate_plugin_info\\{[^}]*plugin="echo"[^}]*\\} 1`), 'plugin info metric');
      assert.match(text, new RegExp(`hash="${shortHash(last)}"`), 'the serving hash in the metrics');
      assert.match(text, /taskgate_plugin_loads_total\{outcome="reloaded"\} 1[0-9]/, 'ten or more reloads counted');
    } else {
      ctx.note(`no /metrics endpoint in this build (HTTP ${metrics.status}); metrics not checked here`);
    }
    console.log(
      `# hot reload memory: host RSS ${rssBefore} KiB before the swaps, ${rssAfter} KiB after 10 new versions ` +
        `(${Math.round((rssAfter - rssBefore) / 10)} KiB per version); plugin mappings now ${pluginMappings(host)}`,
    );
  },
  { timeout: 240_000 },
);

function rssKb(host: Host): number {
  try {
    const status = readFileSync(`/proc/${host.proc.child.pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** The host's mappings of private plugin copies: count of libraries, virtual and resident KiB. */
function pluginMappings(host: Host): string {
  try {
    const smaps = readFileSync(`/proc/${host.proc.child.pid}/smaps`, 'utf8');
    let size = 0;
    let rss = 0;
    let inside = false;
    const libraries = new Set<string>();
    for (const line of smaps.split('\n')) {
      const header = /^[0-9a-f]+-[0-9a-f]+ /.exec(line);
      if (header) {
        const file = /\/taskgate-plugins-[^/]+\/(\S+)/.exec(line)?.[1];
        inside = file !== undefined;
        if (file) libraries.add(file);
        continue;
      }
      if (!inside) continue;
      const m = /^(Size|Rss):\s+(\d+) kB/.exec(line);
      if (m?.[1] === 'Size') size += Number(m[2]);
      if (m?.[1] === 'Rss') rss += Number(m[2]);
    }
    return `${libraries.size} libraries, ${size} KiB virtual, ${rss} KiB resident`;
  } catch (error) {
    return `unknown (${(error as Error).message})`;
  }
}
