/**
 * The chat page (web/) in Chromium when things go wrong around it: a device list that hangs, a
 * connection that drops (what a screen reader is told meanwhile, and after), long names on a
 * 320 px phone, an edit whose message goes away, and senders' clocks that lie. Same set-up as
 * chat-page-edges.test.ts; every test uses its own chat and users.
 *
 * SCREENSHOT_DIR=dir writes the long-name screenshots there (320 px, 390 px, desktop), to look at.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Browser, type BrowserContext, type Page, type WebSocketRoute } from 'playwright-core';
import type { ChatPage } from '../../web/server.js';
import { Harness, uniqueChat } from '../support/harness.js';
import { WAIT_MS, eventually, logText, openAs, openChat, openOffline, retrySeconds, sent, sleep, startPage, state, stateText, stopPage, texts, type } from './page-kit.js';

const h = new Harness('memory');
let server: ChatPage;
let browser: Browser;
const pageErrors: string[] = [];
/** Opens the page as `user` (the `?user=` link), with `chat` open if given. */
const loginTo = (page: Page, user: string, chat?: number | string) => openAs(page, server.url, user, chat);

async function newPage(viewport = { width: 1200, height: 720 }, prepare?: (page: Page) => Promise<void>, ctx?: BrowserContext): Promise<Page> {
  const page = await (ctx ?? (await browser.newContext({ viewport }))).newPage();
  page.on('pageerror', (err) => pageErrors.push(`${err.name}: ${err.message}`));
  await prepare?.(page);
  return page;
}

/** Records every change of the page's live regions (what a screen reader would be told). */
async function watchLiveRegions(page: Page): Promise<() => Promise<string[]>> {
  await page.evaluate(() => {
    const w = window as unknown as { __live: string[] };
    w.__live = [];
    for (const el of document.querySelectorAll('[aria-live], [role=status], [role=alert]')) {
      new MutationObserver(() => w.__live.push(`${el.id}: ${el.textContent ?? ''}`)).observe(el, { childList: true, characterData: true, subtree: true });
    }
  });
  return () => page.evaluate(() => (window as unknown as { __live: string[] }).__live.splice(0));
}

before(async () => ({ server, browser } = await startPage(h)));
after(() => stopPage(h, server, browser));

