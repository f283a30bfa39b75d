/**
 * The chat page (web/) in Chromium and its devices: a device list that has not loaded yet, a
 * member's flood of devices and chats with hundreds, two tabs of a new user logging in at once,
 * a device id taken by another user. A file of its own beside chat-page-edges.test.ts, so the two
 * run side by side. Every test uses its own chat and users.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type Page } from 'playwright-core';
import { uniqueChat } from '../support/harness.js';
import { WAIT_MS, eventually, logText, openChat, sent, sleep, state, texts, type } from './page-kit.js';
import { usePageSuite, publicKey } from './page-suite.js';

const suite = usePageSuite();
const { h, pageErrors, context, newPage, loginTo, storedIn, waitText } = suite;

describe('the chat page and its devices', () => {
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
        await tab.goto(suite.url);
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

  it('a page that gets a new token (the dev API restarted and forgot its key) publishes its device key again', async () => {
    const chat = uniqueChat();
    const sockets: Array<{ close(o?: { code?: number; reason?: string }): Promise<void> }> = [];
    // Alice's page reaches the gateway through a relay that can close her connection.
    const alice = await newPage(undefined, async (page) => {
      await page.routeWebSocket(/\/ws$/, (ws) => {
        sockets.push(ws);
        const gateway = ws.connectToServer();
        ws.onMessage((m) => gateway.send(m));
        gateway.onMessage((m) => ws.send(m));
        gateway.onClose((code, reason) => void ws.close({ code: code ?? 1006, reason }));
        ws.onClose(() => void gateway.close());
      });
    });
    await loginTo(alice, '71', chat);
    const bob = await newPage();
    await loginTo(bob, '72', chat);
    await type(bob, 'before the restart');
    await waitText(alice, 'before the restart');
    // The dev API "restarts": it forgets Alice's device key, and her token is refused (4401), so
    // the SDK asks the page for a new one.
    for (const [id, d] of h.api.devices) if (String(d.user_id) === '71') h.api.devices.delete(id);
    for (const ws of sockets.splice(0)) await ws.close({ code: 4401, reason: 'unauthorized' });
    await eventually('Alice told her token was refused', () => logText(alice), (t) => t.includes('offline (4401'));
    await eventually('Alice open again', () => state(alice), (s) => s === 'open');
    // Bob's next message is encrypted to her device again: she can read it.
    await type(bob, 'after the restart');
    await sent(bob, 'after the restart');
    await waitText(alice, 'after the restart');
    assert.ok([...h.api.devices.values()].some((d) => String(d.user_id) === '71'), 'her key is in the main API again');
    assert.ok((await logText(alice)).includes('new token: device key published again'));
    await alice.context().close();
    await bob.context().close();
  });

  it('no uncaught error in any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
