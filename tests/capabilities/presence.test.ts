import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { expectNone, type Frame, type TestClient } from '../support/client.js';
import { idKey } from '../../src/protocol/ids.js';
import { ENGINE_MODES, Harness, uniqueChat, useHarness, waitFor } from '../support/harness.js';

/** A watcher's view of the chat's online users, from `registered`, `presence` and `presence_batch`. */
function onlineSeenBy(client: TestClient, chat: number): Set<number> {
  const online = new Set<number>();
  for (const f of client.frames) {
    if (f.chat_id !== chat) continue;
    if (f.type === 'registered') for (const u of f.online as number[]) online.add(u);
    if (f.type === 'presence') (f.status === 'online' ? online.add(f.user_id as number) : online.delete(f.user_id as number));
    if (f.type === 'presence_batch') {
      for (const u of f.online as number[]) online.add(u);
      for (const u of f.offline as number[]) online.delete(u);
    }
  }
  return online;
}

const isPresence = (f: Frame) => f.type === 'presence' || f.type === 'presence_batch';

for (const mode of ENGINE_MODES) {
  describe(`presence announcements [${mode}]`, () => {
    const h = useHarness(mode); // PRESENCE_BATCH_MS at its default, 200

    it('many members joining at once: far fewer announcements than joins, and every watcher ends with the true online list', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(1000, chat);
      const joined = await Promise.all(Array.from({ length: 40 }, (_, i) => h.member(1001 + i, chat)));
      const everyone = new Set([1000, ...Array.from({ length: 40 }, (_, i) => 1001 + i)]);
      await waitFor(() => onlineSeenBy(watcher, chat).size === everyone.size, 3000, 'watcher sees all 40 online');
      assert.deepEqual(onlineSeenBy(watcher, chat), everyone);
      const announcements = watcher.frames.filter(isPresence);
      assert.ok(announcements.length < 20, `40 joins gave ${announcements.length} announcements`);
      assert.ok(watcher.all({ type: 'presence_batch' }).length >= 1, 'joins were gathered into a presence_batch');
      // Every member that joined also ends with the true list (the batches may name its own user).
      for (const c of joined.slice(-3)) await waitFor(() => onlineSeenBy(c, chat).size === everyone.size, 3000, 'a late joiner sees everyone');
      // Half leave at once: announced together too.
      const from = watcher.frames.length;
      for (const c of joined.slice(0, 20)) c.close();
      for (let i = 0; i < 20; i++) everyone.delete(1001 + i);
      await waitFor(() => onlineSeenBy(watcher, chat).size === everyone.size, 3000, 'watcher sees 20 offline');
      assert.deepEqual(onlineSeenBy(watcher, chat), everyone);
      assert.ok(watcher.frames.slice(from).filter(isPresence).length < 10);
      for (const c of [watcher, ...joined.slice(20)]) c.close();
    });
  });

  describe(`presence announcement window [${mode}]`, () => {
    // 1.5 s: two registers fit in one window on a loaded machine too.
    const WINDOW_MS = 1500;
    const h = useHarness(mode, { PRESENCE_BATCH_MS: String(WINDOW_MS) });
    const windowEnds = () => new Promise((r) => setTimeout(r, WINDOW_MS + 100));

    it('the first change in a quiet chat goes out at once; the next ones wait for the window and go out together', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(1, chat);
      await windowEnds(); // the watcher's own online (told to nobody) opened a window
      const a = await h.member(2, chat);
      await watcher.next({ type: 'presence', user_id: 2, status: 'online' }, 600);
      const opened = Date.now(); // the window that announcement opened ends WINDOW_MS after it was sent
      const from = watcher.frames.length;
      const b = await h.member(3, chat);
      const c = await h.member(4, chat);
      const batch = await watcher.next(isPresence, WINDOW_MS + 3000, from);
      const waited = Date.now() - opened;
      assert.ok(waited >= WINDOW_MS - 200, `the next changes went out ${waited} ms after the first, before its window ended`);
      assert.deepEqual(batch, { type: 'presence_batch', chat_id: chat, online: [3, 4], offline: [] });
      // A lone change in a window is a plain presence frame, and never reaches the connection that caused it.
      const d = await h.connect();
      await d.register(await h.token(5), chat);
      await watcher.next({ type: 'presence', user_id: 5, status: 'online' }, 3000, from);
      await expectNone(d, { type: 'presence', user_id: 5 }, 300);
      // A user who came and went within one window is announced as they are when the window ends.
      const fromGone = watcher.frames.length;
      await windowEnds();
      const e = await h.member(6, chat); // at once: opens a window
      await watcher.next({ type: 'presence', user_id: 6, status: 'online' }, 600, fromGone);
      const f = await h.member(7, chat);
      f.close();
      await watcher.next({ type: 'presence', user_id: 7, status: 'offline' }, 3000, fromGone);
      const naming7 = (fr: Frame) => fr.user_id === 7 || (fr.type === 'presence_batch' && [...(fr.online as number[]), ...(fr.offline as number[])].includes(7));
      assert.equal(watcher.frames.slice(fromGone).filter(naming7).length, 1);
      for (const x of [watcher, a, b, c, d, e]) x.close();
    });
  });
}

