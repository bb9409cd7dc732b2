/**
 * The operator console (issue 15) in Debian's chromium, headless, through playwright-core:
 * two hosts with `[auth] mode = "static"` and the console on, a worker (amqplib, in this
 * test: it answers, fails or holds each request as its text says) and a steady load of
 * `text.wordcount` requests from socket.io clients on both hosts.
 *
 * An identity without the role is refused; an admin sees both hosts, the request type with a
 * non-zero rate, its queue with one worker, a failure whose message is markup shown as text;
 * stopping the worker turns the queue red (no workers, messages piling up); a cancel from the
 * console ends the client's held request with CANCELLED. Screenshots are saved under
 * tests/browser/artifacts/console*.png — look at them: they must read at a glance on a laptop.
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
import { io, type Socket } from 'socket.io-client';

import { AMQP_URL, HOST_BIN, PLUGINS_DIR, Proc, REPO_ROOT, WORDCOUNT } from './stack.js';

const ARTIFACTS = path.join(REPO_ROOT, 'tests/browser/artifacts');
const ADMIN = 'console-admin-token-0123456789';
const USER = 'console-user-token-0123456789';
/** A worker error whose message is markup: the page must show it as text. */
const HOSTILE = '<img src=x onerror="document.title=\'pwned\'">';

function chromiumPath(): string {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  return execFileSync('which', ['chromium'], { encoding: 'utf8' }).trim();
}

interface Response {
  id: string;
  type: string;
  error?: { code: string; message: string };
}

/** A socket.io client of a host: sends requests, collects the final responses. */
class Client {
  private finals = new Map<string, (r: Response) => void>();
  private next = 0;
  constructor(readonly socket: Socket) {
    socket.on('response', (r: Response) => {
      if (r.type === 'chunk') return;
      this.finals.get(r.id)?.(r);
      this.finals.delete(r.id);
    });
  }

  static async open(url: string): Promise<Client> {
    const socket = io(url, { transports: ['websocket'], auth: { token: USER }, reconnection: false });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', (e) => reject(e));
    });
    return new Client(socket);
  }

  /** Sends a request; resolves with its final response. */
  request(text: string): Promise<Response> {
    const id = `r${this.next++}`;
    const final = new Promise<Response>((resolve) => this.finals.set(id, resolve));
    this.socket.emit('request', { id, requestType: WORDCOUNT, payload: { text } }, () => undefined);
    return final;
  }
}

