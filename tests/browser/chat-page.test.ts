/**
 * The chat page (web/) in a real browser: Debian's Chromium driven by playwright-core, against
 * the dev API, an in-memory gateway and the page server, as `npm run demo` runs them (in this
 * process, on random ports).
 *
 * Going offline: Chromium's offline emulation (`context.setOffline(true)`) makes new
 * connections fail but leaves an open WebSocket open (it keeps delivering frames both ways), so
 * Bob's page reaches the gateway through a relay proxy (tests/sdk/proxy.ts, the network path)
 * and going offline is both: the emulation, and the proxy dropping the link and refusing new
 * ones — as when a network goes away under an established connection.
 *
 * UPDATE_SCREENSHOT=1 writes docs/chat-page.png (Bob's page at the end).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startChatPage, type ChatPage } from '../../web/server.js';
import { RelayProxy } from '../sdk/proxy.js';
import { Harness } from '../support/harness.js';
import { ROOT } from '../support/process.js';
import { CHROMIUM, CHROMIUM_ARGS, WAIT_MS, eventually, sent, texts } from './page-kit.js';
import type { TestClient } from '../support/client.js';

const CHAT = 1; // "General", the chat the page opens first

const h = new Harness('memory');
let proxy: RelayProxy;
let pageForAlice: ChatPage;
let pageForBob: ChatPage;
let browser: Browser;
let contexts: BrowserContext[] = [];
let alice: Page;
let bob: Page;
const pageErrors: string[] = [];


const state = (page: Page) => page.$eval('#state', (e) => (e as HTMLElement).dataset.state ?? '');
const online = (page: Page) => page.$$eval('#online li', (els) => els.map((e) => (e as HTMLElement).dataset.user ?? ''));
const logText = (page: Page) => page.$eval('#log', (e) => e.textContent ?? '');
const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

async function waitTexts(page: Page, expected: string[]): Promise<void> {
  await eventually(`messages ${JSON.stringify(expected)}`, () => texts(page), (t) => same(t, expected));
}

async function newPage(server: ChatPage): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1200, height: 720 } });
  contexts.push(context);
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${err.name}: ${err.message}`));
  await page.goto(server.url);
  await page.waitForSelector('body[data-ready="true"]');
  return page;
}

async function login(page: Page, userId: string): Promise<void> {
  await page.click(`#user-buttons button[data-user="${userId}"]`);
  await eventually('the page to be open', () => state(page), (s) => s === 'open');
}

async function send(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
  await sent(page, text);
}

async function messageAction(page: Page, text: string, action: 'edit' | 'delete'): Promise<void> {
  const item = page.locator('#messages li.msg.mine', { hasText: text });
  await item.hover();
  await item.locator(`button.${action}`).click();
}

before(async () => {
  await h.start();
  const gateway = await h.gateway();
  proxy = await RelayProxy.start(gateway.wsUrl);
  pageForAlice = await startChatPage({ gatewayUrl: gateway.wsUrl, apiUrl: h.api.url });
  pageForBob = await startChatPage({ gatewayUrl: proxy.url, apiUrl: h.api.url });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await pageForAlice?.close();
  await pageForBob?.close();
  await proxy?.close();
  await h.close();
});

describe('the chat page in Chromium', () => {
  const sent: string[] = [];

  it('two users log in, see each other online and typing, and exchange decrypted messages', async () => {
    alice = await newPage(pageForAlice);
    bob = await newPage(pageForBob);
    await login(alice, '1');
    await login(bob, '2');
    await eventually('Alice to see Bob online', () => online(alice), (ids) => same(ids, ['1', '2']));
    assert.deepEqual(await online(bob), ['1', '2']);
    assert.equal(h.api.devices.size, 2, 'each page published one device key');

    await alice.type('#text', 'hel');
    await eventually('Bob to see Alice typing', () => bob.textContent('#typing'), (t) => t === 'Alice is typing…');
    await send(alice, 'hello bob');
    sent.push('hello bob');
    await waitTexts(bob, ['hello bob']);
    assert.equal(await bob.textContent('#typing'), '', 'a message ends the typing indicator');
    await send(bob, 'hi alice');
    sent.push('hi alice');
    await waitTexts(alice, ['hello bob', 'hi alice']);
    await waitTexts(bob, ['hello bob', 'hi alice']);
  });

  it('Bob goes offline; the three messages he missed appear once each, in order, without a reload', async () => {
    const loadedAt = await bob.evaluate(() => performance.timeOrigin);
    await contexts[1]!.setOffline(true);
    proxy.refusing = true;
    proxy.cut();
    await eventually('Bob offline', () => state(bob), (s) => s === 'offline');
    await eventually('Alice to see Bob leave', () => online(alice), (ids) => same(ids, ['1']));

    for (const text of ['one', 'two', 'three']) {
      await send(alice, text);
      sent.push(text);
    }
    assert.deepEqual(await texts(bob), ['hello bob', 'hi alice'], 'nothing reached the offline page');
    assert.equal(proxy.open.length, 0, 'no link is open while offline');

    await contexts[1]!.setOffline(false);
    proxy.refusing = false;
    await eventually('Bob open again', () => state(bob), (s) => s === 'open', 15_000);
    await waitTexts(bob, ['hello bob', 'hi alice', 'one', 'two', 'three']);
    assert.equal(await bob.evaluate(() => performance.timeOrigin), loadedAt, 'the page was not reloaded');
    const log = await logText(bob);
    assert.match(log, /offline \(1006/);
    assert.match(log, /General: recovered, 3 missed update\(s\) replayed/);
    await eventually('Alice to see Bob back', () => online(alice), (ids) => same(ids, ['1', '2']));
  });

  it('an edit and a delete reach the other page', async () => {
    await messageAction(alice, 'two', 'edit');
    assert.equal(await alice.inputValue('#text'), 'two');
    await alice.fill('#text', 'two, edited');
    await alice.press('#text', 'Enter');
    sent.push('two, edited');
    await waitTexts(bob, ['hello bob', 'hi alice', 'one', 'two, edited', 'three']);
    assert.equal(await bob.locator('#messages li.msg', { hasText: 'two, edited' }).locator('.edited').count(), 1);

    await messageAction(alice, 'one', 'delete');
    await waitTexts(bob, ['hello bob', 'hi alice', 'two, edited', 'three']);
    await waitTexts(alice, ['hello bob', 'hi alice', 'two, edited', 'three']);
  });

  it('the main API stored only ciphertext, with an envelope for each device', async () => {
    const res = await fetch(`${h.api.url}/__messages`);
    const stored = ((await res.json()) as Array<{ id: string; chat_id: number; ciphertext: string; nonce: string; envelopes: Record<string, { alg: string; key: string; epk?: string }> }>).filter((m) => m.chat_id === CHAT);
    assert.equal(stored.length, 4, 'hello bob, hi alice, two (edited), three; one was deleted');
    // Base64 fields are compared as the bytes they carry: a short word such as "two" turns up by
    // chance in ~1 % of runs in a few hundred random base64 characters, never in their bytes.
    const clearFields = JSON.stringify(stored.map(({ ciphertext: _c, nonce: _n, envelopes: _e, ...rest }) => rest));
    const carried = stored.flatMap((m) => [m.ciphertext, m.nonce, ...Object.values(m.envelopes).map((e) => e.key)].map((b64) => Buffer.from(b64, 'base64')));
    for (const text of sent) {
      assert.ok(!clearFields.includes(text), `"${text}" is not stored in clear`);
      assert.ok(carried.every((bytes) => !bytes.includes(Buffer.from(text))), `"${text}" is not what a base64 field carries`);
    }
    const devices = [...h.api.devices.keys()].sort();
    for (const m of stored) {
      assert.deepEqual(Object.keys(m.envelopes).sort(), devices, `message ${m.id} has an envelope for each device`);
      assert.ok(Object.values(m.envelopes).every((e) => e.epk === undefined), 'the ephemeral key is sent once, in the ciphertext, not per envelope');
      assert.equal(Buffer.from(m.nonce, 'base64').length, 12);
      assert.ok(Buffer.from(m.ciphertext, 'base64').length >= 65 + 16 + 2, 'the ephemeral key, then AES-GCM output: the text and a 16-byte tag');
    }
  });

  it('a message without an envelope for this device shows "cannot decrypt", and the page carries on', async () => {
    const carol: TestClient = await h.member(3, CHAT); // like `npm run client`: base64, no envelopes
    const id = 'carol-plain-1';
    await carol.request({ type: 'message', data: { id, ciphertext: Buffer.from('not encrypted').toString('base64'), nonce: 'bm9uY2U=', envelopes: {} } }, { type: 'ack' });
    carol.close();
    const item = bob.locator(`#messages li.msg[data-id="${id}"]`);
    await item.waitFor({ timeout: WAIT_MS });
    assert.equal(await item.getAttribute('data-problem'), 'undecryptable');
    assert.match((await item.locator('.text').textContent()) ?? '', /cannot decrypt: not encrypted for this device/);
    await send(alice, 'still fine');
    sent.push('still fine');
    await eventually('Bob to get the next message', () => texts(bob), (t) => t.at(-1) === 'still fine');
  });

  it('after a reload, the history loads and decrypts with the device key kept in IndexedDB', async () => {
    await alice.reload();
    await alice.waitForSelector('body[data-ready="true"]');
    await login(alice, '1');
    const expected = ['hello bob', 'hi alice', 'two, edited', 'three', 'cannot decrypt: not encrypted for this device', 'still fine'];
    await waitTexts(alice, expected);
    assert.equal(h.api.devices.size, 2, 'the reloaded page kept its device');
    assert.equal(await alice.locator('#messages li.msg', { hasText: 'two, edited' }).locator('.edited').count(), 1, 'history shows edits');

    // Alice on a new browser (a new device) cannot read what was sent before it existed.
    const other = await newPage(pageForAlice);
    await login(other, '1');
    await eventually('the new device to load the history', () => texts(other), (t) => t.length === 6 && t.every((x) => x.startsWith('cannot decrypt')));
    await other.close();
  });

  it('takes a screenshot of a live conversation', async () => {
    await send(alice, 'Both pages recovered after the outage — nothing lost, nothing twice.');
    await send(bob, 'And the server only ever saw ciphertext.');
    await alice.type('#text', 'lovely');
    await eventually('Bob to see Alice typing', () => bob.textContent('#typing'), (t) => t === 'Alice is typing…');
    const png = await bob.screenshot();
    assert.ok(png.length > 20_000 && png.subarray(1, 4).toString() === 'PNG', 'a real PNG');
    if (process.env.UPDATE_SCREENSHOT === '1') await writeFile(`${ROOT}docs/chat-page.png`, png);
    assert.deepEqual(pageErrors, [], 'no uncaught error in any page');
  });
});
