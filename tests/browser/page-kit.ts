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

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The connection state the page shows (`open`, `offline`, …: the pill's data-state). */
export const state = (page: Page) => page.$eval('#state', (e) => (e as HTMLElement).dataset.state ?? '');
export const stateText = (page: Page) => page.$eval('#state', (e) => e.textContent ?? '');
export const logText = (page: Page) => page.$eval('#log', (e) => e.textContent ?? '');

/** Opens the page at `url` logged in as `user` (the `?user=` link), with `chat` open if given. */
export async function openAs(page: Page, url: string, user: string, chat?: number | string): Promise<void> {
  await page.goto(`${url}?user=${encodeURIComponent(user)}`);
  await page.waitForSelector('body[data-ready="true"]');
  // Longer than other waits: the first page of a file comes while three Chromium files start at
  // once beside the rest of the suite on two cores (one such page stayed "connecting" past 10 s).
  await eventually('the page to be open', () => state(page), (s) => s === 'open', 3 * WAIT_MS);
  if (chat !== undefined) await openChat(page, chat);
}

/** Opens `chat` from the chat list (shown first on a phone); `joins`: waits until it is registered and its history loaded. */
export async function openChat(page: Page, chat: number | string, joins = true): Promise<void> {
  if (await page.isVisible('#show-chats')) await page.click('#show-chats');
  await page.fill('#chat-id', String(chat));
  await page.press('#chat-id', 'Enter');
  await eventually(`chat ${chat} open`, () => page.textContent('#chat-title'), (t) => t === `# chat ${chat}`);
  if (!joins) return;
  await eventually('the chat joined', () => state(page), (s) => s === 'open');
  await eventually('its history', () => page.textContent('#history-note'), (t) => t === '');
}

/**
 * Opens `page` at `url` as `user` with every WebSocket closed 1013 at once by "the gateway": the
 * page stays offline, its SDK backing off (up to 5 s) and the header counting down to each retry.
 */
export async function openOffline(page: Page, url: string, user: string): Promise<void> {
  await page.routeWebSocket(/\/ws$/, (ws) => ws.close({ code: 1013, reason: 'try again later' }));
  await page.goto(`${url}?user=${user}`);
  await page.waitForSelector('body[data-ready="true"]');
}

/** N of the header's "retry in N s" (NaN when it shows none). */
export const retrySeconds = (text: string) => Number(/retry in (\d+) s/.exec(text)?.[1] ?? NaN);

/** Types `text` into the composer and presses Enter. */
export async function type(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
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
  try {
    return { server, browser: await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS }) };
  } catch (err) {
    // Chromium missing or broken: the file fails now, not at its timeout with the servers still up.
    await stopPage(h, server, undefined);
    throw err;
  }
}

/** Stops what `startPage` started (any part that did start). */
export async function stopPage(h: Harness, server: ChatPage | undefined, browser: Browser | undefined): Promise<void> {
  await browser?.close();
  await server?.close();
  await h.close();
}
