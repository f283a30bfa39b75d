/** What the Chromium tests of the chat page share: how Chromium is launched, and how they wait on a page. */
import { chromium, type Browser, type Page } from 'playwright-core';
import { startChatPage, type ChatPage } from '../../web/server.js';
import type { Harness } from '../support/harness.js';

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

/** Starts `h` (its gateway and dev API), the chat page's server in front of them, and Chromium. */
export async function startPage(h: Harness): Promise<{ server: ChatPage; browser: Browser }> {
  await h.start();
  const gateway = await h.gateway();
  const server = await startChatPage({ gatewayUrl: gateway.wsUrl, apiUrl: h.api.url });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  return { server, browser };
}

/** Stops what `startPage` started (any part that did start). */
export async function stopPage(h: Harness, server: ChatPage | undefined, browser: Browser | undefined): Promise<void> {
  await browser?.close();
  await server?.close();
  await h.close();
}
