/**
 * Long-running tasks in a real browser (issue 14's browser proof; README "Long-running tasks"):
 * several countdowns at once — two detached ones in the task panel and an ordinary one in the
 * countdown panel — and the page reloads mid-task: the detached ones are listed again with live
 * progress and run to the end. Then the network goes away for 2 s under a streaming countdown
 * (chromium offline through the DevTools protocol, the page's WebSocket dropped): the page
 * reconnects by itself and shows every chunk once, in order — no gap, no repeat.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import type { Browser, CDPSession } from 'playwright-core';

import { DemoPage, launchChromium, waitFor } from './browser.js';
import { describeWorkers, startStack, type Stack } from './stack.js';

let stack: Stack;
let browser: Browser;
let demo: DemoPage;
let cdp: CDPSession;

/** Steps shown by the task row `id` (0 when it is not listed). */
async function rowSteps(id: string): Promise<number> {
  const row = demo.page.locator(`[data-testid="task"][data-id="${id}"]`);
  return Number((await row.getAttribute('data-steps', { timeout: 1000 }).catch(() => null)) ?? 0);
}

async function rowState(id: string): Promise<string | null> {
  const row = demo.page.locator(`[data-testid="task"][data-id="${id}"]`);
  return row.getAttribute('data-state', { timeout: 1000 }).catch(() => null);
}

async function connected(): Promise<void> {
  await demo.page.getByTestId('connection-state').filter({ hasText: /^connected$/ }).waitFor();
}

describe(`long-running tasks in chromium (workers: ${describeWorkers()})`, () => {
  before(async () => {
    stack = await startStack();
    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 900, height: 1400 } });
    demo = new DemoPage(page, stack);
    // Every WebSocket the page opens, so that a network cut can drop the open one (see below).
    await page.addInitScript(() => {
      const sockets: WebSocket[] = [];
      (window as unknown as { __sockets: WebSocket[] }).__sockets = sockets;
      const Native = window.WebSocket;
      window.WebSocket = class extends Native {
        constructor(url: string | URL, protocols?: string | string[]) {
          super(url, protocols);
          sockets.push(this);
        }
      };
    });
    cdp = await page.context().newCDPSession(page);
    await cdp.send('Network.enable');
    await page.goto(stack.url);
    await connected();
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await stack?.stop();
  });

  test('several countdowns, two detached: the page reloads mid-task, the detached ones are listed with live progress and finish', async (t) => {
    await demo.step(t, async () => {
      const page = demo.page;
      const tasks = page.getByTestId('tasks-panel');
      const running = tasks.locator('[data-testid="task"][data-state="running"]');
      const ids: string[] = [];
      for (const from of [30, 24]) {
        await tasks.getByLabel('from').fill(String(from));
        await tasks.getByLabel('every').fill('200');
        await tasks.getByRole('button', { name: 'Start detached' }).click();
        await waitFor(async () => (await running.count()) > ids.length, `detached countdown ${ids.length + 1} listed`);
        const all = await running.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-id') ?? ''));
        ids.push(all.find((id) => id && !ids.includes(id))!);
      }
      const countdown = page.getByTestId('countdown-panel');
      await countdown.getByLabel('from').fill('100');
      await countdown.getByLabel('every').fill('200');
      await countdown.getByRole('button', { name: 'Start' }).click();
      await waitFor(async () => (await rowSteps(ids[1]!)) >= 3, 'the second detached countdown at step 3');
      const before = await Promise.all(ids.map(rowSteps));
      await demo.screenshot(t, 'tasks-panel', 'tasks-several-before-reload');

      await page.reload();
      await connected();
      for (const [i, id] of ids.entries()) {
        await waitFor(async () => (await rowSteps(id)) > before[i]!, `task ${id} listed after the reload, further on`);
      }
      // Live: the list moves on by itself (useTasks polls), without a click.
      const listed = await Promise.all(ids.map(rowSteps));
      await waitFor(async () => (await rowSteps(ids[0]!)) > listed[0]!, 'the list to show more progress');
      await demo.screenshot(t, 'tasks-panel', 'tasks-several-after-reload');
      // The ordinary countdown was the old page's: the new page does not have it.
      assert.equal(await page.getByTestId('countdown-status').textContent(), 'Not started.');

      for (const [i, id] of ids.entries()) {
        await waitFor(async () => (await rowState(id)) === 'succeeded', `task ${id} to succeed`, 30_000);
        assert.equal(await rowSteps(id), [30, 24][i], `task ${id} shows every step`);
      }
      await demo.screenshot(t, 'tasks-panel', 'tasks-several-done');
    });
  });

  test('a 2 s network cut mid-stream: the page reconnects and shows every chunk once, in order', async (t) => {
    await demo.step(t, async () => {
      const page = demo.page;
      const panel = page.getByTestId('countdown-panel');
      const status = page.getByTestId('countdown-status');
      const states: string[] = [];
      await page.exposeFunction('__state', (s: string) => states.push(s));
      await page.getByTestId('connection-state').evaluate((el) => {
        new MutationObserver(() => (window as unknown as { __state: (s: string) => void }).__state(el.textContent ?? '')).observe(el, {
          childList: true,
          characterData: true,
          subtree: true,
        });
      });
      await panel.getByLabel('from').fill('60');
      await panel.getByLabel('every').fill('100');
      await panel.getByRole('button', { name: 'Start' }).click();
      await waitFor(async () => Number(await status.getAttribute('data-steps')) >= 10, 'ten steps');

      // The cut: chromium goes offline (nothing new gets through) and the open WebSocket is
      // dropped, as a dead link ends it; reconnection attempts fail until the network is back.
      await cdp.send('Network.emulateNetworkConditions', { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
      await page.evaluate(() => {
        for (const socket of (window as unknown as { __sockets: WebSocket[] }).__sockets) {
          if (socket.readyState === WebSocket.OPEN) socket.close();
        }
      });
      const atCut = Number(await status.getAttribute('data-steps'));
      await page.getByTestId('connection-state').filter({ hasText: 'reconnecting' }).waitFor();
      await page.waitForTimeout(2000);
      const duringCut = Number(await status.getAttribute('data-steps'));
      await demo.screenshot(t, 'countdown-panel', 'countdown-network-cut');
      await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
      await connected();

      await status.and(page.locator('[data-status="success"]')).waitFor({ timeout: 30_000 });
      assert.equal(await status.textContent(), 'Done: 60 of 60 steps.');
      const remaining = ((await status.getAttribute('data-remaining')) ?? '').split(' ').map(Number);
      assert.deepEqual(remaining, Array.from({ length: 60 }, (_, i) => 59 - i), 'every chunk once, in order');
      assert.ok(duringCut < 60, `the cut was mid-stream (steps ${atCut} → ${duringCut} while offline)`);
      assert.ok(states.includes('reconnecting'), `the indicator said reconnecting: ${states.join(', ')}`);
      await demo.screenshot(t, 'countdown-panel', 'countdown-after-cut');
      // Failed reconnection attempts while offline are logged by chromium: expected here.
      demo.errors.length = 0;
    });
  });
});
