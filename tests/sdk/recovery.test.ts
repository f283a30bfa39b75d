import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { ENGINE_MODES, Harness, uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { RelayProxy } from './proxy.js';
import { cuttablePair, fast, proxy, sdk, text, type Recorded, sdkPair } from './support.js';

/** Recovery after a reconnect (`register.since`, per-chat `seq` + `epoch`): each broadcast reaches the app exactly once, in order. */

/** Everything the app saw of a chat, in order: "message:id", "edit:id", "delete:id", "gap". */
function seen(r: Recorded): string[] {
  return r.events.flatMap((e) => {
    const ev = e.event as { message?: { id: string }; edit?: { id: string }; id?: string };
    if (e.type === 'message') return [`message:${ev.message!.id}`];
    if (e.type === 'edit') return [`edit:${ev.edit!.id}`];
    if (e.type === 'delete') return [`delete:${ev.id}`];
    if (e.type === 'gap') return ['gap'];
    return [];
  });
}

for (const mode of ENGINE_MODES) {
  describe(`SDK recovery with since/seq/epoch [${mode}]`, () => {
    const h = useHarness(mode);

    it('registered, broadcasts and acks carry positions; the receiver position follows the acks', async () => {
      const { chatId, a, b, chatA, chatB } = await sdkPair(h);
      const start = (await chatB.ready()).position!;
      await chatA.ready();
      const first = await chatA.send(text('1'));
      const second = await chatA.send(text('2'));
      assert.equal(first.seq, start.seq + 1);
      assert.equal(second.seq, start.seq + 2);
      assert.equal(second.epoch, start.epoch);
      await b.next('message', (e) => e.message.id === second.id);
      assert.deepEqual(b.all('message').map((e) => e.seq), [start.seq + 1, start.seq + 2]);
      assert.deepEqual(chatB.position, { seq: second.seq, epoch: start.epoch });
      assert.deepEqual(chatA.position, { seq: second.seq, epoch: start.epoch }, "the sender's own acks advance its position");
    });

    it('after a cut, what the chat missed is replayed once and in order, then registered says recovered', async () => {
      const { chatId, p, a, b, chatA } = await cuttablePair(h, 'b');
      const before = await chatA.send(text('before'), { id: `r0-${chatId}` });
      await b.next('message', (e) => e.message.id === before.id);
      p.refusing = true;
      p.cut();
      await b.next('state', (e) => e.state === 'disconnected');
      const ids = [1, 2, 3].map((n) => `r${n}-${chatId}`);
      for (const id of ids) await chatA.send(text(id), { id });
      await chatA.edit(ids[0]!, text('edited'));
      await chatA.delete(ids[1]!);
      p.refusing = false;
      const again = await b.next('registered', (e) => e.recovered !== undefined, 5000);
      assert.equal(again.recovered, true);
      assert.deepEqual(seen(b), [`message:${before.id}`, ...ids.map((id) => `message:${id}`), `edit:${ids[0]}`, `delete:${ids[1]}`]);
      const replayed = p.links[1]!.fromGateway.map((f) => f.type);
      assert.deepEqual(replayed.slice(0, 6), ['message', 'message', 'message', 'edit_message', 'delete_message', 'registered'], 'replay comes before registered');
      assert.deepEqual(b.all('gap'), []);
    });

    it("a replay includes the client's own write that was in flight at the cut: not shown to itself, acked duplicate", async () => {
      const chatId = uniqueChat();
      const p = await proxy(h);
      const a = await sdk(h, 1, { url: p.url, ...fast });
      const b = await sdk(h, 2);
      const chatA = a.client.chat(chatId);
      const chatB = b.client.chat(chatId);
      await chatA.ready();
      await chatB.ready();
      const mine = `own-${chatId}`;
      h.api.addFault({ op: 'save', delayMs: 400, times: 1 });
      const sent = chatA.send(text('mine'), { id: mine });
      await new Promise((r) => setTimeout(r, 100));
      p.refusing = true;
      p.cut();
      await waitFor(() => h.api.messages.has(mine), 3000, 'own save finished');
      await b.next('message', (e) => e.message.id === mine);
      const theirs = await chatB.send(text('theirs'));
      p.refusing = false;
      assert.equal((await sent).duplicate, true);
      await a.next('message', (e) => e.message.id === theirs.id);
      const replay = p.links[1]!.fromGateway.filter((f) => f.type === 'message').map((f) => (f.data as { id: string }).id);
      assert.deepEqual(replay, [mine, theirs.id], 'the gateway replayed both');
      assert.deepEqual(a.messageIds(), [theirs.id], 'the app saw only the other member’s');
      assert.deepEqual(chatA.position, chatB.position);
    });

    it('a position the gateway cannot resume from is reported as a gap (fetch it from the main API)', async () => {
      const chatId = uniqueChat();
      const a = await sdk(h, 1);
      const chat = a.client.chat(chatId, { since: { seq: 5, epoch: 'an-epoch-long-gone' } });
      const registered = await chat.ready();
      assert.equal(registered.recovered, false);
      const gap = await a.next('gap');
      assert.deepEqual(gap.from, { seq: 5, epoch: 'an-epoch-long-gone' });
      assert.deepEqual(gap.to, registered.position);
      assert.ok(['epoch_changed', 'too_far_behind', 'no_history'].includes(gap.reason));
      assert.deepEqual(chat.position, registered.position);
    });

    it('exactly once, in order, while the receiver is cut again and again under a steady stream', async () => {
      const { chatId, p, a, b, chatA } = await cuttablePair(h, 'b');
      const ids = Array.from({ length: 40 }, (_, i) => `s${i}-${chatId}`);
      const sending = (async () => {
        for (const id of ids) {
          await chatA.send(text(id), { id });
          await new Promise((r) => setTimeout(r, 10));
        }
      })();
      for (let i = 0; i < 4; i++) {
        await new Promise((r) => setTimeout(r, 80));
        p.cut();
      }
      await sending;
      await b.next('message', (e) => e.message.id === ids.at(-1), 10_000);
      assert.deepEqual(b.messageIds(), ids);
      assert.deepEqual(b.all('gap'), []);
    });
  });
}

for (const mode of ENGINE_MODES) {
  describe(`SDK recovery past the gateway's history [${mode}]`, () => {
    const h = useHarness(mode, { HISTORY_SIZE: '3' });

    it('more missed than the history keeps: a gap to fetch, then live broadcasts exactly once', async () => {
      const chatId = uniqueChat();
      const p = await proxy(h);
      const a = await sdk(h, 1);
      const b = await sdk(h, 2, { url: p.url, ...fast });
      const chatA = a.client.chat(chatId);
      const chatB = b.client.chat(chatId);
      await chatA.ready();
      const start = (await chatB.ready()).position!;
      p.refusing = true;
      p.cut();
      await b.next('state', (e) => e.state === 'disconnected');
      for (let i = 0; i < 5; i++) await chatA.send(text(`missed ${i}`));
      p.refusing = false;
      const gap = await b.next('gap', () => true, 5000);
      assert.equal(gap.reason, 'too_far_behind');
      assert.deepEqual(gap.from, start);
      assert.deepEqual(gap.to, { seq: start.seq + 5, epoch: start.epoch });
      assert.deepEqual(b.all('message'), [], 'nothing replayed: the app fetches the range');
      await waitFor(() => b.all('registered').length === 2, 3000, 're-registered');
      const live = await chatA.send(text('live'));
      await b.next('message', (e) => e.message.id === live.id);
      assert.deepEqual(b.messageIds(), [live.id]);
      assert.deepEqual(chatB.position, { seq: start.seq + 6, epoch: start.epoch });
    });
  });
}

describe('SDK recovery when the stream itself restarts [memory]', () => {
  it('a restarted in-memory gateway has lost its history: the returning client gets a gap, never a duplicate', async () => {
    const h = new Harness('memory');
    await h.start();
    const g0 = await h.gateway();
    const lb = await RelayProxy.start(g0.wsUrl);
    try {
      const chatId = uniqueChat();
      const b = await sdk(h, 2, { url: lb.url, ...fast });
      const chatB = b.client.chat(chatId);
      await chatB.ready();
      const a = await sdk(h, 1, { url: lb.url, ...fast });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      await chatA.send(text('one'));
      await b.next('message');
      const g1 = await h.gateway();
      lb.target = g1.wsUrl;
      await g0.gateway.shutdown();
      const gap = await b.next('gap', () => true, 5000);
      assert.ok(['epoch_changed', 'no_history', 'too_far_behind'].includes(gap.reason));
      await waitFor(() => a.all('registered').length === 2, 5000, 'sender re-registered');
      const after = await chatA.send(text('two'));
      await b.next('message', (e) => e.message.id === after.id);
      assert.equal(b.all('message').length, 2);
      a.client.close();
      b.client.close();
    } finally {
      await lb.close();
      await h.close();
    }
  });
});

describe('SDK and a broadcast published late [redis]', () => {
  it("the sender's ack had no position; the late broadcast gives it one: no hole, no missed gap, the message not shown twice", async () => {
    const h = new Harness('redis', { PUBLISH_RETRY_MS: '500' });
    await h.start();
    try {
      await h.gateway();
      const { chatId, a, b, chatA, chatB } = await sdkPair(h);
      await chatA.ready();
      const start = (await chatB.ready()).position!;
      h.api.addFault({ op: 'save', delayMs: 400, times: 1 });
      const sending = chatA.send(text('late'));
      await sleep(150);
      await h.redis!.stop();
      const ack = await sending;
      assert.equal(ack.seq, undefined, 'acked without a position');
      await h.redis!.startProcess();
      const got = await b.next('message', (e) => e.message.id === ack.id, 10_000);
      // (Redis came back empty: the late broadcast starts a new epoch, which both apps report.)
      await waitFor(() => chatA.position?.seq === got.seq && chatA.position?.epoch === got.epoch, 5000, "the sender's position reaches the late broadcast");
      // Then a live one from the other side: both positions move on together.
      const next = await chatB.send(text('after'));
      await a.next('message', (e) => e.message.id === next.id, 5000);
      assert.deepEqual(chatA.position, { seq: next.seq, epoch: next.epoch });
      assert.deepEqual(a.all('gap').map((g) => g.reason), b.all('gap').map((g) => g.reason), 'the sender saw no gap the receiver did not');
      assert.ok(a.all('gap').every((g) => g.reason !== 'missed'), 'no hole reported as missed');
      assert.deepEqual(a.all('message').map((e) => e.message.id), [next.id], 'its own message not handed back to it');
      assert.ok(got.seq! > start.seq);
      a.client.close();
      b.client.close();
    } finally {
      await h.close();
    }
  });
});
