/** What the Chromium tests of the chat page share: how Chromium is launched, and how they wait on a page. */
import type { Page } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
export const WAIT_MS = 10_000;

/** Polls `read` until `done` holds for its value; the failure names the last value seen. */
export async function eventually<T>(what: string, read: () => Promise<T>, done: (value: T) => boolean, timeoutMs = WAIT_MS): Promise<T> {
  const until = Date.now() + timeoutMs;
  let value = await read();
  while (!done(value)) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}; last saw ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 50));
    value = await read();
  }
  return value;
}

/** The texts of the messages the page shows, in order. */
export const texts = (page: Page) => page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent ?? ''));

/** Waits until the page shows one of its own messages as acked (the ✓: the main API saved it). */
export async function sent(page: Page, text: string): Promise<void> {
  await page.locator('#messages li.msg.mine', { hasText: text }).locator('.status.sent').waitFor({ timeout: WAIT_MS });
}
