/**
 * The chat page (web/) in Chromium, at its edges: a device list that has not loaded, a phone's
 * viewport, user ids past 2^53, a member's flood of devices and chats with hundreds, two tabs
 * logging in at once, a device id taken by another user, a forged edit, keyboard and
 * screen-reader use, drafts, chats the user may not join, old messages, reconnect countdowns and
 * typing across chats. Same set-up as chat-page.test.ts (the
 * dev API, an in-memory gateway and the page server in this process); every test uses its own
 * chat and users.
 *
 * SCREENSHOT_DIR=dir also writes the phone and desktop screenshots there (to look at);
 * UPDATE_SCREENSHOT=1 writes docs/chat-page-mobile.png.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Browser, type BrowserContext, type Page } from 'playwright-core';
import type { ChatPage } from '../../web/server.js';
import { Harness, uniqueChat } from '../support/harness.js';
import { ROOT } from '../support/process.js';
import { WAIT_MS, eventually, logText, openAs, openChat, openOffline, retrySeconds, sent, sleep, startPage, state, stateText, stopPage, texts, type } from './page-kit.js';

const h = new Harness('memory');
let server: ChatPage;
let browser: Browser;
const contexts: BrowserContext[] = [];
const pageErrors: string[] = [];
/** Opens the page as `user` (the `?user=` link), with `chat` open if given. */
const loginTo = (page: Page, user: string, chat?: number | string) => openAs(page, server.url, user, chat);

const storedIn = (chat: number) => [...h.api.messages.values()].filter((m) => String(m.chat_id) === String(chat));

async function context(viewport = { width: 1200, height: 720 }): Promise<BrowserContext> {
  const ctx = await browser.newContext({ viewport });
  contexts.push(ctx);
  return ctx;
}

async function newPage(ctx?: BrowserContext, prepare?: (page: Page) => Promise<void>): Promise<Page> {
  const page = await (ctx ?? (await context())).newPage();
  page.on('pageerror', (err) => pageErrors.push(`${err.name}: ${err.message}`));
  await prepare?.(page);
  return page;
}

async function waitText(page: Page, text: string): Promise<void> {
  await eventually(`"${text}" shown`, () => texts(page), (t) => t.includes(text));
}