describe('the chat page when things go wrong', () => {
  it('a hanging device list costs four queued messages one timeout, not four', async () => {
    const chat = uniqueChat();
    let hang = false;
    let loaded = 0;
    let hung = 0;
    const page = await newPage(undefined, async (p) => {
      await p.route(`**/api/chats/${chat}/devices`, (route) => {
        if (!hang) {
          loaded++;
          return route.continue();
        }
        hung++; // never answered: the page's 5 s timeout ends it
      });
    });
    await loginTo(page, '51', chat);
    await eventually('the list loaded at the join', async () => loaded, (n) => n >= 1);
    await sleep(300);
    hang = true;
    const started = Date.now();
    for (const text of ['H1', 'H2', 'H3', 'H4']) await type(page, text);
    for (const text of ['H1', 'H2', 'H3', 'H4']) await sent(page, text);
    const took = Date.now() - started;
    assert.ok(took < 9000, `all four went out after one timeout: ${took} ms`);
    assert.ok(hung <= 2, `one shared request (and no new one right after it failed): ${hung}`);
    assert.match(await logText(page), /device list unavailable .*using the last one/);
    await page.context().close();
  });

  it('offline, the countdown ticks outside the live region: nothing is said while it counts', async () => {
    const page = await newPage();
    await openOffline(page, server.url, '52');
    const live = await watchLiveRegions(page);
    // "retry in 4 s" or more (the countdown rounds up: 3 s or more to go), watched for 1.1 s:
    // a tick is seen, and a loaded machine's slow timers still leave the retry itself (whose
    // "connecting" the live region rightly says) out of the window.
    const first = await eventually('a retry 4 s or more away', () => stateText(page), (t) => retrySeconds(t) >= 4, 30_000);
    await live();
    await sleep(1100);
    const said = await live();
    const later = await stateText(page);
    assert.ok(retrySeconds(later) < retrySeconds(first), `the countdown still ticks on screen: "${first}" then "${later}"`);
    assert.deepEqual(said, [], 'the live regions stayed quiet while only the seconds changed');
    assert.equal(await page.$eval('#retry', (e) => e.closest('[aria-live]') === null && e.getAttribute('aria-hidden') === 'true'), true);
    assert.equal(await page.getAttribute('#state-text', 'aria-live'), 'polite');
    assert.match(await page.textContent('#state-text') ?? '', /^offline \(1013\)$/);
    await page.context().close();
  });

  it('messages replayed after a reconnect are announced once, as a count', async () => {
    const chat = uniqueChat();
    let down = false;
    const open: Array<{ ws: WebSocketRoute; gateway: WebSocketRoute }> = [];
    const page = await newPage(undefined, async (p) => {
      await p.routeWebSocket(/\/ws$/, (ws) => {
        if (down) return ws.close({ code: 1013, reason: 'down' });
        const gateway = ws.connectToServer();
        ws.onMessage((m) => gateway.send(m));
        gateway.onMessage((m) => ws.send(m));
        open.push({ ws, gateway });
      });
    });
    await loginTo(page, '53', chat);
    const bob = await h.member(54, chat);
    await bob.request({ type: 'message', data: { id: randomUUID(), ciphertext: 'AAAA', envelopes: {} } }, { type: 'ack' });
    await eventually('a live message', () => texts(page), (t) => t.length === 1);
    await eventually('announced on its own', () => page.textContent('#announce'), (t) => t?.startsWith('user 54: ') ?? false);

    down = true;
    for (const { ws, gateway } of open.splice(0)) {
      await ws.close({ code: 1001, reason: 'cut' });
      await gateway.close();
    }
    await eventually('offline', () => state(page), (s) => s === 'offline');
    for (let i = 0; i < 12; i++) await bob.request({ type: 'message', data: { id: randomUUID(), ciphertext: 'AAAA', envelopes: {} } }, { type: 'ack' });
    const live = await watchLiveRegions(page);
    down = false;
    await eventually('all 13 shown', () => texts(page), (t) => t.length === 13, 20_000);
    await eventually('open again', () => state(page), (s) => s === 'open');
    await sleep(300);
    const announced = (await live()).filter((x) => x.startsWith('announce:'));
    assert.deepEqual(announced, [`announce: 12 new messages in chat ${chat}`]);
    bob.close();
    await page.context().close();
  });

  it('long chat names and user ids fit a 320 px phone, a 390 px phone and a desktop', async () => {
    const longUser = `u${'Y'.repeat(40)}`;
    const longChat = `c${'x'.repeat(63)}`;
    const refused = `secret-${'q'.repeat(40)}-${Date.now() % 1000}`;
    h.api.setMembers(refused, ['55']);
    const page = await newPage({ width: 320, height: 640 });
    await loginTo(page, longUser);
    await openChat(page, longChat);
    await type(page, `a word too long for any bubble: ${'W'.repeat(120)}`);
    await sent(page, 'a word too long');
    const overflow = () =>
      page.evaluate(() => {
        const width = window.innerWidth;
        const out: string[] = [];
        for (const e of document.querySelectorAll<HTMLElement>('#app *')) {
          const r = e.getBoundingClientRect();
          if (r.width > 0 && !e.closest('.sr-only') && (r.right > width + 1 || r.left < -1)) out.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className}: ${Math.round(r.left)}-${Math.round(r.right)}`);
        }
        // Nothing runs out of its column either (the chat list, the messages, the log).
        for (const column of document.querySelectorAll<HTMLElement>('#sidebar, main, #connection, header')) {
          const c = column.getBoundingClientRect();
          if (c.width === 0) continue;
          for (const e of column.querySelectorAll<HTMLElement>('*')) {
            const r = e.getBoundingClientRect();
            if (r.width > 0 && !e.closest('.sr-only') && r.right > c.right + 1) out.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className} past #${column.id || column.tagName}: ${Math.round(r.right)} > ${Math.round(c.right)}`);
          }
        }
        const who = document.querySelector('#messages li.msg .who')?.getBoundingClientRect();
        const bubble = document.querySelector('#messages li.msg')?.getBoundingClientRect();
        if (who && bubble && who.right > bubble.right + 1) out.push(`.who past its bubble: ${Math.round(who.right)} > ${Math.round(bubble.right)}`);
        if (document.documentElement.scrollWidth > width) out.push(`the page scrolls sideways: ${document.documentElement.scrollWidth}`);
        return out;
      });
    const shoot = async (name: string) => {
      if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, name), await page.screenshot());
    };
    const headerHeight = () => page.$eval('header', (e) => Math.round(e.getBoundingClientRect().height));
    for (const width of [320, 390, 1200]) {
      await page.setViewportSize({ width, height: width > 760 ? 720 : 640 });
      await openChat(page, longChat);
      await sleep(100);
      assert.deepEqual(await overflow(), [], `${width} px, the long chat`);
      assert.ok((await headerHeight()) <= 100, `${width} px: the header stays small with a 41-character user id: ${await headerHeight()}`);
      await shoot(`long-${width}-chat.png`);

      await openChat(page, refused, false);
      await eventually('the refusal', () => page.textContent('#history-note'), (t) => t === 'not a member of this chat');
      await sleep(100);
      assert.deepEqual(await overflow(), [], `${width} px, the refused chat`);
      const note = await page.$eval('#history-note', (e) => { const r = e.getBoundingClientRect(); return { left: r.left, right: r.right, width: window.innerWidth }; });
      assert.ok(note.left >= 0 && note.right <= note.width, `the "not a member" note is on screen: ${JSON.stringify(note)}`);
      // A disabled Send does not look like the live blue one.
      assert.notEqual(await page.$eval('#send', (e) => getComputedStyle(e).backgroundColor), 'rgb(47, 111, 237)');
      await shoot(`long-${width}-refused.png`);

      if (width < 760) {
        await page.click('#show-chats');
        assert.deepEqual(await overflow(), [], `${width} px, the chat list`);
        const rows = await page.$$eval('#chats button.chat', (els) => els.map((b) => { const n = b.querySelector('.name')!.getBoundingClientRect(); const r = b.getBoundingClientRect(); return n.right <= r.right + 1 && n.width > 0; }));
        assert.ok(rows.every(Boolean), 'every chat name stays in its row');
        await shoot(`long-${width}-chats.png`);
        await page.keyboard.press('Escape');
        await page.click('#show-log');
        assert.deepEqual(await overflow(), [], `${width} px, the log`);
        await shoot(`long-${width}-log.png`);
        await page.click('#show-log');
      }
    }
    await page.context().close();
  });

  it('on a phone, Escape closes the Chats or Log panel, and widening past 760 px closes it', async () => {
    const page = await newPage({ width: 390, height: 800 });
    await loginTo(page, '56');
    await page.click('#show-chats');
    assert.equal(await page.isVisible('#sidebar'), true);
    await page.keyboard.press('Escape');
    assert.equal(await page.isVisible('main'), true, 'Escape went back to the chat');
    assert.equal(await page.getAttribute('#show-chats', 'aria-expanded'), 'false');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'show-chats', 'the focus is back on the button');

    await page.click('#show-log');
    assert.equal(await page.getAttribute('#show-log', 'aria-expanded'), 'true');
    await page.setViewportSize({ width: 1000, height: 800 });
    await eventually('the panel closed by widening', () => page.getAttribute('#show-log', 'aria-expanded'), (v) => v === 'false');
    await page.setViewportSize({ width: 390, height: 800 });
    assert.equal(await page.isVisible('main'), true, 'narrow again: the chat, not the old panel');
    assert.equal(await page.isVisible('#connection'), false);
    await page.context().close();
  });

  it('an edit whose message is deleted elsewhere, or left for another chat, keeps what was typed and says why', async () => {
    const chat = uniqueChat();
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const one = await newPage(undefined, undefined, ctx);
    await loginTo(one, '57', chat);
    const two = await newPage(undefined, undefined, ctx); // the same user in a second tab
    await loginTo(two, '57', chat);
    await type(one, 'to be edited then deleted');
    await sent(one, 'to be edited then deleted');
    const item = (page: Page) => page.locator('#messages li.msg.mine', { hasText: 'to be edited then deleted' });
    await item(two).waitFor({ timeout: WAIT_MS });

    // Two tabs of one context: the one acted on is brought to the front (a background tab's
    // animation frames are throttled, and Playwright waits on them before each click).
    await one.bringToFront();
    await one.fill('#text', 'my unrelated draft');
    await item(one).hover();
    await item(one).locator('button.edit').click();
    await one.fill('#text', 'a long carefully typed EDIT');
    await two.bringToFront();
    await item(two).hover();
    await item(two).locator('button.delete').click();
    await one.bringToFront();
    await eventually('the delete reached the first tab', () => texts(one), (t) => !t.includes('to be edited then deleted'));
    assert.equal(await one.inputValue('#text'), 'a long carefully typed EDIT', 'the typed text is not thrown away');
    assert.equal(await one.isVisible('#editing'), false, 'no longer editing');
    assert.match((await one.textContent('#notice')) ?? '', /Edit ended: the message was deleted\. Your text is still in the composer/);
    assert.equal(await one.isVisible('#notice'), true);
    assert.match((await one.textContent('#announce')) ?? '', /Edit ended: the message was deleted/);
    assert.match(await logText(one), /Edit ended: the message was deleted/);
    if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, 'edit-ended.png'), await one.screenshot());
    // Sent now, it is a new message.
    await one.press('#text', 'Enter');
    await sent(one, 'a long carefully typed EDIT');
    assert.equal(await one.isVisible('#notice'), false, 'the notice goes with the next send');

    // Another chat opened mid-edit: the edit ends, the typed text stays, and the notice says so.
    await type(one, 'second message');
    await sent(one, 'second message');
    const second = one.locator('#messages li.msg.mine', { hasText: 'second message' });
    await second.hover();
    await second.locator('button.edit').click();
    await one.fill('#text', 'second message, changed');
    await one.click('#chats li[data-chat="1"] button');
    assert.equal(await one.inputValue('#text'), 'second message, changed');
    assert.match((await one.textContent('#notice')) ?? '', /Edit ended: you opened General/);
    // An edit left unchanged gives the draft back, as a cancel does.
    await one.fill('#text', 'draft in General');
    await one.click(`#chats li[data-chat="${chat}"] button`);
    await one.fill('#text', 'draft in the chat');
    await second.hover();
    await second.locator('button.edit').click();
    await one.click('#chats li[data-chat="1"] button');
    assert.equal(await one.inputValue('#text'), 'draft in the chat');
    await ctx.close();
  });

  it('a chat whose register the main API keeps refusing for now says why in the log, and opens once it is admitted', async () => {
    const page = await newPage();
    await loginTo(page, '63');
    const chat = uniqueChat();
    h.api.addFault({ op: 'verify', status: 503 });
    try {
      await page.fill('#chat-id', String(chat));
      await page.press('#chat-id', 'Enter');
      await eventually('the reason in the log', () => logText(page), (t) => /register \(refused for now: retried with backoff\): upstream_unavailable/.test(t), 15_000);
    } finally {
      h.api.clearFaults();
    }
    await type(page, 'admitted at last');
    // Typed while the chat registers: acked while its history loads, and still shown acked after.
    await sent(page, 'admitted at last');
    await page.context().close();
  });

  it('two devices edit one message at once: every page ends on the edit saved last, also the device whose edit it is', async () => {
    const chat = uniqueChat();
    // Two contexts: two devices of one user. The second is also every other page: it receives
    // the first's edit as anyone else does.
    const [one, two] = [await newPage(), await newPage()];
    await loginTo(one, '61', chat);
    await loginTo(two, '61', chat);
    await type(one, 'before the edits');
    await sent(one, 'before the edits');
    await eventually('the message on the other device', () => texts(two), (t) => t.includes('before the edits'));
    const edit = async (page: Page, text: string) => {
      const item = page.locator('#messages li.msg.mine', { hasText: 'before the edits' });
      await item.hover();
      await item.locator('button.edit').click();
      await type(page, text);
    };
    // The first device's edit is slow at the main API: the second device's, made after it, is
    // saved (and numbered) first, so the first device's is the message's content in the end.
    // 4 s: the second device's edit reaches the main API within it on a loaded machine too (a
    // hover, a click and typing in Chromium once took longer than 1.5 s there).
    h.api.addFault({ op: 'edit', delayMs: 4000, times: 1 });
    await edit(one, 'edit of device one, saved last');
    await sleep(300);
    await edit(two, 'edit of device two, saved first');
    await sent(one, 'edit of device one, saved last');
    for (const page of [one, two]) {
      await eventually('the edit saved last shown', () => texts(page), (t) => t.includes('edit of device one, saved last') && !t.includes('edit of device two, saved first'));
    }
    await sleep(500); // nothing older lands on top afterwards
    for (const page of [one, two]) assert.deepEqual(await texts(page), ['edit of device one, saved last']);
    for (const page of [one, two]) await page.context().close();
  });

  it('a sender\'s created_at far from when the message arrived is shown as a claim, beside the arrival time; its edited_at is ignored', async () => {
    const chat = uniqueChat();
    const page = await newPage();
    await loginTo(page, '58', chat);
    const liar = await h.member(59, chat);
    for (const [id, at] of [['y9999', '9999-12-31T23:59:59Z'], ['y0', '0000-01-01T00:00:00Z'], ['honest', new Date(Date.now() - 60_000).toISOString()]] as const) {
      // edited_at in a new message: the gateway passes unknown data fields through (docs/protocol.md).
      await liar.request({ type: 'message', data: { id: `${id}-${chat}`, ciphertext: 'AAAA', envelopes: {}, created_at: at, edited_at: at } }, { type: 'ack' });
    }
    liar.close();
    const shown = async (p: Page, id: string) => {
      const li = p.locator(`li.msg[data-id="${id}-${chat}"]`);
      await li.waitFor({ timeout: WAIT_MS });
      return { time: await li.locator('time').textContent(), claim: (await li.locator('.claimed').count()) ? await li.locator('.claimed').textContent() : null };
    };
    const today = /^\d\d:\d\d$/;
    const later = await newPage();
    for (const p of [page, later]) {
      if (p !== page) await loginTo(p, '60', chat); // from the history: checked against saved_at
      const far = await shown(p, 'y9999');
      assert.match(far.time ?? '', today, 'the time it arrived, not 9999');
      assert.match(far.claim ?? '', /^sender says 31 Dec 9999 \d\d:\d\d$|^sender says 1 Jan 10000/);
      const zero = await shown(p, 'y0');
      assert.match(zero.time ?? '', today);
      assert.match(zero.claim ?? '', /^sender says .* (0|-1) \d\d:\d\d$/);
      const honest = await shown(p, 'honest');
      assert.match(honest.time ?? '', today);
      assert.equal(honest.claim, null, 'a clock a minute off is believed');
      assert.equal(await p.locator(`#messages li.msg[data-id$="-${chat}"] .edited`).count(), 0, 'a new message is not shown edited, live or from the history');
      if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, `claimed-time-${p === page ? 'live' : 'history'}.png`), await p.screenshot());
    }
    await page.context().close();
    await later.context().close();
  });

  it('a flooded chat keeps the newest 1,000 messages, says older ones are not shown, and adds a message without rebuilding the others', async () => {
    const chat = uniqueChat();
    const savedAt = new Date().toISOString();
    for (let i = 0; i < 1100; i++) h.api.messages.set(`old-${chat}-${i}`, { id: `old-${chat}-${i}`, chat_id: chat, sender_id: 61, ciphertext: 'AAAA', envelopes: {}, created_at: savedAt, saved_at: savedAt });
    const page = await newPage();
    await loginTo(page, '62', chat);
    const shown = () => page.$$eval('#messages li.msg', (els) => els.map((e) => (e as HTMLElement).dataset.id));
    await eventually('the newest 1,000 of the history', shown, (ids) => ids.length === 1000 && ids[0] === `old-${chat}-100`);
    assert.match((await page.textContent('#messages li.older')) ?? '', /^Older messages are not shown: this page keeps the newest 1,000 of a chat\.$/);

    // A flood arrives live: each message adds its <li> (and the oldest goes); the others stay as they are.
    await page.$eval(`li.msg[data-id="old-${chat}-1099"]`, (li) => ((li as HTMLElement).dataset.probe = 'kept'));
    await page.evaluate(() => {
      const w = window as unknown as { __added: number };
      w.__added = 0;
      new MutationObserver((records) => (w.__added += records.reduce((n, r) => n + r.addedNodes.length, 0))).observe(document.getElementById('messages')!, { childList: true });
    });
    // Two connections: each may send a burst of 50, ten at a time in flight.
    const flooders = [await h.member(61, chat), await h.member(61, chat)];
    for (let batch = 0; batch < 6; batch++) {
      const ids = Array.from({ length: 10 }, (_, i) => `new-${chat}-${batch * 10 + i}`);
      const flooder = flooders[batch % 2]!;
      await Promise.all(ids.map((id) => flooder.request({ type: 'message', data: { id, ciphertext: 'AAAA', envelopes: {} } }, (f) => f.type === 'ack' && f.id === id)));
    }
    for (const flooder of flooders) flooder.close();
    await eventually('the flood shown', shown, (ids) => ids.at(-1) === `new-${chat}-59` && ids.length === 1000);
    assert.equal((await shown())[0], `old-${chat}-160`, 'the oldest went');
    assert.equal(await page.$eval(`li.msg[data-id="old-${chat}-1099"]`, (li) => (li as HTMLElement).dataset.probe), 'kept', 'an unchanged message keeps its <li>');
    const added = await page.evaluate(() => (window as unknown as { __added: number }).__added);
    assert.ok(added <= 60 * 3, `60 new messages added ${added} <li>s (each new one, and once more when it is decrypted), not the whole list again`);
    await type(page, 'still answering');
    await sent(page, 'still answering');
    await page.context().close();
  });

  it('no uncaught error in any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