test('console: two hosts under load; refused without the role; a queue turns red without its worker; a cancel ends a request CANCELLED', async () => {
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
  const clients: Client[] = [];
  let loading = true;
  const load: Promise<unknown>[] = [];
  try {
    const urls = await Promise.all(hosts.map(async (h) => `http://${(await h.waitForLine(/listening on (\S+)/, 30_000))[1]}`));

    // The worker: "fail" → a worker error with markup in its message; "hold" → no answer
    // (the test cancels it from the console); anything else → a result.
    const channel = await connection.createConfirmChannel();
    await channel.prefetch(50);
    const held: string[] = [];
    const consume = () =>
      channel.consume(queue, (message) => {
        if (!message) return;
        const { correlationId, replyTo } = message.properties;
        const text = (JSON.parse(message.content.toString()) as { text: string }).text;
        channel.ack(message);
        if (text === 'hold') {
          held.push(correlationId);
          return;
        }
        const [type, body] = text === 'fail' ? ['error', { code: 'WORKER_ERROR', message: HOSTILE }] : ['result', { words: 1 }];
        channel.publish('', replyTo, Buffer.from(JSON.stringify(body)), { correlationId, type, contentType: 'application/json' });
      });
    // The host declares the queue once connected to RabbitMQ.
    let consumer: string | undefined;
    for (let i = 0; i < 100 && !consumer; i += 1) {
      consumer = await channel.checkQueue(queue).then(
        async () => (await consume()).consumerTag,
        () => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 200)),
      );
    }
    assert.ok(consumer, `the queue ${queue} never appeared`);

    clients.push(await Client.open(urls[0]!), await Client.open(urls[1]!));
    // A steady load on both hosts: about 20 requests/s each, one failure now and then.
    clients.forEach((client) => {
      load.push(
        (async () => {
          for (let i = 0; loading; i += 1) {
            void client.request(i % 50 === 7 ? 'fail' : 'some words');
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
        })(),
      );
    });

    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // The refusals before the right token are the test's own doing.
    page.on('console', (m) => m.type() === 'error' && !/status of 40[13]/.test(m.text()) && errors.push(m.text()));

    await page.goto(`${urls[0]}/console`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 20_000 });
    await page.fill('#token', USER);
    await page.click('#login button[type=submit]');
    await page.getByText('needs the role `admin`').waitFor({ timeout: 20_000 });
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-refused.png') });

    await page.fill('#token', ADMIN);
    await page.click('#login button[type=submit]');
    await page.locator('#login').waitFor({ state: 'hidden', timeout: 20_000 });
    // Both hosts (heartbeats every 2 s), the request type with a rate (samples every 5 s),
    // its queue with one worker, and the failures of both hosts.
    await page.waitForFunction(() => document.querySelectorAll('#hosts tr').length === 3, undefined, { timeout: 20_000 });
    const typeRow = page.locator('#types tr', { hasText: WORDCOUNT });
    await page.waitForFunction(
      (name) => {
        const row = Array.from(document.querySelectorAll('#types tr')).find((r) => r.textContent?.includes(name));
        return row !== undefined && Number(row.children[3]?.textContent) > 0;
      },
      WORDCOUNT,
      { timeout: 30_000 },
    );
    const queueRow = page.locator('#queues tr', { hasText: queue });
    await page.waitForFunction(
      (q) => {
        const row = Array.from(document.querySelectorAll('#queues tr')).find((r) => r.textContent?.includes(q));
        return row !== undefined && row.children[4]?.textContent === '1' && !row.classList.contains('alarm');
      },
      queue,
      { timeout: 20_000 },
    );
    const failures = page.locator('#failures');
    await failures.getByText(HOSTILE, { exact: true }).first().waitFor({ timeout: 20_000 });
    assert.equal(await page.locator('#failures img').count(), 0, 'a message is text, never markup');
    assert.notEqual(await page.title(), 'pwned');
    // Failures of both hosts reach this host's console (through the heartbeat).
    await page.waitForFunction(
      () => new Set(Array.from(document.querySelectorAll('#failures tr td:nth-child(2)')).map((td) => td.textContent)).size === 2,
      undefined,
      { timeout: 20_000 },
    );
    assert.match(await typeRow.innerText(), /worker_error/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'console.png'), fullPage: true });

    // A request the worker holds, cancelled from the console: its client gets CANCELLED.
    const heldBefore = held.length;
    const cancelled = clients[0]!.request('hold');
    const deadline = Date.now() + 10_000;
    while (held.length === heldBefore && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const correlationId = held[held.length - 1];
    assert.ok(correlationId, 'the worker got the held request');
    await page.fill('#correlation', correlationId);
    await page.click('#cancel button[type=submit]');
    await page.locator('#cancel-result').getByText('ended CANCELLED here').waitFor({ timeout: 10_000 });
    const outcome = await Promise.race([cancelled, new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000))]);
    assert.equal(outcome?.error?.code, 'CANCELLED', JSON.stringify(outcome));

    // The worker stops: within a look or two (5 s each) the queue is red, its messages pile up.
    await channel.cancel(consumer);
    await page.locator('#queues tr.alarm', { hasText: 'no workers' }).waitFor({ timeout: 20_000 });
    await page.waitForFunction(
      (q) => {
        const row = Array.from(document.querySelectorAll('#queues tr')).find((r) => r.textContent?.includes(q));
        return row !== undefined && Number(row.children[2]?.textContent) > 0;
      },
      queue,
      { timeout: 20_000 },
    );
    assert.match(await queueRow.innerText(), /no workers/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-no-workers.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    loading = false;
    await Promise.all(load);
    clients.forEach((c) => c.socket.close());
    await browser.close();
    const channel = await connection.createChannel().catch(() => undefined);
    await channel?.deleteQueue(queue).catch(() => undefined);
    await connection.close().catch(() => undefined);
    await Promise.all(hosts.map((h) => h.stop()));
    await rm(dir, { recursive: true, force: true });
  }
});
