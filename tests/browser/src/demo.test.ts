/**
 * The React demo (examples/react-demo) in Debian's chromium, headless, through playwright-core,
 * against the whole stack (stack.ts). What a person would do: count words, watch a countdown's
 * progress bar advance chunk by chunk, cancel one and see it stop, send an invalid payload and
 * read the server's message. Each panel's screenshot is saved under tests/browser/artifacts/.
 */

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';

import type { Browser, Page } from 'playwright-core';

import { ARTIFACTS, launchChromium, STEP_MS, waitFor } from './browser.js';
import { describeWorkers, startStack, type Stack } from './stack.js';

let stack: Stack;
let browser: Browser;
let page: Page;
/** Errors the page threw or logged: any of them fails the run. */
const pageErrors: string[] = [];

async function screenshot(t: TestContext, testId: string, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.getByTestId(testId).screenshot({ path: file });
  t.diagnostic(`screenshot: ${path.relative(process.cwd(), file)} (${file})`);
}

/** Fails with the stack's logs attached, so a failure in CI says what the host and workers did. */
async function step(t: TestContext, body: () => Promise<void>): Promise<void> {
  try {
    await body();
    assert.deepEqual(pageErrors, [], 'the page logged errors');
  } catch (error) {
    const file = path.join(ARTIFACTS, `failure-${t.name.replace(/\W+/g, '-')}.png`);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: file, fullPage: true }).catch(() => undefined);
    process.stderr.write(`failure screenshot: ${file}\n${stack.logs()}\n`);
    throw error;
  }
}