describe('presence announcement windows across instances [redis]', () => {
  const h = new Harness('redis', { PRESENCE_BATCH_MS: '1000' });
  before(async () => {
    await h.start();
    await h.gateway();
    await h.gateway();
  });
  after(() => h.close());

  it("an instance's delayed offline never overtakes another instance's later online: the window's frame says the status at send time", async () => {
    const chat = uniqueChat();
    const watcher = await h.member(1, chat, 1);
    const opener = await h.member(2, chat, 0); // opens instance 0's window for the chat
    await watcher.next({ type: 'presence', user_id: 2, status: 'online' });
    const x = await h.member(3, chat, 0); // gathered on instance 0
    x.close(); // offline gathered on instance 0, replacing the online
    await waitFor(async () => !(await h.instances[0]!.gateway.engine.online(idKey(chat))).includes(idKey(3)), 3000, 'x left');
    const again = await h.member(3, chat, 1); // instance 1's window is quiet: online goes out at once
    await watcher.next({ type: 'presence', user_id: 3, status: 'online' });
    // Instance 0's window ends: the engine says user 3 is online, so that is what it announces.
    await new Promise((r) => setTimeout(r, 1300));
    assert.ok(onlineSeenBy(watcher, chat).has(3), `watcher saw ${JSON.stringify(watcher.frames.filter(isPresence))}`);
    assert.deepEqual(watcher.all({ type: 'presence', user_id: 3, status: 'offline' }), []);
    for (const c of [watcher, opener, again]) c.close();
  });

  it("an instance that stalls between a user's leave and its offline cannot have the last word: the user, online again elsewhere, ends online", async () => {
    const chat = uniqueChat();
    const watcher = await h.member(20, chat, 1);
    const x = await h.member(21, chat, 0);
    await watcher.next({ type: 'presence', user_id: 21, status: 'online' });
    await new Promise((r) => setTimeout(r, 1300)); // instance 0's window for the chat closes: its next change goes out at once
    // Instance 0 stalls (a GC pause, a busy loop) after the leave, before its offline goes out.
    const engine = h.instances[0]!.gateway.engine;
    const publish = engine.publish.bind(engine);
    engine.publish = async (c, frame, except) => {
      if (frame.includes('"offline"')) await new Promise((r) => setTimeout(r, 500));
      return publish(c, frame, except);
    };
    try {
      x.close();
      await waitFor(async () => !(await h.instances[1]!.gateway.engine.online(idKey(chat))).includes(idKey(21)), 3000, 'x left');
      const again = await h.member(21, chat, 1); // back on instance 1: its online goes out at once
      await watcher.next({ type: 'presence', user_id: 21, status: 'offline' }, 3000); // instance 0's late offline
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(onlineSeenBy(watcher, chat).has(21), `watcher saw ${JSON.stringify(watcher.frames.filter(isPresence))}`);
      again.close();
    } finally {
      delete (engine as { publish?: unknown }).publish; // the class's own again
    }
    watcher.close();
  });

  it('a draining instance sends what it gathered before its engine closes', async () => {
    const chat = uniqueChat();
    const watcher = await h.member(10, chat, 1);
    const inst = await h.gateway({ PRESENCE_BATCH_MS: '10000' });
    const i = h.instances.indexOf(inst);
    const members = [await h.member(11, chat, i), await h.member(12, chat, i), await h.member(13, chat, i)];
    await watcher.next({ type: 'presence', user_id: 11, status: 'online' });
    await expectNone(watcher, { type: 'presence_batch' }, 300);
    const from = watcher.frames.length;
    await inst.gateway.shutdown();
    await waitFor(() => [11, 12, 13].every((u) => !onlineSeenBy(watcher, chat).has(u)), 5000, 'watcher sees the drained members offline');
    assert.ok(watcher.frames.slice(from).some(isPresence));
    for (const c of [watcher, ...members]) c.close();
  });
});
