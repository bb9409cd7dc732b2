/**
 * The operator console (issue 15) in Debian's chromium, headless, through playwright-core:
 * two hosts with `[auth] mode = "static"` and the console on. An identity without the role
 * is refused; an admin sees both hosts and the request type's queue in red while it has no
 * workers, and no longer once a worker consumes it. The screenshot is saved under
 * tests/browser/artifacts/console.png — look at it: it must read at a glance on a laptop.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import amqp from 'amqplib';
import { chromium } from 'playwright-core';

import { AMQP_URL, HOST_BIN, PLUGINS_DIR, Proc, REPO_ROOT, WORDCOUNT } from './stack.js';

const ARTIFACTS = path.join(REPO_ROOT, 'tests/browser/artifacts');
const ADMIN = 'console-admin-token-0123456789';
const USER = 'console-user-token-0123456789';

function chromiumPath(): string {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  return execFileSync('which', ['chromium'], { encoding: 'utf8' }).trim();
}

test('console: refused without the role; an admin sees both hosts and a queue turn red without workers', async () => {
  const runId = randomBytes(5).toString('hex');
  const queue = `browser.${runId}.${WORDCOUNT}`;
  const dir = await mkdtemp(path.join(tmpdir(), `taskgate-console-${runId}-`));
  const tokens = path.join(dir, 'tokens.toml');
  await writeFile(
    tokens,
    `[[tokens]]\ntoken = "${ADMIN}"\nsubject = "alice"\nroles = ["admin"]\n\n` +
      `[[tokens]]\ntoken = "${USER}"\nsubject = "bob"\nroles = ["reader"]\n`,
  );
  const config = path.join(dir, 'plugins.toml');
  await writeFile(
    config,
    [
      '[host]',
      'listen = "127.0.0.1:0"',
      `amqp_url = ${JSON.stringify(AMQP_URL)}`,
      `plugins_dir = ${JSON.stringify(PLUGINS_DIR)}`,
      '[auth]',
      'mode = "static"',
      `tokens_file = ${JSON.stringify(tokens)}`,
      '[console]',
      'enabled = true',
      '[plugins.wordcount]',
      'enabled = true',
      `queue = ${JSON.stringify(queue)}`,
      '',
    ].join('\n'),
  );
  const hosts = [new Proc('hostA', HOST_BIN, ['--config', config]), new Proc('hostB', HOST_BIN, ['--config', config])];
  const browser = await chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox'] });
  const connection = await amqp.connect(AMQP_URL);
  try {
    const urls = await Promise.all(hosts.map(async (h) => `http://${(await h.waitForLine(/listening on (\S+)/, 30_000))[1]}`));
    const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // The refusals before the right token are the test's own doing.
    page.on('console', (m) => m.type() === 'error' && !/status of 40[13]/.test(m.text()) && errors.push(m.text()));

    await page.goto(`${urls[0]}/console`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 20_000 });
    await page.fill('#token', USER);
    await page.click('#login button[type=submit]');
    await page.getByText('needs the role `admin`').waitFor({ timeout: 20_000 });

    await page.fill('#token', ADMIN);
    await page.click('#login button[type=submit]');
    await page.locator('#login').waitFor({ state: 'hidden', timeout: 20_000 });
    // Both hosts (heartbeats every 2 s), the request type, and its queue red: no workers.
    await page.waitForFunction(() => document.querySelectorAll('#hosts tr').length === 3, undefined, { timeout: 20_000 });
    await page.locator('#types').getByText(WORDCOUNT, { exact: true }).waitFor({ timeout: 20_000 });
    const row = page.locator('#queues tr', { hasText: queue });
    // (A first look may come before the host has declared the queue.)
    await page.locator('#queues tr.alarm', { hasText: 'no workers' }).waitFor({ timeout: 20_000 });
    assert.match(await row.innerText(), /no workers/);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'console.png') });

    // A worker consumes the queue: the row is no longer red within a look or two (5 s each).
    const channel = await connection.createChannel();
    await channel.consume(queue, () => undefined);
    await page.locator('#queues tr.alarm', { hasText: queue }).waitFor({ state: 'detached', timeout: 20_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-with-worker.png') });
    await channel.close();
    await row.and(page.locator('.alarm')).waitFor({ timeout: 20_000 });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    const channel = await connection.createChannel().catch(() => undefined);
    await channel?.deleteQueue(queue).catch(() => undefined);
    await connection.close().catch(() => undefined);
    await Promise.all(hosts.map((h) => h.stop()));
    await rm(dir, { recursive: true, force: true });
  }
});
