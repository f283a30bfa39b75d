import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { expectNone, presence } from '../support/client.js';
import { ENGINE_MODES, uniqueChat, useHarness } from '../support/harness.js';

for (const mode of ENGINE_MODES) {
  describe(`messaging [${mode}]`, () => {
    const h = useHarness(mode);

    it('register answers registered with the online list including self', async () => {
      const chat = uniqueChat();
      const a = await h.member(1, chat);
      const first = a.frames.at(-1)!;
      assert.equal(typeof first.epoch, 'string');
      assert.deepEqual(first, { type: 'registered', chat_id: chat, user_id: 1, online: [1], seq: 0, epoch: first.epoch });
      const b = await h.connect();
      const reg = await b.register(await h.token(2), chat);
      assert.deepEqual([...(reg.online as number[])].sort(), [1, 2]);
      a.close();
      b.close();
    });

    it('message is saved, acked to the sender, broadcast to others but not echoed to the sending connection', async () => {
      const chat = uniqueChat();
      const a = await h.member(1, chat);
      const a2 = await h.member(1, chat); // the sender's other device
      const b = await h.member(2, chat);
      const from = a.frames.length;
      const data = { id: `m-${chat}`, message_type: 'text', ciphertext: 'Y2lwaGVy', nonce: 'bm9uY2U', envelopes: { '2': 'k' }, created_at: '2024-01-01T12:00:00Z', extra: { kept: true } };
      const ack = await a.request({ type: 'message', data }, { type: 'ack' });
      const epoch = (b.all({ type: 'registered' })[0]!).epoch;
      assert.deepEqual(ack, { type: 'ack', op: 'message', id: data.id, chat_id: chat, duplicate: false, seq: 1, epoch });
      const got = await b.next({ type: 'message' });
      assert.deepEqual(got, { seq: 1, epoch, type: 'message', chat_id: chat, data: { ...data, chat_id: chat, sender_id: 1 } });
      await a2.next({ type: 'message' });
      const saved = h.api.requests.filter((r) => r.op === 'save').at(-1);
      assert.deepEqual(saved?.body, { ...data, chat_id: chat, sender_id: 1 });
      assert.match(String(saved?.headers['x-request-id']), /^[0-9a-f-]{36}$/);
      assert.match(String(saved?.headers.authorization), /^Bearer ey/);
      await expectNone(a, { type: 'message' }, 150, from);
      for (const c of [a, a2, b]) c.close();
    });

    it('defaults: envelopes {}, message_type text, created_at now, sender_id set by the gateway', async () => {
      const chat = uniqueChat();
      const a = await h.member(7, chat);
      const b = await h.member(8, chat);
      await a.request({ type: 'message', chat_id: chat, data: { id: `d-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const got = await b.next({ type: 'message' });
      const data = got.data as Record<string, unknown>;
      assert.equal(data.sender_id, 7);
      assert.equal(data.message_type, 'text');
      assert.deepEqual(data.envelopes, {});
      assert.ok(Math.abs(Date.parse(String(data.created_at)) - Date.now()) < 60_000);
      const saved = h.api.requests.filter((r) => r.op === 'save').at(-1);
      assert.deepEqual(saved?.body, { id: `d-${chat}`, ciphertext: 'x', chat_id: chat, sender_id: 7, envelopes: {}, message_type: 'text', created_at: data.created_at });
      // A data object naming its chat and its (own) sender: those two are set by the gateway in place.
      await a.request({ type: 'message', data: { chat_id: chat, id: `e-${chat}`, sender_id: '7', ciphertext: 'y', extra: 1 } }, { type: 'ack' });
      const named = await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `e-${chat}`);
      const namedData = named.data as Record<string, unknown>;
      assert.deepEqual(Object.keys(namedData), ['chat_id', 'id', 'sender_id', 'ciphertext', 'extra', 'envelopes', 'message_type', 'created_at']);
      assert.deepEqual({ ...namedData, created_at: 'now' }, { chat_id: chat, id: `e-${chat}`, sender_id: 7, ciphertext: 'y', extra: 1, envelopes: {}, message_type: 'text', created_at: 'now' });
      a.close();
      b.close();
    });

    it('resend of a saved id: ack duplicate:true and no second broadcast', async () => {
      const { chat, a, b } = await h.pair();
      const msg = { type: 'message', data: { id: `dup-${chat}`, ciphertext: 'x' } };
      await a.request(msg, { type: 'ack' });
      await b.next({ type: 'message' });
      const ack2 = await a.request(msg, { type: 'ack' });
      assert.equal(ack2.duplicate, true);
      await expectNone(b, (f) => f.type === 'message' && b.all({ type: 'message' }).length > 1, 200);
      assert.equal(b.all({ type: 'message' }).length, 1);
      a.close();
      b.close();
    });

    it('a resend of an id saved but never broadcast (its instance died in between) is broadcast, once', async () => {
      const { chat, a, b } = await h.pair();
      const id = `orphan-${chat}`;
      // What a gateway killed between the main API's save and the publish leaves behind.
      h.api.messages.set(id, { id, chat_id: chat, sender_id: 1, ciphertext: 'x', saved_at: new Date().toISOString() });
      const msg = { type: 'message', data: { id, ciphertext: 'x' } };
      const ack = await a.request(msg, { type: 'ack' });
      assert.equal(ack.duplicate, true);
      assert.equal(typeof ack.seq, 'number', 'the resend was not broadcast');
      const got = await b.next({ type: 'message' });
      assert.equal((got.data as { id: string }).id, id);
      assert.equal(got.seq, ack.seq);
      // Now the history holds it: a further resend is a plain duplicate.
      const again = await a.request(msg, { type: 'ack' });
      assert.deepEqual([again.duplicate, again.seq], [true, undefined]);
      await expectNone(b, { type: 'message' }, 200, b.frames.indexOf(got) + 1);
      a.close();
      b.close();
    });

    it('a 409 stands in for a lost broadcast only for its own sender and chat, never for a deleted message or a 409 that does not say; one naming another sender or chat is bad_request', async () => {
      const { chat, a, b } = await h.pair();
      const c = await h.member(3, chat);
      const at = new Date().toISOString();
      // Another user's saved id, resent with a copy of its content: the resender gets no broadcast out of it.
      const theirs = `theirs-${chat}`;
      h.api.messages.set(theirs, { id: theirs, chat_id: chat, sender_id: 1, ciphertext: 'x', saved_at: at });
      const stolen = await c.request({ type: 'message', data: { id: theirs, ciphertext: 'x' } }, (f) => f.type === 'ack' || f.type === 'error');
      assert.deepEqual([stolen.type, stolen.code], ['error', 'bad_request'], 'not acked: this send was never saved');
      // Its own id, saved in another chat.
      const elsewhere = `elsewhere-${chat}`;
      h.api.messages.set(elsewhere, { id: elsewhere, chat_id: chat + 1, sender_id: 1, ciphertext: 'x', saved_at: at });
      const moved = await a.request({ type: 'message', data: { id: elsewhere, ciphertext: 'x' } }, (f) => f.type === 'ack' || f.type === 'error');
      assert.deepEqual([moved.type, moved.code], ['error', 'bad_request']);
      // Its own id, deleted since: a late resend must not bring it back.
      h.api.deleted.set(`gone-${chat}`, { chat_id: chat, deleted_by: 1 });
      const gone = await a.request({ type: 'message', data: { id: `gone-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      assert.deepEqual([gone.duplicate, gone.seq], [true, undefined]);
      // A 409 whose body does not say whose message it is.
      h.api.addFault({ op: 'save', status: 409, times: 1 });
      const silent = await a.request({ type: 'message', data: { id: `silent-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      assert.deepEqual([silent.duplicate, silent.seq], [true, undefined]);
      await expectNone(b, { type: 'message' }, 200);
      for (const x of [a, b, c]) x.close();
    });

    it('with HISTORY_SIZE=0 a 409 is never broadcast (nothing to check against)', async () => {
      const inst = await h.gateway({ HISTORY_SIZE: '0' });
      const chat = uniqueChat();
      const i = h.instances.indexOf(inst);
      const a = await h.member(1, chat, i);
      const b = await h.member(2, chat, i);
      const id = `orphan0-${chat}`;
      h.api.messages.set(id, { id, chat_id: chat, sender_id: 1, ciphertext: 'x', saved_at: new Date().toISOString() });
      const ack = await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      assert.deepEqual([ack.duplicate, ack.seq], [true, undefined]);
      await expectNone(b, { type: 'message' }, 200);
      a.close();
      b.close();
    });

    it('a delete the main API carried out after the gateway gave up on it: the resend is acked duplicate and broadcast, once', async () => {
      const inst = await h.gateway({ UPSTREAM_TIMEOUT_MS: '400' });
      const i = h.instances.indexOf(inst);
      const chat = uniqueChat();
      const a = await h.member(1, chat, i);
      const b = await h.member(2, chat, i);
      const id = `lost-del-${chat}`;
      await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      await b.next({ type: 'message' });
      // The main API deletes it, but answers after the gateway's timeout.
      h.api.addFault({ op: 'delete', delayMs: 700, times: 1 });
      const timedOut = await a.request({ type: 'delete_message', data: { id } }, { type: 'error' });
      assert.deepEqual([timedOut.code, timedOut.retryable], ['upstream_unavailable', true]);
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(h.api.deleted.has(id), 'the main API did delete it');
      // The resend, as the docs advise: the main API says "deleted, by you"; nobody heard of it, so it is broadcast now.
      const ack = await a.request({ type: 'delete_message', data: { id } }, { type: 'ack' });
      assert.equal(ack.duplicate, true);
      assert.equal(typeof ack.seq, 'number', 'broadcast in place of the lost one');
      const got = await b.next({ type: 'delete_message' });
      assert.deepEqual([got.data, got.seq], [{ id, deleted_by: 1 }, ack.seq]);
      // Now the history holds it: a further resend is a plain duplicate.
      const again = await a.request({ type: 'delete_message', data: { id } }, { type: 'ack' });
      assert.deepEqual([again.duplicate, again.seq], [true, undefined]);
      await expectNone(b, { type: 'delete_message' }, 200, b.frames.indexOf(got) + 1);
      a.close();
      b.close();
    });

    it('only the one who deleted a message gets a broadcast out of deleting it again; anyone else, and another chat, get not_found', async () => {
      const { chat, a, b } = await h.pair();
      const id = `del-twice-${chat}`;
      await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      await a.request({ type: 'delete_message', data: { id } }, { type: 'ack' });
      await b.next({ type: 'delete_message' });
      const mark = b.frames.length;
      assert.equal((await b.request({ type: 'delete_message', data: { id } }, { type: 'error' })).code, 'not_found');
      const c = await h.member(1, chat + 1);
      assert.equal((await c.request({ type: 'delete_message', data: { id } }, { type: 'error' })).code, 'not_found');
      // A 404 that does not say "deleted" is not_found for the deleter too.
      h.api.addFault({ op: 'delete', status: 404, times: 1 });
      assert.equal((await a.request({ type: 'delete_message', data: { id } }, { type: 'error' })).code, 'not_found');
      await expectNone(b, { type: 'delete_message' }, 200, mark);
      for (const x of [a, b, c]) x.close();
    });

    it('edit and delete: saved upstream, acked, broadcast with sender and deleted_by', async () => {
      const { chat, a, b } = await h.pair();
      const id = `e-${chat}`;
      await a.request({ type: 'message', data: { id, ciphertext: 'v1' } }, { type: 'ack' });
      const ack = await a.request({ type: 'edit_message', data: { id, ciphertext: 'v2', nonce: 'n2', envelopes: { a: 1 } } }, { type: 'ack' });
      const { epoch } = b.all({ type: 'registered' })[0]!;
      assert.deepEqual(ack, { type: 'ack', op: 'edit_message', id, chat_id: chat, duplicate: false, seq: 2, epoch });
      const edit = await b.next({ type: 'edit_message' });
      const ed = edit.data as Record<string, unknown>;
      assert.equal(edit.chat_id, chat);
      assert.deepEqual({ id: ed.id, ciphertext: ed.ciphertext, nonce: ed.nonce, envelopes: ed.envelopes, sender_id: ed.sender_id }, { id, ciphertext: 'v2', nonce: 'n2', envelopes: { a: 1 }, sender_id: 1 });
      assert.ok(!Number.isNaN(Date.parse(String(ed.edited_at))));
      const patch = h.api.requests.filter((r) => r.op === 'edit').at(-1);
      assert.equal(patch?.method, 'PATCH');
      assert.deepEqual(Object.keys(patch?.body as object).sort(), ['ciphertext', 'edited_at', 'envelopes', 'nonce']);
      const dack = await a.request({ type: 'delete_message', data: { id } }, { type: 'ack' });
      assert.equal(dack.op, 'delete_message');
      const del = await b.next({ type: 'delete_message' });
      assert.deepEqual(del, { seq: 3, epoch, type: 'delete_message', chat_id: chat, data: { id, deleted_by: 1 } });
      a.close();
      b.close();
    });

    it('edit and delete by another user are refused by the main API: forbidden, nothing broadcast', async () => {
      const { chat, a, b } = await h.pair();
      const id = `f-${chat}`;
      await a.request({ type: 'message', data: { id, ciphertext: 'v1' } }, { type: 'ack' });
      const from = a.frames.length;
      const err = await b.request({ type: 'edit_message', data: { id, ciphertext: 'evil' } }, { type: 'error' });
      assert.deepEqual(err, { type: 'error', code: 'forbidden', message: err.message, op: 'edit_message', id, chat_id: chat, retryable: false });
      const err2 = await b.request({ type: 'delete_message', data: { id } }, { type: 'error' });
      assert.equal(err2.code, 'forbidden');
      const err3 = await b.request({ type: 'delete_message', data: { id: 'nope' } }, { type: 'error' });
      assert.equal(err3.code, 'not_found');
      await expectNone(a, (f) => f.type === 'edit_message' || f.type === 'delete_message', 200, from);
      a.close();
      b.close();
    });

    it('presence: two devices of one user — offline only when the last leaves', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(9, chat);
      const d1 = await h.member(5, chat);
      await watcher.next(presence(5, 'online'));
      const d2 = await h.member(5, chat);
      const from = watcher.frames.length;
      d1.close();
      await expectNone(watcher, presence(5, 'offline'), 300, from);
      assert.equal(watcher.all(presence(5, 'online')).length, 1);
      d2.send({ type: 'unregister', chat_id: chat });
      await d2.next({ type: 'unregistered', chat_id: chat });
      await watcher.next(presence(5, 'offline'));
      const again = await h.connect();
      const reg = await again.register(await h.token(6), chat);
      assert.deepEqual([...(reg.online as number[])].sort(), [6, 9]);
      for (const c of [watcher, d2, again]) c.close();
    });

    it('typing is forwarded to others at most once a second per connection', async () => {
      const { chat, a, b } = await h.pair();
      for (let i = 0; i < 5; i++) a.send({ type: 'typing', chat_id: chat });
      await b.next({ type: 'typing', chat_id: chat, user_id: 1 });
      await expectNone(b, (f) => f.type === 'typing' && b.all({ type: 'typing' }).length > 1, 300);
      assert.equal(b.all({ type: 'typing' }).length, 1);
      assert.equal(a.all({ type: 'typing' }).length, 0);
      assert.equal(a.all({ type: 'error' }).length, 0);
      assert.equal(h.api.requests.filter((r) => r.path.includes('typing')).length, 0);
      a.close();
      b.close();
    });

    it('several chats per connection: chat_id required when ambiguous, top level or in data', async () => {
      const c1 = uniqueChat();
      const c2 = uniqueChat();
      const a = await h.connect();
      const tok = await h.token(1);
      await a.register(tok, c1);
      await a.register(tok, c2);
      const err = await a.request({ type: 'message', data: { id: 'amb', ciphertext: 'x' } }, { type: 'error' });
      assert.equal(err.code, 'bad_request');
      const ack1 = await a.request({ type: 'message', chat_id: c2, data: { id: `t-${c2}`, ciphertext: 'x' } }, { type: 'ack' });
      assert.equal(ack1.chat_id, c2);
      const ack2 = await a.request({ type: 'message', data: { id: `u-${c1}`, ciphertext: 'x', chat_id: c1 } }, { type: 'ack' });
      assert.equal(ack2.chat_id, c1);
      const again = await a.register(tok, c1);
      assert.equal(again.chat_id, c1);
      a.close();
    });

    it('unregister stops delivery; unregister of an unknown chat is not_registered', async () => {
      const { chat, a, b } = await h.pair();
      const un = await b.request({ type: 'unregister', chat_id: chat }, { type: 'unregistered' });
      assert.deepEqual(un, { type: 'unregistered', chat_id: chat });
      const from = b.frames.length;
      await a.request({ type: 'message', data: { id: `x-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await expectNone(b, { type: 'message' }, 200, from);
      const err = await b.request({ type: 'unregister', chat_id: chat }, { type: 'error' });
      assert.equal(err.code, 'not_registered');
      const err2 = await b.request({ type: 'message', chat_id: chat, data: { id: 'q', ciphertext: 'x' } }, { type: 'error' });
      assert.equal(err2.code, 'not_registered');
      a.close();
      b.close();
    });

    it('a message queued behind an unregister is refused not_registered, not saved or broadcast', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', delayMs: 200, times: 1 });
      a.send({ type: 'message', chat_id: chat, data: { id: `q1-${chat}`, ciphertext: 'x' } });
      a.send({ type: 'unregister', chat_id: chat });
      const err = await a.request({ type: 'message', chat_id: chat, data: { id: `q2-${chat}`, ciphertext: 'x' } }, { type: 'error' });
      assert.equal(err.code, 'not_registered');
      assert.equal(err.id, `q2-${chat}`);
      assert.deepEqual(a.all({ type: 'ack' }).map((f) => f.id), [`q1-${chat}`]);
      assert.equal(a.all({ type: 'unregistered' }).length, 1);
      await expectNone(b, (f) => f.type === 'message' && (f.data as { id: string }).id === `q2-${chat}`, 200);
      assert.ok(!h.api.messages.has(`q2-${chat}`));
      a.close();
      b.close();
    });

    it('ping is answered by pong', async () => {
      const a = await h.connect();
      assert.deepEqual(await a.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
      a.close();
    });

    it('string chat and user ids work end to end', async () => {
      const chat = `room:${uniqueChat()}`;
      const a = await h.member('alice', chat);
      const b = await h.member('bob.b', chat);
      await a.request({ type: 'message', data: { id: `s-1`, ciphertext: 'x', sender_id: 'alice' } }, { type: 'ack' });
      const got = await b.next({ type: 'message' });
      assert.equal(got.chat_id, chat);
      assert.equal((got.data as { sender_id: string }).sender_id, 'alice');
      a.close();
      b.close();
    });
  });
}
