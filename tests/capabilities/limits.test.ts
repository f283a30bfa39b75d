import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ClientOptions } from 'ws';
import { TestClient, expectNone, sleep, type Frame } from '../support/client.js';
import { ENGINE_MODES, metric, uniqueChat, useHarness, waitFor, type Harness, type Instance } from '../support/harness.js';

/** Resolves with `p`, or rejects once `ms` have passed (generous bounds only: the machine is shared). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function open(inst: Instance, options: ClientOptions = {}): Promise<TestClient> {
  return TestClient.connect(inst.wsUrl, options);
}

async function join(h: Harness, inst: Instance, user: number | string, chat: number | string, options: ClientOptions = {}): Promise<TestClient> {
  const token = await h.token(user);
  const c = await open(inst, options);
  await c.register(token, chat);
  return c;
}

/** The connection is open and answers an application ping. */
async function alive(c: TestClient, timeoutMs = 3000): Promise<void> {
  assert.ok(c.isOpen, 'connection should still be open');
  const pong = await c.request({ type: 'ping' }, { type: 'pong' }, timeoutMs);
  assert.deepEqual(pong, { type: 'pong' });
}

/** `member` is alive, and a newcomer's message in the same chat reaches it; closes both. */
async function chatStillWorks(member: TestClient, newcomer: () => Promise<TestClient>, id: string): Promise<void> {
  await alive(member);
  const third = await newcomer();
  await third.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
  await member.next((f) => f.type === 'message' && (f.data as { id: string }).id === id);
  member.close();
  third.close();
}

type Raw = { raw: string | Buffer; binary?: boolean };

/**
 * Sends `frame`, expects exactly one `error` carrying `expected` (a key set to undefined must be
 * absent), then checks the connection is still open and answers ping.
 */
async function rejected(c: TestClient, frame: object | Raw, expected: Record<string, unknown>): Promise<Frame> {
  const from = c.frames.length;
  if ('raw' in frame) c.sendRaw((frame as Raw).raw, (frame as Raw).binary ?? false);
  else c.send(frame);
  const err = await c.next({ type: 'error' }, 3000, from);
  const shown = `${JSON.stringify(frame).slice(0, 200)} → ${JSON.stringify(err)}`;
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(err[k], v, `${k} of ${shown}`);
  assert.equal(typeof err.message, 'string', shown);
  assert.ok(String(err.message).length > 0, shown);
  await alive(c);
  assert.equal(c.frames.slice(from).filter((f) => f.type === 'error').length, 1, `exactly one error for ${shown}`);
  return err;
}

const BAD_CHAT_IDS: unknown[] = [0, -1, 1.5, 2 ** 53, 'a b', '', 'x'.repeat(65), 'a/b', true, null, [1], { id: 1 }];

const messageIds = (c: TestClient): string[] => c.all({ type: 'message' }).map((f) => (f.data as { id: string }).id);

