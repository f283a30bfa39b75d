import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { ClientError, createClient, MemoryStorage, type OutboxEntry } from '../../packages/client/src/index.js';
import { sleep } from '../support/client.js';
import { ENGINE_MODES, uniqueChat, useHarness } from '../support/harness.js';
import { sdk, text, sdkPair } from './support.js';

for (const mode of ENGINE_MODES) {
  describe(`SDK messaging against the gateway [${mode}]`, () => {
    const h = useHarness(mode);

    it('send resolves on the ack; the other member gets the message once, the sender does not', async () => {
      const { chatId, a, b, chatA, chatB } = await sdkPair(h);
      const registered = await chatB.ready();
      assert.equal(registered.userId, 2);
      await chatA.ready();
      const ack = await chatA.send({ ...text('hello'), message_type: 'text', extra: { kept: true } });
      assert.equal(ack.op, 'message');
      assert.equal(ack.duplicate, false);
      assert.match(ack.id, /^[0-9a-f-]{36}$/);
      const got = await b.next('message');
      assert.equal(got.message.id, ack.id);
      assert.equal(got.message.sender_id, 1);
      assert.deepEqual(got.message.extra, { kept: true });
      assert.equal(Buffer.from(got.message.ciphertext, 'base64').toString(), 'hello');
      await sleep(150);
      assert.deepEqual(a.messageIds(), [], 'not echoed to the sending connection');
      assert.deepEqual(b.messageIds(), [ack.id]);
      assert.deepEqual(a.states(), ['connecting', 'connected']);
    });

    it('presence_batch: members joining together are applied to online and emitted one event per user', async () => {
      const chatId = uniqueChat();
      const watcher = await sdk(h, 30);
      const chat = watcher.client.chat(chatId);
      await chat.ready();
      const others = await Promise.all([31, 32, 33, 34].map((u) => sdk(h, u)));
      await Promise.all(others.map((o) => o.client.chat(chatId).ready()));
      for (let i = 0; i < 50 && chat.online.length < 5; i++) await sleep(20);
      assert.deepEqual([...chat.online].sort(), [30, 31, 32, 33, 34]);
      for (const o of others.slice(0, 3)) o.client.close();
      for (let i = 0; i < 50 && chat.online.length > 2; i++) await sleep(20);
      assert.deepEqual([...chat.online].sort(), [30, 34]);
      const events = watcher.all('presence');
      for (const u of [31, 32, 33]) assert.ok(events.some((e) => e.userId === u && e.status === 'offline'), `offline of ${u} emitted`);
      others[3]!.client.close();
    });

    it('a resend of a saved id resolves duplicate:true and is not delivered again', async () => {
      const chatId = uniqueChat();
      const a = await sdk(h, 1);
      const b = await sdk(h, 2);
      const chatA = a.client.chat(chatId);
      await b.client.chat(chatId).ready();
      const id = `dup-${chatId}`;
      assert.equal((await chatA.send(text('x'), { id })).duplicate, false);
      const again = await chatA.send(text('x'), { id });
      assert.equal(again.duplicate, true);
      assert.equal(again.seq, undefined, 'nothing was broadcast, so no position');
      await b.next('message');
      await sleep(150);
      assert.deepEqual(b.messageIds(), [id]);
    });

    it('edit and delete reach the other member; presence and typing arrive as events', async () => {
      const chatId = uniqueChat();
      const a = await sdk(h, 1);
      const b = await sdk(h, 2);
      const chatB = b.client.chat(chatId);
      await chatB.ready();
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      assert.deepEqual(await b.next('presence'), { chatId, userId: 1, status: 'online' });
      assert.deepEqual([...chatB.online].sort(), [1, 2]);
      const { id } = await chatA.send(text('v1'));
      await chatA.edit(id, text('v2'));
      chatA.typing();
      chatA.typing(); // throttled: at most one a second leaves the client
      await chatA.delete(id);
      await b.next('delete');
      const edit = await b.next('edit');
      assert.equal(edit.edit.id, id);
      assert.equal(Buffer.from(edit.edit.ciphertext, 'base64').toString(), 'v2');
      assert.deepEqual(await b.next('typing'), { chatId, userId: 1 });
      assert.deepEqual(
        b.events.filter((e) => ['message', 'edit', 'delete'].includes(e.type)).map((e) => e.type),
        ['message', 'edit', 'delete'],
      );
      assert.equal(b.all('typing').length, 1);
      a.client.close();
      assert.deepEqual(await b.next('presence', (e) => e.status === 'offline'), { chatId, userId: 1, status: 'offline' });
      assert.deepEqual(chatB.online, [2]);
    });

    it('refusals reject with a typed ClientError carrying the code; the chat stays usable', async () => {
      const { chatId, a, b, chatA, chatB } = await sdkPair(h);
      await chatB.ready();
      await assert.rejects(chatA.edit('no-such-message', text('x')), (err: unknown) => {
        assert.ok(err instanceof ClientError);
        assert.equal(err.code, 'not_found');
        assert.equal(err.retryable, false);
        assert.equal(err.details.id, 'no-such-message');
        return true;
      });
      const { id } = await chatA.send(text('mine'));
      await assert.rejects(chatB.delete(id), { name: 'ClientError', code: 'forbidden' });
      await assert.rejects(chatA.send(text('x'), { id: 'not a valid id' }), { code: 'bad_request' });
      await assert.rejects(chatA.send(text('x'.repeat(70_000))), { code: 'too_large' });
      assert.equal((await chatB.send(text('still here'))).duplicate, false);
      await a.next('message', (e) => e.message.sender_id === 2);
    });

    it('a chat the main API refuses: ready() and pending sends reject forbidden, no reconnect loop', async () => {
      const chatId = uniqueChat();
      h.api.setMembers(chatId, [2]);
      try {
        const a = await sdk(h, 1);
        const chat = a.client.chat(chatId);
        const sent = chat.send(text('never'));
        await assert.rejects(chat.ready(), { code: 'forbidden' });
        await assert.rejects(sent, { code: 'forbidden' });
        const gone = await a.next('unregistered');
        assert.equal(gone.error.code, 'forbidden');
        await sleep(300);
        assert.deepEqual(a.states(), ['connecting', 'connected', 'disconnected'], 'closed once no chat is left, and stays closed');
        assert.equal(a.all('state').at(-1)?.retryInMs, null);
        // The same client can still open chats it may join.
        const other = a.client.chat(uniqueChat());
        await other.ready();
        assert.equal(a.client.state, 'connected');
      } finally {
        h.api.setMembers(chatId, null);
      }
    });

    it('leave(): writes already made are still acked, later ones reject closed, no more events', async () => {
      const { chatId, a, b, chatA, chatB } = await sdkPair(h);
      await chatA.ready();
      await chatB.ready();
      const last = chatA.send(text('bye'));
      chatA.leave();
      await assert.rejects(chatA.send(text('too late')), { code: 'closed' });
      assert.equal((await last).duplicate, false);
      await b.next('presence', (e) => e.status === 'offline');
      await chatB.send(text('after you left'));
      await sleep(150);
      assert.deepEqual(a.all('message'), []);
      assert.equal(a.client.state, 'disconnected', 'no chat left: the connection is closed');
    });

    it('sends are paced: 60 messages at once are all acked, in order, without rate_limited', async () => {
      const chatId = uniqueChat();
      const a = await sdk(h, 1);
      const b = await sdk(h, 2);
      const chatA = a.client.chat(chatId);
      await b.client.chat(chatId).ready();
      const acks = await Promise.all(Array.from({ length: 60 }, (_, i) => chatA.send(text(`n${i}`), { id: `p${i}-${chatId}` })));
      assert.equal(acks.length, 60);
      await b.next('message', (e) => e.message.id === `p59-${chatId}`, 15_000);
      assert.deepEqual(b.messageIds(), Array.from({ length: 60 }, (_, i) => `p${i}-${chatId}`));
      assert.equal(a.all('failed').length, 0);
    });

    it('an async outbox storage that answers out of order does not reorder a chat\'s writes', async () => {
      const chatId = uniqueChat();
      const stored: OutboxEntry[] = [];
      let delay = 150;
      const storage = {
        load: () => [],
        put: async (entry: OutboxEntry) => {
          await sleep((delay = Math.max(0, delay - 100))); // first put slow, the next ones fast
          stored.push(entry);
        },
        remove: () => undefined,
      };
      const a = await sdk(h, 1, { storage });
      const b = await sdk(h, 2);
      const chatA = a.client.chat(chatId);
      await b.client.chat(chatId).ready();
      await chatA.ready();
      const ids = ['x1', 'x2', 'x3'].map((x) => `${x}-${chatId}`);
      await Promise.all(ids.map((id) => chatA.send(text(id), { id })));
      assert.deepEqual(stored.map((e) => e.data.id), [ids[1], ids[2], ids[0]], 'the storage finished out of order');
      await b.next('message', (e) => e.message.id === ids[2]);
      assert.deepEqual(b.messageIds(), ids);
    });

    it('a write made in the same tick as the client is sent once (not restored from the storage it was just put in)', async () => {
      const chatId = uniqueChat();
      const token = await h.token(1);
      const id = `first-tick-${chatId}`;
      const client = createClient({ url: h.instances[0]!.wsUrl, token, WebSocket });
      try {
        const sent: string[] = [];
        client.on('sent', (e) => sent.push(e.ack.id));
        const ack = await client.chat(chatId).send(text('at once'), { id });
        assert.equal(ack.duplicate, false);
        await sleep(100);
        assert.equal(h.api.requests.filter((r) => r.op === 'save' && (r.body as { id: string }).id === id).length, 1, 'saved once');
        assert.deepEqual(sent, [id]);
      } finally {
        client.close();
      }
    });

    it('entries restored from the outbox storage are sent once their chat is open', async () => {
      const chatId = uniqueChat();
      const storage = new MemoryStorage();
      const entry: OutboxEntry = { key: 'k1', op: 'message', chatId, data: { id: `restored-${chatId}`, ...text('from last session') }, order: 1 };
      storage.put(entry);
      const b = await sdk(h, 2);
      await b.client.chat(chatId).ready();
      const a = await sdk(h, 1, { storage });
      a.client.chat(chatId);
      const sent = await a.next('sent');
      assert.equal(sent.ack.id, entry.data.id);
      await b.next('message', (e) => e.message.id === entry.data.id);
      assert.deepEqual(storage.load(), [], 'removed from the storage once acked');
    });
  });
}
