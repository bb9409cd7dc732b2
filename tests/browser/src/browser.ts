/**
 * What every browser test file shares: Debian's chromium through playwright-core, a page that
 * records its errors, screenshots under tests/browser/artifacts/, and polling for a condition.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';

import { chromium, type Browser, type Page } from 'playwright-core';

import { REPO_ROOT, type Stack } from './stack.js';

export const ARTIFACTS = path.join(REPO_ROOT, 'tests/browser/artifacts');
/** Generous: the machine is shared with Rust builds. */
export const STEP_MS = 20_000;

export function chromiumPath(): string {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  try {
    return execFileSync('which', ['chromium'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error("Debian's chromium is not installed: scripts/ensure-deps installs it (apt-get install chromium)");
  }
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
}

/** A page of the demo whose errors (thrown or logged) are kept: any of them fails a step. */
export class DemoPage {
  readonly errors: string[] = [];

  constructor(
    readonly page: Page,
    private readonly stack: Stack,
  ) {
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (error) => this.errors.push(`pageerror: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') this.errors.push(`console.error: ${message.text()}`);
    });
  }

  /** A screenshot of the element with `data-testid={testId}`, named in the test's output. */
  async screenshot(t: TestContext, testId: string, name: string): Promise<void> {
    mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, `${name}.png`);
    await this.page.getByTestId(testId).screenshot({ path: file });
    t.diagnostic(`screenshot: ${path.relative(process.cwd(), file)} (${file})`);
  }

  /** Runs a test's body; on a failure saves a full-page screenshot and prints the stack's logs. */
  async step(t: TestContext, body: () => Promise<void>): Promise<void> {
    try {
      await body();
      assert.deepEqual(this.errors, [], 'the page logged errors');
    } catch (error) {
      const file = path.join(ARTIFACTS, `failure-${t.name.replace(/\W+/g, '-')}.png`);
      mkdirSync(ARTIFACTS, { recursive: true });
      await this.page.screenshot({ path: file, fullPage: true }).catch(() => undefined);
      process.stderr.write(`failure screenshot: ${file}\n${this.stack.logs()}\n`);
      throw error;
    }
  }
}

export async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = STEP_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