for (const mode of ENGINE_MODES) {
  describe(`limits [${mode}]`, () => {
    // Instance 0: tight limits. Other behaviours get their own gateway via h.gateway(env).
    const h = useHarness(mode, { MAX_MESSAGE_BYTES: '4096', RATE_LIMIT_PER_SEC: '5', RATE_LIMIT_BURST: '5', MAX_CHATS_PER_CONNECTION: '2', SHUTDOWN_TIMEOUT_MS: '1000' });
    const base = () => h.instances[0]!;

    it('a frame of exactly MAX_MESSAGE_BYTES is accepted; one byte more closes 1009; another connection is unaffected', async () => {
      const chat = uniqueChat();
      const a = await join(h, base(), 1, chat);
      const b = await join(h, base(), 2, chat);
      const frameOf = (id: string, bytes: number) => {
        const empty = JSON.stringify({ type: 'message', data: { id, ciphertext: '' } });
        return JSON.stringify({ type: 'message', data: { id, ciphertext: 'x'.repeat(bytes - Buffer.byteLength(empty)) } });
      };
      const exact = frameOf(`ok-${chat}`, 4096);
      assert.equal(Buffer.byteLength(exact), 4096);
      const from = a.frames.length;
      a.sendRaw(exact);
      await a.next({ type: 'ack', id: `ok-${chat}` }, 3000, from);
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `ok-${chat}`);

      const over = frameOf(`big-${chat}`, 4097);
      assert.equal(Buffer.byteLength(over), 4097);
      a.sendRaw(over);
      const { code } = await within(a.closed, 3000, 'close of the oversized sender');
      assert.equal(code, 1009);
      assert.equal(h.api.requests.filter((r) => r.op === 'save' && (r.body as { id?: string }).id === `big-${chat}`).length, 0);

      // Another connection of the same chat keeps working.
      await chatStillWorks(b, () => join(h, base(), 3, chat), `after-${chat}`);
    });

    it('token bucket: the burst passes, the next frame gets rate_limited (retryable), the rest read with it are dropped unanswered; later it passes again', async () => {
      const chat = uniqueChat();
      const a = await join(h, base(), 1, chat);
      const b = await join(h, base(), 2, chat);
      const ids = Array.from({ length: 7 }, (_, i) => `rl${i}-${chat}`);
      await sleep(1100); // the register cost a token too: let the bucket fill up again
      const from = a.frames.length;
      // One tick: the five burst tokens, then two messages and a typing over the limit.
      for (const id of ids.slice(0, 6)) a.send({ type: 'message', data: { id, ciphertext: 'x' } });
      a.send({ type: 'typing', chat_id: chat });
      a.send({ type: 'message', data: { id: ids[6], ciphertext: 'x' } });

      for (const id of ids.slice(0, 5)) {
        const ack = await a.next({ type: 'ack', id }, 3000, from);
        assert.equal(ack.duplicate, false);
      }
      const err = await a.next({ type: 'error', id: ids[5] }, 3000, from);
      assert.deepEqual(err, { type: 'error', code: 'rate_limited', message: err.message, op: 'message', id: ids[5], chat_id: chat, retryable: true, retry_after_ms: 1000 });
      // Over the limit the connection is not read for a second; what was read with it is dropped.
      await sleep(1300);
      await alive(a);
      // Nothing over the limit was saved or broadcast.
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === ids[4]);
      await expectNone(b, (f) => f.type === 'typing' || (f.type === 'message' && !ids.slice(0, 5).includes((f.data as { id: string }).id)), 200);
      assert.deepEqual(messageIds(b), ids.slice(0, 5));
      const saved = h.api.requests.filter((r) => r.op === 'save' && ids.includes((r.body as { id?: string }).id ?? '')).map((r) => (r.body as { id: string }).id);
      assert.deepEqual(saved, ids.slice(0, 5));
      assert.equal(a.frames.slice(from).filter((f) => f.type === 'error' || f.type === 'ack').length, 6, 'the burst and the first rejection are answered');

      // The bucket refills at RATE_LIMIT_PER_SEC: the rejected one passes now.
      const ack = await a.request({ type: 'message', data: { id: ids[5], ciphertext: 'x' } }, { type: 'ack', id: ids[5] });
      assert.equal(ack.duplicate, false);
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === ids[5]);
      a.close();
      b.close();
    });

    it('exactly 10 × RATE_LIMIT_BURST rejections in a row keep the connection open', async () => {
      const chat = uniqueChat();
      const a = await join(h, base(), 1, chat);
      await sleep(1100);
      const from = a.frames.length;
      for (let i = 0; i < 5 + 50; i++) a.send({ type: 'typing', chat_id: chat });
      await waitFor(() => a.frames.length - from >= 1, 3000, 'rate_limited answer');
      // A second without a rejection ends the row (and the pause); then a ping (which costs a token) is answered.
      await sleep(1300);
      await alive(a);
      const limited = a.frames.slice(from).filter((f) => f.type === 'error' && f.code === 'rate_limited').length;
      // The first rejection of each read is answered; frames read with it are dropped (a refill may let a second read in).
      assert.ok(limited >= 1 && limited <= 3, `rate_limited answers: ${JSON.stringify(a.frames.slice(from))}`);
      assert.ok(a.isOpen);
      await a.request({ type: 'message', data: { id: `reset-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      a.close();
    });

    it('a connection that keeps sending while limited (> 10 × RATE_LIMIT_BURST rejected in a row) is closed 1008; others unaffected', async () => {
      const chat = uniqueChat();
      const flooder = await join(h, base(), 1, chat);
      const other = await join(h, base(), 2, chat);
      const from = flooder.frames.length;
      for (let i = 0; i < 5 + 200; i++) flooder.send({ type: 'message', data: { id: `fl${i}-${chat}`, ciphertext: 'x' } });
      const { code } = await within(flooder.closed, 5000, 'flooder closed');
      assert.equal(code, 1008);
      const limited = flooder.frames.slice(from).filter((f) => f.type === 'error' && f.code === 'rate_limited');
      // The first rejection is answered; frames read with it are dropped unanswered but count, so the row passes 10 × burst.
      assert.ok(limited.length >= 1 && limited.length <= 5, `rate_limited answers before the close: ${limited.length}`);
      assert.ok(limited.every((f) => f.retryable === true));
      // Nothing over the limit was saved: at most the burst (plus a refill) of the first ids.
      await sleep(300);
      const saved = h.api.requests.filter((r) => r.op === 'save' && String((r.body as { id?: string }).id).endsWith(`-${chat}`));
      assert.ok(saved.length <= 7, `saved ${saved.length}`);
      const allowed = new Set(Array.from({ length: 7 }, (_, i) => `fl${i}-${chat}`));
      assert.ok(saved.every((r) => allowed.has((r.body as { id: string }).id)), 'a rate-limited message was saved');

      await chatStillWorks(other, () => join(h, base(), 3, chat), `ok-${chat}`);
    });

    it('a flood from one connection does not delay another connection’s pong or message delivery', async () => {
      const inst = await h.gateway({ RATE_LIMIT_PER_SEC: '1000000', RATE_LIMIT_BURST: '1000000', MAX_BUFFERED_BYTES: '67108864' });
      const chat = uniqueChat();
      const flooder = await join(h, inst, 1, chat);
      const sender = await join(h, inst, 2, chat);
      const receiver = await join(h, inst, 3, chat);
      const garbage = [
        '{not json',
        JSON.stringify({ type: 'nope' }),
        JSON.stringify({ type: 'message', data: { id: 'bad id', ciphertext: 'x' } }),
        JSON.stringify({ type: 'typing', chat_id: chat }),
        JSON.stringify({ type: 'ping' }),
      ];
      let sent = 0;
      let flooding = true;
      const flood = (async () => {
        while (flooding && flooder.isOpen) {
          for (let i = 0; i < 200; i++) flooder.sendRaw(garbage[sent++ % garbage.length]!);
          await new Promise((r) => setImmediate(r));
        }
      })();
      try {
        await waitFor(() => sent >= 2000, 5000, 'flood under way');
        for (let round = 0; round < 50 && (round < 5 || sent < 6000); round++) {
          let started = Date.now();
          await sender.request({ type: 'ping' }, { type: 'pong' }, 2000);
          const pongMs = Date.now() - started;
          assert.ok(pongMs < 2000, `pong took ${pongMs} ms`);
          const id = `q${round}-${chat}`;
          started = Date.now();
          sender.send({ type: 'message', data: { id, ciphertext: 'x' } });
          await receiver.next((f) => f.type === 'message' && (f.data as { id: string }).id === id, 2000);
          const deliveryMs = Date.now() - started;
          assert.ok(deliveryMs < 2000, `delivery took ${deliveryMs} ms`);
        }
        assert.ok(sent >= 6000, `the flooder sent ${sent} frames meanwhile`);
      } finally {
        flooding = false;
        await flood;
      }
      // The flooder itself was answered, not dropped (its limit is huge).
      await alive(flooder, 10_000);
      assert.ok(flooder.all({ type: 'error', code: 'bad_request' }).length > 100);
      assert.ok(flooder.all({ type: 'error', code: 'unsupported_type' }).length > 100);
      for (const c of [flooder, sender, receiver]) c.close();
    });

    it('register timeout: a connection that never registers is closed 4408; a registered one stays open', async () => {
      // 1.5 s: the first register on a new instance is answered within it on a loaded machine too.
      const inst = await h.gateway({ REGISTER_TIMEOUT_MS: '1500' });
      const token = await h.token(1);
      const started = Date.now();
      const registered = await open(inst);
      await registered.register(token, uniqueChat());
      const idle = await open(inst);
      const failed = await open(inst);
      // A failed register does not count as registering.
      const err = await failed.request({ type: 'register', token: 'not-a-token', chat_id: uniqueChat() }, { type: 'error' });
      assert.equal(err.code, 'unauthorized');

      const { code } = await within(idle.closed, 5000, 'idle connection closed');
      assert.equal(code, 4408);
      assert.ok(Date.now() - started >= 1400, 'closed before REGISTER_TIMEOUT_MS');
      assert.equal((await within(failed.closed, 5000, 'failed-register connection closed')).code, 4408);

      await sleep(Math.max(0, started + 3200 - Date.now()));
      await alive(registered);
      registered.close();
    });

    it('ping/pong liveness: a peer that does not answer WebSocket pings is dropped; a normal one stays', async () => {
      const inst = await h.gateway({ PING_INTERVAL_MS: '500' });
      const silent = await open(inst, { autoPong: false });
      // Counted from the connection's start: on a loaded machine the first ping may come before the register's answer.
      let pings = 0;
      silent.ws.on('ping', () => pings++);
      await silent.register(await h.token(1), uniqueChat());
      const normal = await join(h, inst, 2, uniqueChat());
      let normalPings = 0;
      normal.ws.on('ping', () => normalPings++);
      const started = Date.now();
      await within(silent.closed, 6000, 'silent peer dropped');
      const elapsed = Date.now() - started;
      assert.ok(pings >= 1, 'the gateway sent WebSocket pings');
      assert.ok(elapsed < 6000, `dropped after ${elapsed} ms`);
      assert.equal((await silent.closed).code, 1006);
      assert.ok((await metric(inst, 'message_service_connection_closes_total', { code: '1006' })) >= 1, 'the drop is counted');

      await sleep(Math.max(0, started + 2500 - Date.now()));
      assert.ok(normalPings >= 2, `normal client saw ${normalPings} pings`);
      await alive(normal);
      normal.close();
    });

    it('slow consumer: a receiver that stops reading is closed; a fast receiver in the chat gets every message', async () => {
      const inst = await h.gateway({ RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000', MAX_BUFFERED_BYTES: '262144', MAX_MESSAGE_BYTES: '40960' });
      const chat = uniqueChat();
      const sender = await join(h, inst, 1, chat);
      const fast = await join(h, inst, 2, chat);
      const slow = await join(h, inst, 3, chat);
      const before = await metric(inst, 'message_service_slow_consumer_closes_total');
      slow.ws.pause();

      const ciphertext = 'c'.repeat(32 * 1024);
      const ids: string[] = [];
      // Kernel socket buffers absorb a few MB before the gateway's own backlog grows.
      for (let batch = 0; batch < 60; batch++) {
        const batchIds = Array.from({ length: 10 }, (_, i) => `s${batch * 10 + i}-${chat}`);
        for (const id of batchIds) sender.send({ type: 'message', data: { id, ciphertext } });
        ids.push(...batchIds);
        await sender.next({ type: 'ack', id: batchIds.at(-1) }, 10_000);
        if ((await metric(inst, 'message_service_slow_consumer_closes_total')) > before) break;
      }
      await waitFor(async () => (await metric(inst, 'message_service_slow_consumer_closes_total')) > before, 5000, 'slow-consumer close');
      assert.equal(await metric(inst, 'message_service_slow_consumer_closes_total'), before + 1);

      // The fast receiver got every message, in order, and was not closed.
      const last = ids.at(-1);
      await fast.next((f) => f.type === 'message' && (f.data as { id: string }).id === last, 10_000);
      assert.deepEqual(messageIds(fast), ids);
      assert.equal(sender.all({ type: 'ack' }).length, ids.length);
      await alive(fast);
      await alive(sender);

      // The slow one is gone: once it reads again it sees the end of the connection.
      slow.ws.resume();
      const { code } = await within(slow.closed, 10_000, 'slow consumer closed');
      assert.ok(code === 1013 || code === 1006, `close code ${code}`);
      assert.ok(messageIds(slow).length < ids.length, 'the slow consumer did not get everything');

      // The gateway forgot it: further messages reach the fast one, no error for the sender.
      await sender.request({ type: 'message', data: { id: `after-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await fast.next((f) => f.type === 'message' && (f.data as { id: string }).id === `after-${chat}`);
      sender.close();
      fast.close();
    });

    it('ALLOWED_ORIGINS: another Origin gets HTTP 403; an allowed one connects', async () => {
      const inst = await h.gateway({ ALLOWED_ORIGINS: 'https://chat.example.com, https://app.example.com' });
      await assert.rejects(open(inst, { origin: 'https://evil.example.com' }), (err: { status?: number }) => err.status === 403);
      await assert.rejects(open(inst, { origin: 'https://chat.example.com.evil.net' }), (err: { status?: number }) => err.status === 403);
      const ok = await open(inst, { origin: 'https://app.example.com' });
      await ok.register(await h.token(1), uniqueChat());
      await alive(ok);
      const ok2 = await open(inst, { origin: 'https://chat.example.com' });
      await alive(ok2);
      ok.close();
      ok2.close();
      // Without ALLOWED_ORIGINS any Origin is accepted.
      const any = await open(base(), { origin: 'https://evil.example.com' });
      await alive(any);
      any.close();
    });

    it('MAX_CHATS_PER_CONNECTION: the next chat is refused with bad_request, the connection stays open', async () => {
      const [c1, c2, c3] = [uniqueChat(), uniqueChat(), uniqueChat()];
      const token = await h.token(1);
      const a = await open(base());
      await a.register(token, c1);
      await a.register(token, c2);
      await rejected(a, { type: 'register', token, chat_id: c3 }, { code: 'bad_request', op: 'register', chat_id: c3, retryable: false });
      // Re-registering a chat it already has is idempotent and not refused.
      const again = await a.register(token, c1);
      assert.equal(again.chat_id, c1);
      // The refused chat really is not joined: its messages do not arrive.
      const b = await join(h, base(), 2, c3);
      const from = a.frames.length;
      await b.request({ type: 'message', data: { id: `m-${c3}`, ciphertext: 'x' } }, { type: 'ack' });
      await expectNone(a, { type: 'message' }, 200, from);
      await sleep(1100); // five frames so far: let the bucket refill
      // Leaving one makes room.
      await a.request({ type: 'unregister', chat_id: c2 }, { type: 'unregistered' });
      await a.register(token, c3);
      a.close();
      b.close();
    });
  });

  describe(`chat limit under load [${mode}]`, () => {
    // 150 connections of one user at once: MAX_CONNECTIONS_PER_USER is not what this is about.
    const h = useHarness(mode, { MAX_CHATS_PER_CONNECTION: '2', SHUTDOWN_TIMEOUT_MS: '1000', MAX_CONNECTIONS_PER_USER: '0' });

    it('registering MAX_CHATS_PER_CONNECTION chats back to back is never refused, even with many connections at once', async () => {
      // A chat whose register has answered `registered` must count once toward the limit, also
      // while the gateway is still announcing the user's presence in it.
      const token = await h.token(1);
      const refusals: Frame[] = [];
      for (let round = 0; round < 3; round++) {
        const full: TestClient[] = [];
        const clients = await Promise.all(
          Array.from({ length: 150 }, async () => {
            const c = await open(h.instances[0]!);
            let registered = 0;
            for (const chat of [uniqueChat(), uniqueChat()]) {
              const answer = await c.request({ type: 'register', token, chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error', 10_000);
              if (answer.type === 'registered') registered++;
              else refusals.push(answer);
            }
            if (registered === 2) full.push(c);
            return c;
          }),
        );
        // The limit itself still holds for a connection that has its two chats.
        if (full[0] !== undefined) await rejected(full[0], { type: 'register', token, chat_id: uniqueChat() }, { code: 'bad_request', op: 'register', retryable: false });
        for (const client of clients) client.close();
        await Promise.all(clients.map((c) => c.closed));
      }
      assert.deepEqual(refusals.slice(0, 3), [], `${refusals.length} of 900 registrations refused`);
    });
  });

  describe(`error codes from the wire [${mode}]`, () => {
    const h = useHarness(mode, { RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000', UPSTREAM_TIMEOUT_MS: '2000', MAX_MESSAGE_BYTES: '65536', SHUTDOWN_TIMEOUT_MS: '1000' });
    const gw = () => h.instances[0]!;

    /** A registered connection to a fresh chat, plus another member who would see broadcasts. */
    async function pair(): Promise<{ chat: number; a: TestClient; b: TestClient }> {
      const chat = uniqueChat();
      return { chat, a: await join(h, gw(), 1, chat), b: await join(h, gw(), 2, chat) };
    }
    const no = { retryable: false };

    it('bad_request: invalid JSON, not an object, missing or non-string type', async () => {
      const { a, b } = await pair();
      for (const raw of ['{not json', '', '{"type":"ping"', '{"type":"ping"}{"type":"ping"}']) {
        await rejected(a, { raw }, { code: 'bad_request', op: undefined, ...no });
      }
      for (const raw of ['[]', '[{"type":"ping"}]', '"ping"', '42', 'null', 'true']) {
        await rejected(a, { raw }, { code: 'bad_request', op: undefined, ...no });
      }
      for (const frame of [{}, { chat_id: 1 }, { type: 5 }, { type: null }, { type: ['ping'] }, { type: { ping: 1 } }]) {
        await rejected(a, frame, { code: 'bad_request', op: undefined, ...no });
      }
      assert.equal(b.all({ type: 'error' }).length, 0);
      a.close();
      b.close();
    });

    it('bad_request: wrong field types name the op, the message id and the chat', async () => {
      const { chat, a, b } = await pair();
      const token = await h.token(1);
      const msg = (data: Record<string, unknown>, top: Record<string, unknown> = {}) => ({ type: 'message', ...top, data: { id: 'w1', ciphertext: 'x', ...data } });
      const cases: Array<[object, Record<string, unknown>]> = [
        [msg({ ciphertext: 5 }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ ciphertext: null }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ nonce: 7 }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ envelopes: [] }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ envelopes: 'k' }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ message_type: '' }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ message_type: 'x'.repeat(33) }), { op: 'message', id: 'w1', chat_id: chat }],
        [msg({ id: 12 }), { op: 'message', id: undefined, chat_id: chat }],
        [{ type: 'message', data: 'hello' }, { op: 'message', id: undefined, chat_id: chat }],
        [{ type: 'message' }, { op: 'message', chat_id: chat }],
        [{ type: 'edit_message', data: { id: 'w1', ciphertext: 1 } }, { op: 'edit_message', id: 'w1', chat_id: chat }],
        [{ type: 'delete_message', data: { id: ['w1'] } }, { op: 'delete_message', chat_id: chat }],
        [{ type: 'register', token: 5, chat_id: chat }, { op: 'register', chat_id: chat }],
        [{ type: 'register', token: '', chat_id: chat }, { op: 'register', chat_id: chat }],
        [{ type: 'register', chat_id: chat }, { op: 'register', chat_id: chat }],
        [{ type: 'unregister' }, { op: 'unregister' }],
        [{ type: 'typing', chat_id: { id: chat } }, { op: 'typing' }],
        // chat_id and data.chat_id disagree
        [msg({ chat_id: chat + 1 }, { chat_id: chat }), { op: 'message', id: 'w1' }],
      ];
      for (const [frame, ctx] of cases) await rejected(a, frame, { code: 'bad_request', ...ctx, ...no });
      // Two chats and no chat_id: ambiguous.
      const other = uniqueChat();
      await a.register(token, other);
      await rejected(a, msg({ id: 'amb' }), { code: 'bad_request', op: 'message', id: 'amb', ...no });
      // None of it reached the main API or the other member.
      assert.equal(h.api.requests.filter((r) => r.op === 'save' && ['w1', 'amb'].includes((r.body as { id?: string }).id ?? '')).length, 0);
      await expectNone(b, { type: 'message' }, 100);
      a.close();
      b.close();
    });

    it('bad_request: bad id patterns (message id, chat_id, sender_id)', async () => {
      const { chat, a, b } = await pair();
      const token = await h.token(1);
      for (const id of ['has space', '', 'x'.repeat(65), 'a/b', 'a.b', 'é', '../x']) {
        await rejected(a, { type: 'message', data: { id, ciphertext: 'x' } }, { code: 'bad_request', op: 'message', id: undefined, chat_id: chat, ...no });
      }
      for (const chatId of BAD_CHAT_IDS) {
        await rejected(a, { type: 'register', token, chat_id: chatId }, { code: 'bad_request', op: 'register', ...no });
        await rejected(a, { type: 'message', chat_id: chatId, data: { id: 'p1', ciphertext: 'x' } }, { code: 'bad_request', op: 'message', id: 'p1', ...no });
      }
      await rejected(a, { type: 'message', data: { id: 'p2', ciphertext: 'x', sender_id: 'no spaces allowed' } }, { code: 'bad_request', op: 'message', id: 'p2', ...no });
      await rejected(a, { type: 'unregister', chat_id: 'a b' }, { code: 'bad_request', op: 'unregister', ...no });
      assert.equal(a.all({ type: 'registered' }).length, 1);
      // Still registered to its chat.
      await a.request({ type: 'message', data: { id: `p3-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `p3-${chat}`);
      assert.deepEqual(messageIds(b), [`p3-${chat}`]);
      a.close();
      b.close();
    });

    it('a register/unregister error never names a chat the request did not target', async () => {
      // The connection is registered to `chat`; a register for an invalid chat id must not come
      // back as `error op:"register" chat_id:<chat>` — a client would take that as its
      // registration to `chat` having failed.
      const { chat, a, b } = await pair();
      const token = await h.token(1);
      const misattributed: Frame[] = [];
      for (const chatId of BAD_CHAT_IDS) {
        const err = await rejected(a, { type: 'register', token, chat_id: chatId }, { code: 'bad_request', op: 'register', ...no });
        if (err.chat_id === chat) misattributed.push(err);
      }
      const un = await rejected(a, { type: 'unregister', chat_id: 'a b' }, { code: 'bad_request', op: 'unregister', ...no });
      if (un.chat_id === chat) misattributed.push(un);
      assert.deepEqual(misattributed, [], 'errors naming the connection’s other chat');
      a.close();
      b.close();
    });

    it('bad_request: bad created_at, empty or missing ciphertext, binary frame', async () => {
      const { chat, a, b } = await pair();
      for (const created_at of ['yesterday', '2024-01-01', '2024-13-01T00:00:00Z', '2024-01-01T25:00:00Z', '1704110400', '']) {
        await rejected(a, { type: 'message', data: { id: 'c1', ciphertext: 'x', created_at } }, { code: 'bad_request', op: 'message', id: 'c1', chat_id: chat, ...no });
      }
      await rejected(a, { type: 'message', data: { id: 'c2', ciphertext: 'x', created_at: 1704110400 } }, { code: 'bad_request', op: 'message', id: 'c2', chat_id: chat, ...no });
      await rejected(a, { type: 'message', data: { id: 'c3', ciphertext: '' } }, { code: 'bad_request', op: 'message', id: 'c3', chat_id: chat, ...no });
      await rejected(a, { type: 'message', data: { id: 'c4' } }, { code: 'bad_request', op: 'message', id: 'c4', chat_id: chat, ...no });
      await rejected(a, { type: 'edit_message', data: { id: 'c5', ciphertext: '' } }, { code: 'bad_request', op: 'edit_message', id: 'c5', chat_id: chat, ...no });
      const valid = JSON.stringify({ type: 'message', data: { id: 'c6', ciphertext: 'x' } });
      await rejected(a, { raw: Buffer.from(valid), binary: true }, { code: 'bad_request', op: undefined, ...no });
      await rejected(a, { raw: Buffer.from([0, 1, 2, 255]), binary: true }, { code: 'bad_request', op: undefined, ...no });
      assert.equal(h.api.requests.filter((r) => r.op === 'save' && /^c[1-6]$/.test((r.body as { id?: string }).id ?? '')).length, 0);
      await expectNone(b, { type: 'message' }, 100);
      a.close();
      b.close();
    });

    it('bad input that the gateway cannot forward is the client’s error, not upstream_unavailable', async () => {
      // Found by tests/capabilities/fuzz.test.ts. The main API is healthy throughout, so a
      // retryable upstream_unavailable would send a client into retrying a request that can
      // never succeed (bad input gets a clear error; §2: upstream_unavailable is for
      // 5xx / timeout / refused).
      const { chat, a, b } = await pair();
      const clientFault = (f: Frame) => (f.code === 'bad_request' || f.code === 'too_large' || f.code === 'unauthorized') && f.retryable === false;
      const problems: string[] = [];
      // Pass-through fields nested deeper than the gateway can re-encode for the main API.
      const deep = '['.repeat(20_000) + ']'.repeat(20_000);
      for (const [name, raw] of [
        ['message data.extra', `{"type":"message","data":{"id":"deep1","ciphertext":"x","extra":${deep}}}`],
        ['message data.envelopes', `{"type":"message","data":{"id":"deep2","ciphertext":"x","envelopes":{"k":${deep}}}}`],
        ['edit_message data.envelopes', `{"type":"edit_message","data":{"id":"deep3","ciphertext":"x","envelopes":{"k":${deep}}}}`],
      ] as const) {
        const from = a.frames.length;
        a.sendRaw(raw);
        const err = await a.next({ type: 'error' }, 3000, from);
        // Refused before any field is used, and still named, so a client can match it.
        const [op, id] = [name.split(' ')[0], /"id":"(deep\d)"/.exec(raw)![1]];
        if (!clientFault(err) || err.op !== op || err.id !== id || err.chat_id !== chat) problems.push(`${name}: ${JSON.stringify(err)}`);
        await alive(a);
      }
      // Tokens that cannot travel in an Authorization header.
      for (const token of ['abc\ndef', 'abc\u0000def', 'tok\u007f', '😀']) {
        const chat2 = uniqueChat();
        const err = await a.request({ type: 'register', token, chat_id: chat2 }, { type: 'error', chat_id: chat2 });
        if (!clientFault(err) || err.op !== 'register') problems.push(`register token ${JSON.stringify(token)}: ${JSON.stringify(err)}`);
        await alive(a);
      }
      await expectNone(b, { type: 'message' }, 100);
      assert.equal(h.api.requests.filter((r) => r.op === 'save' && chat === (r.body as { chat_id?: number })?.chat_id).length, 0);
      assert.deepEqual(problems, []);
      a.close();
      b.close();
    });

    it('unsupported_type for an unknown type', async () => {
      const { a } = await pair();
      for (const type of ['nope', '', 'Message', 'PING', 'registered', 'ack', '__proto__', 'constructor', 'toString']) {
        await rejected(a, { type, chat_id: 1 }, { code: 'unsupported_type', ...no });
      }
      a.close();
    });

    it('unauthorized: a bad or expired token on register', async () => {
      const chat = uniqueChat();
      const a = await open(gw());
      await rejected(a, { type: 'register', token: 'not-a-jwt', chat_id: chat }, { code: 'unauthorized', op: 'register', chat_id: chat, ...no });
      const expired = await h.api.mintToken(1, { expired: true });
      await rejected(a, { type: 'register', token: expired, chat_id: chat }, { code: 'unauthorized', op: 'register', chat_id: chat, ...no });
      // Not registered after all that.
      await rejected(a, { type: 'message', chat_id: chat, data: { id: 'u1', ciphertext: 'x' } }, { code: 'not_registered', op: 'message', id: 'u1', chat_id: chat, ...no });
      a.close();
    });

    it('forbidden: sender_id spoofing is refused and nothing is saved or sent', async () => {
      const { chat, a, b } = await pair();
      const savesBefore = h.api.requests.filter((r) => r.op === 'save').length;
      await rejected(a, { type: 'message', data: { id: 'spoof1', ciphertext: 'x', sender_id: 2 } }, { code: 'forbidden', op: 'message', id: 'spoof1', chat_id: chat, ...no });
      await rejected(a, { type: 'message', data: { id: 'spoof2', ciphertext: 'x', sender_id: '2' } }, { code: 'forbidden', op: 'message', id: 'spoof2', chat_id: chat, ...no });
      await a.request({ type: 'message', data: { id: `real-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await rejected(a, { type: 'edit_message', data: { id: `real-${chat}`, ciphertext: 'y', sender_id: 2 } }, { code: 'forbidden', op: 'edit_message', id: `real-${chat}`, chat_id: chat, ...no });
      await sleep(100);
      const saves = h.api.requests.filter((r) => r.op === 'save').slice(savesBefore);
      assert.deepEqual(saves.map((r) => (r.body as { id: string }).id), [`real-${chat}`]);
      assert.equal(h.api.requests.filter((r) => r.op === 'edit' && r.path.includes(`real-${chat}`)).length, 0);
      // The sender id given as the verified user (number or string spelling) is fine.
      await a.request({ type: 'message', data: { id: `own-${chat}`, ciphertext: 'x', sender_id: '1' } }, { type: 'ack' });
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `own-${chat}`);
      assert.deepEqual(messageIds(b), [`real-${chat}`, `own-${chat}`]);
      assert.equal(b.all({ type: 'edit_message' }).length, 0);
      a.close();
      b.close();
    });

    it('forbidden: registering as a different user on the same connection', async () => {
      const { chat, a, b } = await pair();
      const chat2 = uniqueChat();
      await rejected(a, { type: 'register', token: await h.token(2), chat_id: chat2 }, { code: 'forbidden', op: 'register', chat_id: chat2, ...no });
      // Still the first user in the first chat only.
      await a.request({ type: 'message', data: { id: `still-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const saved = h.api.requests.filter((r) => r.op === 'save').at(-1);
      assert.equal((saved?.body as { sender_id: number }).sender_id, 1);
      await rejected(a, { type: 'message', chat_id: chat2, data: { id: 'x2', ciphertext: 'x' } }, { code: 'not_registered', op: 'message', id: 'x2', chat_id: chat2, ...no });
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `still-${chat}`);
      a.close();
      b.close();
    });

    it('not_registered: requests before register, for another chat, unregister of an unknown chat', async () => {
      const fresh = await open(gw());
      await rejected(fresh, { type: 'message', data: { id: 'n1', ciphertext: 'x' } }, { code: 'not_registered', op: 'message', id: 'n1', ...no });
      await rejected(fresh, { type: 'typing' }, { code: 'not_registered', op: 'typing', ...no });
      await rejected(fresh, { type: 'delete_message', data: { id: 'n1' } }, { code: 'not_registered', op: 'delete_message', id: 'n1', ...no });
      const { chat, a } = await pair();
      const elsewhere = uniqueChat();
      await rejected(a, { type: 'message', chat_id: elsewhere, data: { id: 'n2', ciphertext: 'x' } }, { code: 'not_registered', op: 'message', id: 'n2', chat_id: elsewhere, ...no });
      await rejected(a, { type: 'edit_message', data: { id: 'n3', ciphertext: 'x', chat_id: elsewhere } }, { code: 'not_registered', op: 'edit_message', id: 'n3', chat_id: elsewhere, ...no });
      await rejected(a, { type: 'typing', chat_id: elsewhere }, { code: 'not_registered', op: 'typing', chat_id: elsewhere, ...no });
      await rejected(a, { type: 'unregister', chat_id: elsewhere }, { code: 'not_registered', op: 'unregister', chat_id: elsewhere, ...no });
      assert.ok(chat !== elsewhere);
      fresh.close();
      a.close();
    });

    it('not_found: edit or delete of an unknown message id', async () => {
      const { chat, a, b } = await pair();
      await rejected(a, { type: 'edit_message', data: { id: `ghost-${chat}`, ciphertext: 'x' } }, { code: 'not_found', op: 'edit_message', id: `ghost-${chat}`, chat_id: chat, ...no });
      await rejected(a, { type: 'delete_message', data: { id: `ghost-${chat}` } }, { code: 'not_found', op: 'delete_message', id: `ghost-${chat}`, chat_id: chat, ...no });
      await expectNone(b, (f) => f.type === 'edit_message' || f.type === 'delete_message', 100);
      a.close();
      b.close();
    });

    it('too_large: the main API answers 413', async () => {
      const { chat, a, b } = await pair();
      h.api.addFault({ op: 'save', status: 413, times: 1 });
      await rejected(a, { type: 'message', data: { id: `tl-${chat}`, ciphertext: 'x' } }, { code: 'too_large', op: 'message', id: `tl-${chat}`, chat_id: chat, ...no });
      await expectNone(b, { type: 'message' }, 150);
      a.close();
      b.close();
    });

    it('rate_limited: over the token bucket', async () => {
      const inst = await h.gateway({ RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '2' });
      const chat = uniqueChat();
      const a = await join(h, inst, 1, chat);
      await sleep(2100); // the register took one of the two tokens
      a.send({ type: 'typing', chat_id: chat });
      a.send({ type: 'typing', chat_id: chat });
      const err = await a.request({ type: 'delete_message', data: { id: 'rl1' } }, { type: 'error' });
      assert.deepEqual(err, { type: 'error', code: 'rate_limited', message: err.message, op: 'delete_message', id: 'rl1', chat_id: chat, retryable: true, retry_after_ms: 1000 });
      assert.equal(h.api.requests.filter((r) => r.op === 'delete' && r.path.endsWith('/rl1')).length, 0);
      await sleep(1100);
      await alive(a);
      a.close();
    });

    it('upstream_unavailable: the main API answers 503 (save and verify)', async () => {
      const { chat, a, b } = await pair();
      h.api.addFault({ op: 'save', status: 503, times: 1 });
      await rejected(a, { type: 'message', data: { id: `ua-${chat}`, ciphertext: 'x' } }, { code: 'upstream_unavailable', op: 'message', id: `ua-${chat}`, chat_id: chat, retryable: true });
      await expectNone(b, { type: 'message' }, 150);
      const chat2 = uniqueChat();
      h.api.addFault({ op: 'verify', status: 503, times: 1 });
      await rejected(a, { type: 'register', token: await h.token(1), chat_id: chat2 }, { code: 'upstream_unavailable', op: 'register', chat_id: chat2, retryable: true });
      a.close();
      b.close();
    });

    it('internal: verify answers 200 with an empty object', async () => {
      const chat = uniqueChat();
      const a = await open(gw());
      h.api.addFault({ op: 'verify', body: {}, times: 1 });
      await rejected(a, { type: 'register', token: await h.token(1), chat_id: chat }, { code: 'internal', op: 'register', chat_id: chat, ...no });
      // Not registered: a retry with a sane main API works.
      await rejected(a, { type: 'typing', chat_id: chat }, { code: 'not_registered', op: 'typing', chat_id: chat, ...no });
      await a.register(await h.token(1), chat);
      a.close();
    });
  });
}