async function publicKey(): Promise<string> {
  const pair = (await webcrypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits'])) as CryptoKeyPair;
  return Buffer.from(await webcrypto.subtle.exportKey('raw', pair.publicKey)).toString('base64');
}

before(async () => ({ server, browser } = await startPage(h)));
after(() => stopPage(h, server, browser));

describe('the chat page at its edges', () => {
  it('a message sent before the chat\'s device list ever loaded waits for it, then every member can read it', async () => {
    const chat = uniqueChat();
    const alice = await newPage();
    await loginTo(alice, '11', chat);
    // Bob's page cannot reach the device list at all (as on a flaky network): no list, ever.
    let blocked = true;
    const bob = await newPage(undefined, async (page) => {
      await page.route(`**/api/chats/${chat}/devices`, (route) => (blocked ? route.abort('internetdisconnected') : route.continue()));
    });
    await loginTo(bob, '12', chat);
    await type(bob, 'sent before any device list');
    const status = bob.locator('#messages li.msg.mine', { hasText: 'sent before any device list' }).locator('.status');
    await eventually('the waiting state', () => status.textContent(), (t) => t === "waiting for the chat's devices…");
    // A message queued behind it waits too (it is not being sent).
    await type(bob, 'queued behind it');
    const behind = bob.locator('#messages li.msg.mine', { hasText: 'queued behind it' }).locator('.status');
    await eventually('the queued one waits', () => behind.textContent(), (t) => t === 'waiting…');
    await sleep(1500);
    assert.equal(storedIn(chat).length, 0, 'nothing was sent meanwhile (it would have been encrypted to Bob alone)');

    blocked = false;
    await sent(bob, 'sent before any device list');
    await sent(bob, 'queued behind it');
    await waitText(alice, 'sent before any device list');
    const [stored] = storedIn(chat);
    const envelopes = Object.keys((stored as unknown as { envelopes: Record<string, unknown> }).envelopes).sort();
    const devices = [...h.api.devices.values()].filter((d) => ['11', '12'].includes(String(d.user_id))).map((d) => d.device_id).sort();
    assert.deepEqual(envelopes, devices, 'an envelope for Alice\'s device and Bob\'s');

    // Refused (403) is not "unreachable": a write is not encrypted to a stale list, it fails.
    await bob.unroute(`**/api/chats/${chat}/devices`);
    await bob.route(`**/api/chats/${chat}/devices`, (route) => route.fulfill({ status: 403, contentType: 'application/json', body: '{"error":"not a member of this chat"}' }));
    await type(bob, 'after a refusal');
    await bob.locator('#messages li.msg.mine', { hasText: 'after a refusal' }).locator('.status.failed').waitFor({ timeout: WAIT_MS });
    assert.equal(storedIn(chat).length, 2);
    await alice.context().close();
    await bob.context().close();
  });

  it('on a 390 px phone the chat takes the screen; the chat list and the log are toggled from the header', async () => {
    const chat = uniqueChat();
    const phone = await newPage(await context({ width: 390, height: 844 }));
    await phone.goto(server.url);
    await phone.waitForSelector('body[data-ready="true"]');
    const loginWidth = await phone.evaluate(() => [document.documentElement.scrollWidth, document.querySelector('.card')!.getBoundingClientRect().width]);
    assert.ok(loginWidth[0]! <= 390 && loginWidth[1]! <= 390, `the login card fits: ${JSON.stringify(loginWidth)}`);
    await phone.click('#user-buttons button[data-user="3"]');
    await eventually('the page to be open', () => state(phone), (s) => s === 'open');
    const box = (sel: string) => phone.$eval(sel, (e) => { const r = e.getBoundingClientRect(); return { x: Math.round(r.x), width: Math.round(r.width), height: Math.round(r.height) }; });
    assert.ok((await box('main')).width >= 380, `the message pane is wide: ${JSON.stringify(await box('main'))}`);
    assert.ok((await box('#text')).width >= 250, 'the composer is usable');
    assert.equal(await phone.evaluate(() => document.documentElement.scrollWidth), 390, 'nothing sticks out sideways');
    assert.equal(await phone.isVisible('#sidebar'), false);
    assert.equal(await phone.isVisible('#connection'), false);
    await type(phone, 'a message from Carol on a phone, long enough to wrap over a few lines of its bubble');
    await sent(phone, 'a message from Carol on a phone');
    const header = await box('header');
    assert.ok(header.height < 120, `the header stays small: ${header.height}`);
    const shot = await phone.screenshot();
    if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, 'phone-chat.png'), shot);
    if (process.env.UPDATE_SCREENSHOT === '1') await writeFile(`${ROOT}docs/chat-page-mobile.png`, shot);

    await phone.click('#show-chats');
    assert.equal(await phone.getAttribute('#show-chats', 'aria-expanded'), 'true');
    assert.ok((await box('#sidebar')).width >= 380, 'the chat list takes the screen');
    assert.equal(await phone.isVisible('main'), false);
    if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, 'phone-chats.png'), await phone.screenshot());
    await phone.fill('#chat-id', String(chat));
    await phone.press('#chat-id', 'Enter');
    await eventually('back to the chat', () => phone.isVisible('main'), (v) => v);
    assert.equal(await phone.textContent('#chat-title'), `# chat ${chat}`);
    await phone.click('#show-log');
    assert.ok((await box('#connection')).width >= 380, 'the log takes the screen');
    if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, 'phone-log.png'), await phone.screenshot());
    await phone.click('#show-log');
    assert.equal(await phone.isVisible('main'), true);

    // The desktop layout is unchanged: three columns, the toggles hidden.
    await phone.setViewportSize({ width: 1200, height: 720 });
    assert.equal(await phone.isVisible('#show-chats'), false);
    assert.equal(await phone.isVisible('#sidebar'), true);
    assert.equal(await phone.isVisible('#connection'), true);
    if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, 'desktop.png'), await phone.screenshot());
    await phone.context().close();
  });

  it('a user id past 2^53 stays exact: the page\'s own messages are its own and decrypt', async () => {
    const chat = uniqueChat();
    const big = '12345678901234567891';
    const page = await newPage();
    await loginTo(page, big, chat);
    const other = await newPage();
    await loginTo(other, '14', chat);
    await type(page, 'from a big id');
    await sent(page, 'from a big id');
    assert.equal(await page.getAttribute('#messages li.msg.mine', 'data-sender'), big);
    await waitText(other, 'from a big id');
    assert.equal(await other.getAttribute('#messages li.msg', 'data-sender'), big);
    assert.equal(String(storedIn(chat)[0]?.sender_id), big);
    await page.context().close();
    await other.context().close();
  });

  it('a member\'s flood of devices costs one envelope per key and at most 10 per user; a chat of 300 devices can send; past the frame limit the error says why', async () => {
    const chat = uniqueChat();
    // Devices put straight into the dev API's store, past its own cap of 10 per user: the page
    // must not rely on the server to keep a chat's messages small enough to send.
    const put = (user: number, id: string, key: string) => h.api.devices.set(id, { device_id: id, user_id: user, public_key: key, updated_at: new Date().toISOString() });
    const keys = await Promise.all(Array.from({ length: 15 }, () => publicKey()));
    const flooder = await publicKey();
    for (let i = 0; i < 420; i++) put(66, `flood-${String(i).padStart(58, 'm')}`, flooder); // one member, 420 devices, one key
    for (let i = 0; i < 15; i++) put(67, `many-${i}`, keys[i]!); // one member, 15 devices
    const users = (from: number) => Array.from({ length: 30 }, (_, u) => from + u);
    for (const user of users(1000)) for (let i = 0; i < 10; i++) put(user, `d${user}-${i}`, keys[i]!); // 30 members × 10
    h.api.setMembers(chat, [15, 66, 67, ...users(1000)]);
    const page = await newPage();
    await loginTo(page, '15', chat);
    await type(page, 'to a big chat');
    await sent(page, 'to a big chat');
    const envelopes = Object.keys((storedIn(chat)[0] as unknown as { envelopes: object }).envelopes);
    assert.equal(envelopes.filter((id) => id.startsWith('flood-')).length, 1, 'one envelope for 420 devices with one key');
    assert.deepEqual(envelopes.filter((id) => id.startsWith('many-')).sort(), Array.from({ length: 10 }, (_, i) => `many-${i + 5}`).sort(), 'the 10 last published of 15');
    assert.equal(envelopes.length, 1 + 10 + 300 + 1, 'and 300 devices of 30 members, and this one');

    for (const user of users(2000)) for (let i = 0; i < 10; i++) put(user, `d${user}-${i}`, keys[i]!);
    h.api.setMembers(chat, [15, 66, 67, ...users(1000), ...users(2000)]);
    await type(page, 'to a chat too big');
    const status = page.locator('#messages li.msg.mine', { hasText: 'to a chat too big' }).locator('.status.failed');
    await status.waitFor({ timeout: WAIT_MS });
    assert.match((await status.textContent()) ?? '', /not sent: too large for the gateway \(64 KiB a frame, 612 devices in this chat/);
    assert.equal(await state(page), 'open', 'the connection was not closed for it');
    await page.context().close();
  });

  it('two tabs logging in as a new user at the same moment share one device', async () => {
    for (let round = 0; round < 3; round++) {
      const user = `tabs${round}x${Date.now() % 100_000}`;
      const ctx = await context();
      // Both tabs get their token at the same moment, so both look for the device together.
      const held: Array<() => Promise<void>> = [];
      await ctx.route('**/api/dev/token', async (route) => {
        held.push(() => route.continue());
        if (held.length === 2) await Promise.all(held.map((go) => go()));
      });
      const [one, two] = [await newPage(ctx), await newPage(ctx)];
      for (const tab of [one, two]) {
        await tab.goto(server.url);
        await tab.waitForSelector('body[data-ready="true"]');
        await tab.fill('#user-id', user);
      }
      await Promise.all([one.press('#user-id', 'Enter'), two.press('#user-id', 'Enter')]);
      for (const tab of [one, two]) await eventually('open', () => state(tab), (s) => s === 'open');
      const device = (tab: Page) => tab.$eval('#device', (e) => (e as HTMLElement).innerText.split('\n')[0]);
      assert.equal(await device(one), await device(two), `round ${round}: one device id`);
      assert.equal([...h.api.devices.values()].filter((d) => String(d.user_id) === user).length, 1, `round ${round}: one published device`);
      await ctx.close();
    }
  });

  it('a device id another user took while the dev API forgot it is replaced by a new device at the next login; a write uses the device\'s own key', async () => {
    const chat = uniqueChat();
    const user = `squat${Date.now() % 100_000}`;
    const ctx = await context();
    const one = await newPage(ctx);
    await loginTo(one, user, chat);
    const devicesOf = (who: string) => [...h.api.devices.values()].filter((d) => String(d.user_id) === who).map((d) => d.device_id);
    const [old] = devicesOf(user);
    assert.ok(old);
    // The dev API restarted (it keeps device keys in memory only), and a member who saw the id in
    // an envelope published it first, under itself.
    h.api.devices.delete(old);
    const squat = await fetch(`${h.api.url}/devices/${old}/key`, { method: 'PUT', headers: { authorization: `Bearer ${await h.token(68)}`, 'content-type': 'application/json' }, body: JSON.stringify({ public_key: await publicKey() }) });
    assert.equal(squat.status, 200);
    await one.reload();
    await one.waitForSelector('body[data-ready="true"]');
    await eventually('logged in again', () => state(one), (s) => s === 'open');
    const [fresh] = devicesOf(user);
    assert.ok(fresh && fresh !== old && devicesOf(user).length === 1, `a new device: ${JSON.stringify(devicesOf(user))}`);
    assert.match(await logText(one), /is another user's now: made a new one/);
    // Kept in IndexedDB: a second tab of this browser uses it, and nothing is replaced again.
    const two = await newPage(ctx);
    await loginTo(two, user, chat);
    assert.deepEqual(devicesOf(user), [fresh]);
    assert.equal(String(h.api.devices.get(old)?.user_id), '68', 'the squatter keeps the id; its key gets nothing of this user');

    // A device list that gives this device's id another key (a server swapping it): the page
    // encrypts to its own key, so its other tab (the same device) reads what it sent.
    await one.route(`**/api/chats/${chat}/devices`, async (route) =>
      route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ chat_id: String(chat), devices: [{ device_id: fresh, user_id: user, public_key: await publicKey() }] }) }),
    );
    await one.bringToFront();
    await openChat(one, chat); // the reload opened General
    await type(one, 'read in my other tab');
    await sent(one, 'read in my other tab');
    await two.bringToFront(); // a background tab's timers (its renders) are throttled
    await eventually('the other tab decrypts it', () => texts(two), (t) => t.includes('read in my other tab'));
    await ctx.close();
  });

  it('an edit broadcast under another user\'s name is not applied', async () => {
    const chat = uniqueChat();
    const alice = await newPage();
    await loginTo(alice, '21', chat);
    let forge = false;
    const bob = await newPage(undefined, async (page) => {
      // Between the gateway and Bob's page: when `forge` is on, an edit's sender_id is rewritten.
      await page.routeWebSocket(/\/ws$/, (ws) => {
        const gateway = ws.connectToServer();
        ws.onMessage((m) => gateway.send(m));
        gateway.onMessage((m) => {
          const frame = JSON.parse(String(m)) as { type?: string; data?: { sender_id?: unknown } };
          if (forge && frame.type === 'edit_message' && frame.data) {
            frame.data.sender_id = 23;
            return ws.send(JSON.stringify(frame));
          }
          ws.send(m);
        });
      });
    });
    await loginTo(bob, '22', chat);
    await type(alice, 'original text');
    await sent(alice, 'original text');
    await waitText(bob, 'original text');
    forge = true;
    const item = alice.locator('#messages li.msg.mine', { hasText: 'original text' });
    await item.hover();
    await item.locator('button.edit').click();
    await alice.fill('#text', 'changed text');
    await alice.press('#text', 'Enter');
    await sent(alice, 'changed text');
    await eventually('Bob to log the forged edit', () => logText(bob), (t) => t.includes("ignored an edit of user 21's message by user 23"));
    assert.deepEqual(await texts(bob), ['original text']);
    forge = false;
    await alice.context().close();
    await bob.context().close();
  });

  it('works from the keyboard and tells a screen reader what changes; an edit keeps the draft', async () => {
    const chat = uniqueChat();
    const dave = await newPage();
    await loginTo(dave, '24', chat);
    const peer = await newPage();
    await loginTo(peer, '25', chat);
    await type(dave, 'dave writes');
    await sent(dave, 'dave writes');
    await dave.mouse.move(5, 700);

    // Labels, live regions, chats as buttons.
    for (const id of ['text', 'chat-id']) assert.equal(await dave.$eval(`#${id}`, (e) => (e as HTMLInputElement).labels?.length ?? 0), 1, `#${id} has a label`);
    assert.equal(await dave.getAttribute('#state-text', 'aria-live'), 'polite');
    assert.ok((await dave.$$('#chats button.chat')).length >= 3, 'chats are buttons');
    assert.equal(await dave.getAttribute(`#chats button[data-chat="${chat}"]`, 'aria-current'), 'true');
    await type(peer, 'a reply');
    await eventually('the reply announced', () => dave.textContent('#announce'), (t) => t === 'user 25: a reply');

    // Tab from the header reaches the message's edit button, and Enter starts the edit.
    await dave.focus('#logout');
    let reached = false;
    for (let i = 0; i < 20 && !reached; i++) {
      await dave.keyboard.press('Tab');
      reached = await dave.evaluate(() => document.activeElement?.matches('li.msg.mine button.edit') ?? false);
    }
    assert.ok(reached, 'Tab reaches the edit button');
    assert.equal(await dave.$eval('li.msg.mine .actions', (e) => getComputedStyle(e).opacity), '1', 'shown while focused');
    if (process.env.SCREENSHOT_DIR) await writeFile(join(process.env.SCREENSHOT_DIR, 'desktop-actions.png'), await dave.screenshot());

    // A draft survives an edit, cancelled or sent.
    await dave.fill('#text', 'my unsent draft');
    await dave.focus('li.msg.mine button.edit');
    await dave.keyboard.press('Enter');
    assert.equal(await dave.inputValue('#text'), 'dave writes');
    await dave.click('#cancel-edit');
    assert.equal(await dave.inputValue('#text'), 'my unsent draft');
    await dave.locator('li.msg.mine').hover();
    await dave.click('li.msg.mine button.edit');
    await dave.fill('#text', 'dave wrote');
    await dave.press('#text', 'Enter');
    assert.equal(await dave.inputValue('#text'), 'my unsent draft');
    await waitText(peer, 'dave wrote');

    // The page also logs in from the keyboard: the user id field has its label too.
    await dave.click('#logout');
    assert.equal(await dave.$eval('#user-id', (e) => (e as HTMLInputElement).labels?.length ?? 0), 1);
    await dave.context().close();
    await peer.context().close();
  });

  it('a chat the user is not a member of says so and disables the composer', async () => {
    const chat = uniqueChat();
    h.api.setMembers(chat, [31]);
    const page = await newPage();
    await loginTo(page, '32');
    await page.fill('#chat-id', String(chat));
    await page.press('#chat-id', 'Enter');
    await eventually('the refusal', () => page.textContent('#history-note'), (t) => t === 'not a member of this chat');
    assert.equal(await page.isDisabled('#text'), true);
    assert.equal(await page.isDisabled('#send'), true);
    assert.equal(await state(page), 'open', 'the other chats carry on');
    await page.click('#chats li[data-chat="1"]');
    await eventually('another chat can be written to', () => page.isDisabled('#text'), (d) => !d);
    await page.context().close();
  });

  it('sends created_at, shows the date of a message not from today, and lets its author delete what it cannot decrypt', async () => {
    const chat = uniqueChat();
    const first = await newPage();
    await loginTo(first, '33', chat);
    const before = Date.now();
    await type(first, 'when was this');
    await sent(first, 'when was this');
    const createdAt = Date.parse(String((storedIn(chat)[0] as unknown as { created_at?: string }).created_at));
    assert.ok(createdAt >= before - 5 && createdAt <= Date.now(), 'created_at is the time of the send');

    // A message the main API saved in 2021 (live, a created_at that old would be a sender's
    // clock that is off: chat-page-faults.test.ts).
    h.api.messages.set('old-1', { id: 'old-1', chat_id: chat, sender_id: 34, ciphertext: 'AAAA', envelopes: {}, created_at: '2021-03-04T12:06:07Z', saved_at: '2021-03-04T12:06:08Z' });
    assert.match((await first.locator('li.msg.mine time').textContent()) ?? '', /^\d\d:\d\d$/, 'today: the time only');

    // The same user on a new browser: its old message does not decrypt there, but can be deleted.
    const second = await newPage();
    await loginTo(second, '33', chat);
    const time = second.locator('li.msg[data-id="old-1"] time');
    await time.waitFor({ timeout: WAIT_MS });
    assert.match((await time.textContent()) ?? '', /^4 Mar 2021 \d\d:\d\d$/);
    assert.equal(await second.locator('li.msg[data-id="old-1"] .claimed').count(), 0);
    const mine = second.locator('li.msg.mine[data-problem="undecryptable"]');
    await mine.waitFor({ timeout: WAIT_MS });
    assert.equal(await mine.locator('button.edit').count(), 0, 'nothing to edit without the text');
    await mine.hover();
    await mine.locator('button.delete').click();
    await eventually('the delete to reach the first page', () => texts(first), (t) => !t.includes('when was this'));
    await first.context().close();
    await second.context().close();
  });

  it('the trailing typing goes to the chat typed in, not to the one opened since', async () => {
    const [c1, c2] = [uniqueChat(), uniqueChat()];
    const alice = await newPage();
    await loginTo(alice, '41', c1);
    await openChat(alice, c2);
    const bob = await newPage();
    await loginTo(bob, '42', c1);
    await openChat(bob, c2); // Bob looks at c2
    await alice.click(`#chats li[data-chat="${c1}"]`);
    await alice.type('#text', 'a'); // typing → c1 now
    await sleep(200);
    await alice.type('#text', 'b'); // inside the SDK's window: a trailing typing is due in ~0.9 s
    await alice.click(`#chats li[data-chat="${c2}"]`);
    const until = Date.now() + 2000;
    while (Date.now() < until) {
      assert.equal(await bob.textContent('#typing'), '', 'Bob, in the other chat, never sees Alice typing');
      await sleep(50);
    }
    await alice.context().close();
    await bob.context().close();
  });

  it('offline, the retry countdown ticks', async () => {
    const page = await newPage();
    await openOffline(page, server.url, '43');
    const first = await eventually('a retry 3 s or more away', () => stateText(page), (t) => retrySeconds(t) >= 3, 20_000);
    await sleep(1100);
    const later = await stateText(page);
    assert.ok(retrySeconds(later) < retrySeconds(first), `counted down: "${first}" then "${later}"`);
    await page.context().close();
  });

  it('no uncaught error in any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
