/**
 * The chat page (web/) in Chromium, at its edges: a phone's viewport, user ids past 2^53, a forged
 * edit, keyboard and screen-reader use, drafts, chats the user may not join, old messages,
 * reconnect countdowns and typing across chats (devices: chat-page-devices.test.ts). Same set-up
 * as chat-page.test.ts (page-suite.ts); every test uses its own chat and users.
 *
 * SCREENSHOT_DIR=dir also writes the phone and desktop screenshots there (to look at);
 * UPDATE_SCREENSHOT=1 writes docs/chat-page-mobile.png.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from '../support/process.js';
import { WebSocket } from 'ws';
import { createClient } from '../../packages/client/src/index.js';
import { uniqueChat } from '../support/harness.js';
import { WAIT_MS, eventually, logText, openChat, openOffline, retrySeconds, sent, sleep, state, stateText, texts, type } from './page-kit.js';
import { usePageSuite } from './page-suite.js';

const suite = usePageSuite();
const { h, pageErrors, context, newPage, loginTo, storedIn, waitText } = suite;

describe('the chat page at its edges', () => {
  it('on a 390 px phone the chat takes the screen; the chat list and the log are toggled from the header', async () => {
    const chat = uniqueChat();
    const phone = await newPage(await context({ width: 390, height: 844 }));
    await phone.goto(suite.url);
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

  it('a delete by someone else than the author is ignored — also while the history loads — and the author\'s later edits still show', async () => {
    // The main API wrongly accepts a non-author's delete (dev-API fault: delete answers 200); the
    // gateway broadcasts it with deleted_by = the non-author.
    const chat = uniqueChat();
    const alice = await newPage();
    await loginTo(alice, '24', chat);
    const carol = await newPage();
    await loginTo(carol, '26', chat);
    await type(alice, 'alice original');
    await sent(alice, 'alice original');
    await waitText(carol, 'alice original');
    const id = (await alice.getAttribute('#messages li.msg.mine', 'data-id'))!;
    // Bob's page: its history request is slowed down by 3 s, so the delete comes before it has the message.
    const bob = await newPage(undefined, async (page) => {
      await page.route(/\/api\/chats\/[^/]+\/messages/, async (route) => {
        await sleep(3000);
        await route.continue();
      });
    });
    await loginTo(bob, '25');
    await openChat(bob, chat, false);
    await eventually('Bob registered', () => state(bob), (s) => s === 'open');
    assert.equal(await bob.textContent('#history-note'), 'loading history…');
    // Mallory (user 27, who may post to the chat) deletes Alice's message.
    const mallory = createClient({ url: h.instances[0]!.wsUrl, token: await h.api.mintToken(27), WebSocket: WebSocket as never });
    const mchat = mallory.chat(chat);
    await new Promise<void>((resolve) => mchat.on('registered', () => resolve()));
    h.api.addFault({ op: 'delete', status: 200, times: 1 });
    await mchat.delete(id);
    mallory.close();
    const ignored = "ignored a delete of user 24's message by user 27";
    await eventually('Carol logs the ignored delete', () => logText(carol), (t) => t.includes(ignored));
    await eventually('Bob\'s history', () => bob.textContent('#history-note'), (t) => t === '', WAIT_MS + 3000);
    await eventually('Bob logs the ignored delete', () => logText(bob), (t) => t.includes(ignored));
    assert.equal(await bob.locator(`#messages li.msg[data-id="${id}"]`).count(), 1, 'Bob still has the message (from before his device: cannot decrypt)');
    // The author's edit reaches both: the ignored delete left no tombstone in their SDKs.
    const item = alice.locator('#messages li.msg.mine', { hasText: 'alice original' });
    await item.hover();
    await item.locator('button.edit').click();
    await alice.fill('#text', 'alice EDITED');
    await alice.press('#text', 'Enter');
    await sent(alice, 'alice EDITED');
    await waitText(carol, 'alice EDITED');
    await waitText(bob, 'alice EDITED');
    assert.deepEqual(await texts(carol), ['alice EDITED']);
    for (const p of [alice, bob, carol]) await p.context().close();
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
    await openOffline(page, suite.url, '43');
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