describe(`the React demo in chromium (workers: ${describeWorkers()})`, () => {
  before(async () => {
    stack = await startStack();
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 900, height: 1000 } });
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (error) => pageErrors.push(`pageerror: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') pageErrors.push(`console.error: ${message.text()}`);
    });
    await page.goto(stack.url);
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await stack?.stop();
  });

  test('the page connects and says so', async (t) => {
    await step(t, async () => {
      await page.getByTestId('connection-state').filter({ hasText: 'connected' }).waitFor();
      assert.equal(await page.getByTestId('connection-state').textContent(), 'connected');
    });
  });

  test('word count: a text in, the worker’s counts out', async (t) => {
    await step(t, async () => {
      const panel = page.getByTestId('wordcount-panel');
      await panel.getByLabel('Text to count').fill('one two three\nfour  five\n\tsix é');
      await panel.getByRole('button', { name: 'Count words' }).click();
      const result = page.getByTestId('wordcount-result');
      await result.and(page.locator('[data-status="success"]')).waitFor();
      assert.equal(await result.textContent(), '7 words, 3 lines, 31 characters');
      await screenshot(t, 'wordcount-panel', 'wordcount');
    });
  });

  test('countdown: the progress bar advances through the streamed chunks to the end', async (t) => {
    await step(t, async () => {
      const panel = page.getByTestId('countdown-panel');
      await panel.getByLabel('from').fill('12');
      await panel.getByLabel('every').fill('150');
      const status = page.getByTestId('countdown-status');
      // Record every value the progress bar shows, as the page renders it.
      await status.evaluate((el) => {
        const seen: number[] = [];
        (window as unknown as { __steps: number[] }).__steps = seen;
        new MutationObserver(() => seen.push(Number(el.getAttribute('data-steps')))).observe(el, {
          attributes: true,
          attributeFilter: ['data-steps'],
        });
      });
      await panel.getByRole('button', { name: 'Start' }).click();
      await status.and(page.locator('[data-status="pending"]')).waitFor();
      await screenshotWhen(t, async () => Number(await status.getAttribute('data-steps')) >= 5, 'countdown-panel', 'countdown-progress');
      await status.and(page.locator('[data-status="success"]')).waitFor();
      assert.equal(await status.textContent(), 'Done: 12 of 12 steps.');
      const progress = page.getByTestId('countdown-progress');
      assert.equal(await progress.evaluate((el) => (el as HTMLProgressElement).value), 12);
      const steps = await page.evaluate(() => (window as unknown as { __steps: number[] }).__steps);
      const distinct = [...new Set(steps)];
      assert.deepEqual(distinct, [...distinct].sort((a, b) => a - b), `steps only go up: ${steps}`);
      assert.equal(distinct.at(-1), 12, `ends at 12: ${steps}`);
      const between = distinct.filter((s) => s > 0 && s < 12);
      assert.ok(between.length >= 6, `the bar showed steps between start and end, chunk by chunk: ${steps}`);
      await screenshot(t, 'countdown-panel', 'countdown-done');
    });
  });

  test('countdown: Cancel stops it where it is', async (t) => {
    await step(t, async () => {
      const panel = page.getByTestId('countdown-panel');
      await panel.getByLabel('from').fill('200');
      await panel.getByLabel('every').fill('100');
      const status = page.getByTestId('countdown-status');
      await panel.getByRole('button', { name: 'Start' }).click();
      await status.and(page.locator('[data-status="pending"]')).waitFor();
      await waitFor(async () => Number(await status.getAttribute('data-steps')) >= 3, 'three chunks');
      await panel.getByRole('button', { name: 'Cancel' }).click();
      await status.and(page.locator('[data-status="error"]')).waitFor();
      const stoppedAt = Number(await status.getAttribute('data-steps'));
      assert.match((await status.textContent()) ?? '', new RegExp(`^Cancelled after ${stoppedAt} of 200 steps\\.$`));
      assert.ok(stoppedAt >= 3 && stoppedAt < 200, `stopped part way: ${stoppedAt}`);
      // Ten intervals later it has not moved: nothing more arrives for a cancelled request.
      await page.waitForTimeout(1000);
      assert.equal(Number(await status.getAttribute('data-steps')), stoppedAt);
      assert.equal(await panel.getByRole('button', { name: 'Cancel' }).isDisabled(), true);
      await screenshot(t, 'countdown-panel', 'countdown-cancelled');
    });
  });

  test('an invalid payload shows the server’s message', async (t) => {
    await step(t, async () => {
      await page.getByTestId('invalid-panel').getByRole('button').click();
      const error = page.getByTestId('invalid-error');
      await error.waitFor();
      const text = (await error.textContent()) ?? '';
      assert.match(text, /^INVALID_PAYLOAD: /);
      assert.match(text, /\/text/, `the message points at /text: ${text}`);
      assert.match(text, /string/, `and says a string is expected: ${text}`);
      await screenshot(t, 'invalid-panel', 'invalid-payload');
    });
  });

  test('tasks: a detached countdown survives a page reload, is listed with its progress, and is followed to the end', async (t) => {
    await step(t, async () => {
      let panel = page.getByTestId('tasks-panel');
      await panel.getByLabel('from').fill('16');
      await panel.getByLabel('every').fill('250');
      await panel.getByRole('button', { name: 'Start detached' }).click();
      const running = panel.locator('[data-testid="task"][data-state="running"]');
      await waitFor(async () => Number(await running.first().getAttribute('data-steps').catch(() => '0')) >= 3, 'a running task at step 3');
      const id = await running.first().getAttribute('data-id');
      assert.ok(id, 'the task has an id');
      const before = Number(await running.first().getAttribute('data-steps'));

      await page.reload();
      await page.getByTestId('connection-state').filter({ hasText: 'connected' }).waitFor();
      panel = page.getByTestId('tasks-panel');
      const row = panel.locator(`[data-testid="task"][data-id="${id}"]`);
      await waitFor(async () => Number(await row.getAttribute('data-steps').catch(() => '0')) > before, 'the task listed after the reload, further on');
      await screenshot(t, 'tasks-panel', 'tasks-after-reload');
      await row.getByRole('button', { name: 'Follow' }).click();
      const status = page.getByTestId('task-followed-status');
      await status.and(page.locator('[data-status="success"]')).waitFor();
      assert.equal(Number(await status.getAttribute('data-steps')), 16, 'every step, through the end');
      await waitFor(async () => (await row.getAttribute('data-state')) === 'succeeded', 'the list to say succeeded');
      await screenshot(t, 'tasks-panel', 'tasks-done');
    });
  });

  test('when the host goes away the indicator says reconnecting', async (t) => {
    await step(t, async () => {
      const host = stack.procs.find((p) => p.name === 'host')!;
      await host.stop();
      const state = page.getByTestId('connection-state');
      await state.filter({ hasText: 'reconnecting' }).waitFor();
      assert.equal(await state.textContent(), 'reconnecting');
      // The page's failed reconnection attempts are expected from here on.
      pageErrors.length = 0;
      page.removeAllListeners('console');
    });
  });
});

async function screenshotWhen(t: TestContext, check: () => Promise<boolean>, testId: string, name: string): Promise<void> {
  await waitFor(check, `${name}`);
  await screenshot(t, testId, name);
}
