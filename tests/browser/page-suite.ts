import { after, before } from 'node:test';
import { webcrypto } from 'node:crypto';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import type { ChatPage } from '../../web/server.js';
import { Harness } from '../support/harness.js';
import { eventually, openAs, startPage, stopPage, texts } from './page-kit.js';

/**
 * One test file's chat page: the dev API, an in-memory gateway and the page server in this
 * process, and Chromium — started before the file's tests and stopped after them — with the
 * helpers its tests share. Every test uses its own chat and users.
 */
export function usePageSuite() {
  const h = new Harness('memory');
  let server: ChatPage | undefined;
  let browser: Browser | undefined;
  /** Uncaught errors of every page the file opened: a file's last test says there were none. */
  const pageErrors: string[] = [];
  before(async () => ({ server, browser } = await startPage(h)));
  after(() => stopPage(h, server, browser));

  const suite = {
    h,
    pageErrors,
    /** The page server's address. */
    get url(): string {
      return server!.url;
    },
    context: (viewport = { width: 1200, height: 720 }): Promise<BrowserContext> => browser!.newContext({ viewport }),
    async newPage(ctx?: BrowserContext, prepare?: (page: Page) => Promise<void>): Promise<Page> {
      const page = await (ctx ?? (await suite.context())).newPage();
      page.on('pageerror', (err) => pageErrors.push(`${err.name}: ${err.message}`));
      await prepare?.(page);
      return page;
    },
    /** Opens the page as `user` (the `?user=` link), with `chat` open if given. */
    loginTo: (page: Page, user: string, chat?: number | string) => openAs(page, server!.url, user, chat),
    /** What the dev API stored for `chat`. */
    storedIn: (chat: number) => [...h.api.messages.values()].filter((m) => String(m.chat_id) === String(chat)),
    waitText: (page: Page, text: string) => eventually(`"${text}" shown`, () => texts(page), (t) => t.includes(text)).then(() => undefined),
  };
  return suite;
}

/** A fresh P-256 public key, raw and base64: what a device publishes. */
export async function publicKey(): Promise<string> {
  const pair = (await webcrypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits'])) as CryptoKeyPair;
  return Buffer.from(await webcrypto.subtle.exportKey('raw', pair.publicKey)).toString('base64');
}
