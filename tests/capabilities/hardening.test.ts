import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TestClient, expectNone, sleep, type Frame, presence } from '../support/client.js';
import { ENGINE_MODES, metric, uniqueChat, useHarness, waitFor, type Harness } from '../support/harness.js';
import * as ws from 'ws';
import type { Socket } from 'node:net';

/** `ws`'s frame builder (public in `ws`, missing from its types): a deaf client writes masked frames by hand. */
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };

/**
 * What one connection may cost, and what it may not do after it is gone: every frame is
 * charged, registers and writes are bounded per connection, queued work dies with the socket,
 * and the main API's 401/403 end a registration.
 */

const verifiesFor = (h: Harness, chats: Set<number>) =>
  h.api.requests.filter((r) => r.op === 'verify' && chats.has(Number((r.body as { chat_id?: unknown }).chat_id))).length;
const savesOf = (h: Harness, prefix: string) => h.api.requests.filter((r) => r.op === 'save' && String((r.body as { id?: string }).id).startsWith(prefix)).length;
const presenceIn = (c: TestClient, from = 0) => c.frames.slice(from).filter((f) => f.type === 'presence' || f.type === 'presence_batch');
const errorsOf = (c: TestClient, code: string, from = 0) => c.frames.slice(from).filter((f) => f.type === 'error' && f.code === code);

for (const mode of ENGINE_MODES) {
  describe(`hardening: one connection costs a bounded amount [${mode}]`, () => {
    const h = useHarness(mode, { RATE_LIMIT_PER_SEC: '20', RATE_LIMIT_BURST: '50', MAX_CHATS_PER_CONNECTION: '100', AUTH_CACHE_TTL_MS: '0' });
    const gw = () => h.instances[0]!;
    const connect = () => TestClient.connect(gw().wsUrl);

    it('every frame costs a token: ping, register, unregister and garbage are answered rate_limited past the burst', async () => {
      const inst = await h.gateway({ RATE_LIMIT_PER_SEC: '100' });
      const c = await TestClient.connect(inst.wsUrl);
      const kinds = [{ type: 'ping' }, { type: 'unregister', chat_id: 5 }, { type: 'nope' }, { type: 'register', token: 'junk', chat_id: uniqueChat() }];
      // 150 against a burst of 50: past it even if a loaded machine spreads the writes over a
      // second of refill (100/s), and far from the 500 rejections in a row that close 1008.
      for (const frame of kinds) {
        const from = c.frames.length;
        for (let i = 0; i < 150; i++) c.send(frame);
        await waitFor(() => errorsOf(c, 'rate_limited', from).length >= 1, 3000, `rate_limited for ${frame.type}`);
        await sleep(1100); // refill the bucket (and end the row of rejections)
      }
      // Garbage that is not even JSON is charged as well.
      const from = c.frames.length;
      for (let i = 0; i < 150; i++) c.sendRaw('{nope');
      await waitFor(() => errorsOf(c, 'rate_limited', from).length >= 1, 3000, 'rate_limited for invalid JSON').catch((e: Error) => {
        throw new Error(`${e.message}: open=${c.isOpen} ${JSON.stringify(c.frames.slice(-3))}`);
      });
      c.close();
    });

    it('refresh with fresh tokens cannot multiply the verify rate by the chats: the calls past the first pace the next refresh at RATE_LIMIT_PER_SEC', async () => {
      const c = await connect();
      const chats = Array.from({ length: 21 }, () => uniqueChat());
      for (const chat of chats) await c.register(await h.token(1), chat);
      const asked = () => h.api.requests.filter((r) => r.op === 'verify').length;
      const before = asked();
      const first = await c.request({ type: 'refresh', token: await h.token(1, { expiresInSec: 120 }) }, (f) => f.type === 'refreshed' || f.type === 'error');
      assert.equal(first.type, 'refreshed');
      assert.equal(asked(), before + 21);
      // 20 calls beyond the first at 20 a second: the next refresh comes after a second.
      const paced = await c.request({ type: 'refresh', token: await h.token(1, { expiresInSec: 121 }) }, { type: 'error' });
      assert.equal(paced.code, 'rate_limited');
      assert.equal(paced.op, 'refresh');
      assert.equal(paced.retry_after_ms, undefined, 'nothing was dropped: not the bucket\'s pause');
      assert.match(paced.message as string, /refresh again in \d+ ms/);
      assert.equal(asked(), before + 21, 'a paced refresh asks nothing');
      await sleep(1100);
      const later = await c.request({ type: 'refresh', token: await h.token(1, { expiresInSec: 122 }) }, (f) => f.type === 'refreshed' || f.type === 'error');
      assert.equal(later.type, 'refreshed');
      assert.equal(asked(), before + 42);
      c.close();
    });

    it('MAX_CONNECTIONS_PER_USER: one connection too many of a user is refused at its register; another user, or a slot freed by a close, is not', async () => {
      const inst = await h.gateway({ MAX_CONNECTIONS_PER_USER: '2' });
      const chat = uniqueChat();
      const open = async () => TestClient.connect(inst.wsUrl);
      const [a, b, c] = [await open(), await open(), await open()];
      await a.register(await h.token(1), chat);
      await b.register(await h.token(1), uniqueChat());
      const refused = await c.request({ type: 'register', token: await h.token(1), chat_id: chat }, { type: 'error' });
      assert.deepEqual([refused.code, refused.op, refused.retryable], ['rate_limited', 'register', true]);
      assert.match(refused.message as string, /MAX_CONNECTIONS_PER_USER/);
      assert.equal(refused.retry_after_ms, undefined, 'nothing was dropped');
      // Nobody was told the refused connection came online, and another user is not limited.
      const other = await open();
      const reg = await other.register(await h.token(2), chat);
      assert.deepEqual([...(reg.online as number[])].sort(), [1, 2]);
      // Closing one frees its slot.
      a.close();
      await a.closed;
      await waitFor(async () => (await c.request({ type: 'register', token: await h.token(1), chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error')).type === 'registered', 3000, 'the freed slot');
      for (const x of [b, c, other]) x.close();
    });

    if (mode === 'memory') {
      it('connections that never registered hold at most half the main-API pool: a user\'s save is not queued behind their hanging verifies', async () => {
        const inst = await h.gateway({ UPSTREAM_CONNECTIONS: '8', UPSTREAM_TIMEOUT_MS: '4000' });
        const chat = uniqueChat();
        const user = await TestClient.connect(inst.wsUrl);
        await user.register(await h.token(1), chat);
        h.api.addFault({ op: 'verify', hang: true });
        const attackers: TestClient[] = [];
        try {
          // 6 connections × 4 registers with junk tokens (MAX_UPSTREAM_PER_CONNECTION each): 24 hanging verifies wanted.
          const junkChats = new Set<number>();
          for (let i = 0; i < 6; i++) {
            const c = await TestClient.connect(inst.wsUrl);
            attackers.push(c);
            for (let j = 0; j < 4; j++) {
              const junkChat = uniqueChat();
              junkChats.add(junkChat);
              c.send({ type: 'register', token: `junk-${i}-${j}`, chat_id: junkChat });
            }
          }
          await waitFor(() => verifiesFor(h, junkChats) >= 4, 5000, 'the anonymous share of the pool in use');
          await sleep(300);
          assert.equal(verifiesFor(h, junkChats), 4, 'verifies of unregistered connections at the main API (half of UPSTREAM_CONNECTIONS=8)');
          const ack = await user.request({ type: 'message', data: { id: `fair-${chat}`, ciphertext: 'x' } }, (f) => f.type === 'ack' || f.type === 'error', 3500);
          assert.equal(ack.type, 'ack');
          // Before any hanging verify timed out (each would be answered with an error): the save did not wait for one.
          assert.equal(attackers.flatMap((c) => c.all({ type: 'error' })).length, 0);
        } finally {
          h.api.clearFaults();
          for (const c of [user, ...attackers]) c.close();
        }
      });
    }

    it('a peer that ignores the close frame and keeps sending is dropped at once, not after the grace period', async () => {
      const inst = await h.gateway({ REGISTER_TIMEOUT_MS: '300' });
      const client = new ws.WebSocket(inst.wsUrl);
      await new Promise((r) => client.once('open', r));
      const socket = (client as unknown as { _socket: Socket })._socket;
      // Deaf: it never answers the close frame (ws would, from close()).
      (client as unknown as { close(): void }).close = () => undefined;
      let closedAt = 0;
      let droppedAt = 0;
      socket.on('close', () => (droppedAt = Date.now()));
      (client as unknown as { _receiver: { on(e: string, f: () => void): void } })._receiver.on('conclude', () => (closedAt ||= Date.now()));
      await waitFor(() => closedAt !== 0, 3000, 'the 4408 close frame');
      // ... and keeps writing frames straight to the socket.
      const frame = Buffer.concat(Sender.frame(Buffer.from('{"type":"ping"}'), { fin: true, opcode: 1, mask: true, readOnly: false, rsv1: false }));
      const burst = Buffer.concat(Array.from({ length: 2000 }, () => frame)); // ~40 KB
      while (droppedAt === 0 && Date.now() - closedAt < 3000) {
        if (!socket.destroyed) socket.write(burst);
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.ok(droppedAt !== 0, 'never dropped');
      assert.ok(droppedAt - closedAt < 700, `a deaf peer was read for ${droppedAt - closedAt} ms after the close`);
    });

    it('a junk-register flood: the connection is closed 1008, the main API sees a bounded number of verifies, and nothing after the close', async () => {
      h.api.addFault({ op: 'verify', delayMs: 300 });
      try {
        const watcherChat = uniqueChat();
        const watcher = await h.member(2, watcherChat);
        const c = await connect();
        const chats = new Set<number>([watcherChat]);
        const before = verifiesFor(h, chats);
        for (let i = 0; i < 3000; i++) {
          const chat = i % 2 === 0 ? watcherChat : uniqueChat();
          chats.add(chat);
          c.send({ type: 'register', token: `junk-${i}`, chat_id: chat });
        }
        // Closed for flooding (1008), or for five refused verifies in a row (4401) if those came
        // first (when the flood is read in small chunks, most of it waits out the one-second pause).
        const { code } = await c.closed;
        assert.ok([1008, 4401].includes(code), `closed ${code}`);
        await sleep(1500);
        const calls = verifiesFor(h, chats) - before;
        // 1008: before any verify was answered, so at most the 4 in flight (MAX_UPSTREAM_PER_CONNECTION).
        // 4401: with the fifth refusal, so the first 4 plus at most 4 started as those were refused.
        const bound = code === 1008 ? 4 : 8;
        assert.ok(calls <= bound, `${calls} verify calls reached the main API before a ${code} close (at most ${bound})`);
        await sleep(1000);
        assert.equal(verifiesFor(h, chats) - before, calls, 'no verify after the connection closed');
        assert.equal(presenceIn(watcher).length, 0);
        watcher.close();
      } finally {
        h.api.clearFaults();
      }
    });

    it('at most one register in flight per (connection, chat): the others are answered rate_limited and cost no verify', async () => {
      h.api.addFault({ op: 'verify', delayMs: 400 });
      try {
        const chat = uniqueChat();
        const token = await h.token(1);
        const c = await connect();
        for (let i = 0; i < 10; i++) c.send({ type: 'register', token, chat_id: chat });
        await c.next({ type: 'registered', chat_id: chat });
        await sleep(100);
        assert.equal(c.all({ type: 'registered' }).length, 1);
        const limited = c.all({ type: 'error', op: 'register' });
        assert.equal(limited.length, 9);
        assert.ok(limited.every((f) => f.code === 'rate_limited' && f.retryable === true && f.chat_id === chat));
        assert.equal(verifiesFor(h, new Set([chat])), 1);
        c.close();
      } finally {
        h.api.clearFaults();
      }
    });

    it('main-API calls in flight per connection are capped (MAX_UPSTREAM_PER_CONNECTION=4); the rest wait their turn', async () => {
      h.api.addFault({ op: 'verify', delayMs: 1500 });
      try {
        const token = await h.token(1);
        const chats = Array.from({ length: 10 }, () => uniqueChat());
        const c = await connect();
        const sentAt = Date.now();
        for (const chat of chats) c.send({ type: 'register', token, chat_id: chat });
        // The first four reach the main API (however slowly a loaded machine gets them there)…
        await waitFor(() => verifiesFor(h, new Set(chats)) >= 4, 5000, 'four verifies at the main API');
        // …and no fifth while they are in flight (each takes 1.5 s at the main API).
        await sleep(Math.max(0, 700 - (Date.now() - sentAt)));
        assert.equal(verifiesFor(h, new Set(chats)), 4, 'verifies at the main API while the first four are in flight');
        await waitFor(() => c.all({ type: 'registered' }).length === 10, 10_000, 'all ten registered');
        assert.equal(verifiesFor(h, new Set(chats)), 10);
        c.close();
      } finally {
        h.api.clearFaults();
      }
    });

    it('work queued when the socket closes is dropped: no verify, no save, no presence after the close', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(2, chat);
      const token = await h.token(1);
      // Registers queued behind a slow verify.
      h.api.addFault({ op: 'verify', delayMs: 500 });
      let chats: number[] = [];
      const before = verifiesFor(h, new Set([chat]));
      try {
        chats = Array.from({ length: 20 }, () => uniqueChat());
        const c = await connect();
        c.send({ type: 'register', token, chat_id: chat });
        for (const other of chats) c.send({ type: 'register', token, chat_id: other });
        await waitFor(() => verifiesFor(h, new Set([chat, ...chats])) - before >= 1, 3000, 'first verify');
        c.close();
        await c.closed;
        await sleep(1500);
        assert.ok(verifiesFor(h, new Set([chat, ...chats])) - before <= 4, 'queued registers reached the main API after the close');
        assert.deepEqual(presenceIn(watcher), [], 'presence changed after the close');
      } finally {
        h.api.clearFaults();
      }
      // Writes queued behind a slow save: the one at the main API finishes and is broadcast, the rest are dropped.
      const writer = await h.member(1, chat);
      const from = watcher.frames.length;
      h.api.addFault({ op: 'save', delayMs: 500 });
      try {
        for (let i = 0; i < 10; i++) writer.send({ type: 'message', data: { id: `q${i}-${chat}`, ciphertext: 'x' } });
        await waitFor(() => savesOf(h, `q0-${chat}`) === 1, 3000, 'first save at the main API');
        writer.close();
        await writer.closed;
        await watcher.next((f) => f.type === 'message' && (f.data as { id: string }).id === `q0-${chat}`);
        await sleep(1200);
        assert.equal(savesOf(h, `q`) - savesOf(h, `q0-`), 0, 'a queued save reached the main API after the close');
        assert.deepEqual(watcher.frames.slice(from).filter((f) => f.type === 'message').map((f) => (f.data as { id: string }).id), [`q0-${chat}`]);
      } finally {
        h.api.clearFaults();
      }
      watcher.close();
    });

    it('register/unregister churn reaches other members only as far as the bucket allows', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(2, chat);
      const token = await h.token(1);
      const c = await connect();
      const from = watcher.frames.length;
      for (let i = 0; i < 500; i++) {
        c.send({ type: 'register', token, chat_id: chat });
        c.send({ type: 'unregister', chat_id: chat });
      }
      const { code } = await c.closed;
      assert.equal(code, 1008);
      await sleep(1500);
      // 50 frames in the burst: at most 25 register/unregister pairs, two presence frames each.
      const seen = presenceIn(watcher, from).length;
      assert.ok(seen <= 50, `${seen} presence frames`);
      const frames = presenceIn(watcher, from);
      if (frames.length > 0) assert.ok(presence(1, 'offline')(frames.at(-1)!), 'the last word is offline');
      watcher.close();
    });
  });

  describe(`hardening: registrations and writes [${mode}]`, () => {
    const h = useHarness(mode, { RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000', MAX_CHATS_PER_CONNECTION: '2', MAX_PENDING_WRITES: '4', AUTH_CACHE_TTL_MS: '60000' });
    const gw = () => h.instances[0]!;
    const connect = () => TestClient.connect(gw().wsUrl);

    it('pending and duplicate registers count toward MAX_CHATS_PER_CONNECTION', async () => {
      h.api.addFault({ op: 'verify', delayMs: 300 });
      try {
        const [c1, c2, c3] = [uniqueChat(), uniqueChat(), uniqueChat()];
        const token = await h.token(1);
        const c = await connect();
        for (const chat of [c1, c1, c2, c3]) c.send({ type: 'register', token, chat_id: chat });
        await waitFor(() => c.all({ type: 'registered' }).length === 2, 5000, 'two registered');
        await sleep(400);
        assert.deepEqual(c.all({ type: 'registered' }).map((f) => f.chat_id).sort(), [c1, c2].sort());
        const refused = c.all({ type: 'error', op: 'register' });
        assert.deepEqual(refused.map((f) => [f.chat_id, f.code]).sort(), [[c1, 'rate_limited'], [c3, 'bad_request']].sort());
        c.close();
      } finally {
        h.api.clearFaults();
      }
    });

    it('five refused registers in a row close the connection 4401; a success resets the count', async () => {
      const token = await h.token(1);
      const steady = await connect();
      for (let i = 0; i < 4; i++) await steady.request({ type: 'register', token: `bad-${i}`, chat_id: uniqueChat() }, { type: 'error' });
      await steady.register(token, uniqueChat());
      for (let i = 0; i < 4; i++) await steady.request({ type: 'register', token: `bad-${i}`, chat_id: uniqueChat() }, { type: 'error' });
      assert.ok(steady.isOpen);
      const before = await metric(gw(), 'message_service_connection_closes_total', { code: '4401' });
      const bad = await connect();
      const chats = Array.from({ length: 6 }, () => uniqueChat());
      for (const chat of chats.slice(0, 5)) await bad.request({ type: 'register', token: 'not-a-token', chat_id: chat }, { type: 'error' });
      const { code } = await bad.closed;
      assert.equal(code, 4401);
      assert.equal(verifiesFor(h, new Set(chats)), 5);
      assert.equal(await metric(gw(), 'message_service_connection_closes_total', { code: '4401' }), before + 1);
      steady.close();
    });

    if (mode === 'memory') {
      it('a client that keeps getting closed 4401 writes one log line per 10 s, not one per connection (the metric counts them all)', async () => {
        const inst = await h.gateway({ MAX_CHATS_PER_CONNECTION: '100' });
        const lines = () => inst.logs.join('').split('\n').filter((l) => l.includes('too many refused registers')).length;
        for (let n = 0; n < 6; n++) {
          const c = await TestClient.connect(inst.wsUrl);
          for (let i = 0; i < 5; i++) c.send({ type: 'register', token: `junk-${n}-${i}`, chat_id: uniqueChat() });
          assert.equal((await c.closed).code, 4401);
        }
        assert.equal(await metric(inst, 'message_service_connection_closes_total', { code: '4401' }), 6);
        assert.equal(lines(), 1);
      });
    }

    it('an acceptance served from the verify cache does not break the row: junk refreshes between cached good ones still close 4401', async () => {
      const token = await h.token(1);
      const chat = uniqueChat();
      const c = await connect();
      await c.register(token, chat); // the main API's acceptance: the row starts at 0
      for (let i = 0; i < 4; i++) {
        assert.equal((await c.request({ type: 'refresh', token: `junk-${i}` }, { type: 'error' })).code, 'unauthorized');
        // Cached: it costs the main API nothing, so it must not buy the next guess.
        assert.equal((await c.request({ type: 'refresh', token }, (f) => f.type === 'refreshed' || f.type === 'error')).type, 'refreshed');
      }
      assert.ok(c.isOpen);
      await c.request({ type: 'refresh', token: 'junk-4' }, { type: 'error' });
      assert.equal((await c.closed).code, 4401);
    });

    it('queued writes are capped per connection (MAX_PENDING_WRITES=4): the rest get rate_limited at once, retryable', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', delayMs: 400, times: 4 });
      try {
        const ids = Array.from({ length: 10 }, (_, i) => `pw${i}-${chat}`);
        for (const id of ids) a.send({ type: 'message', data: { id, ciphertext: 'x'.repeat(1000) } });
        await waitFor(() => a.all({ type: 'error' }).length === 6, 1000, 'six rate_limited answers');
        assert.deepEqual(a.all({ type: 'error' }).map((f) => [f.id, f.code, f.retryable]), ids.slice(4).map((id) => [id, 'rate_limited', true]));
        await waitFor(() => a.all({ type: 'ack' }).length === 4, 5000, 'four acks');
        assert.deepEqual(a.all({ type: 'ack' }).map((f) => f.id), ids.slice(0, 4));
        await b.next(() => b.all({ type: 'message' }).length === 4);
        // Room again: a retry goes through.
        await a.request({ type: 'message', data: { id: ids[9], ciphertext: 'x' } }, { type: 'ack', id: ids[9] });
      } finally {
        h.api.clearFaults();
      }
      a.close();
      b.close();
    });

    it('a connection left with no chat is closed 4408 after REGISTER_TIMEOUT_MS, like one that never registered', async () => {
      // 1.5 s: both connections register within it on a loaded machine too.
      const inst = await h.gateway({ REGISTER_TIMEOUT_MS: '1500' });
      const token = await h.token(1);
      const left = await TestClient.connect(inst.wsUrl);
      const stays = await TestClient.connect(inst.wsUrl);
      const chat = uniqueChat();
      await left.register(token, chat);
      await stays.register(token, chat);
      await sleep(1800);
      await left.request({ type: 'unregister', chat_id: chat }, { type: 'unregistered' });
      const started = Date.now();
      assert.equal((await left.closed).code, 4408);
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 1400, 'closed before REGISTER_TIMEOUT_MS');
      // The close handshake completes when the client answers; it does not wait for the 1 s grace
      // period that cuts off peers which never answer (then it would take 2.5 s at least).
      assert.ok(elapsed < 2400, `the client saw the close only after ${elapsed} ms`);
      await sleep(300);
      assert.deepEqual(await stays.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
      stays.close();
    });

    it('chat ids made only of dots are refused bad_request; dots inside an id are fine and path segments are encoded', async () => {
      const token = await h.token(1);
      const c = await connect();
      for (const id of ['.', '..', '...']) {
        const err = await c.request({ type: 'register', token, chat_id: id }, { type: 'error' });
        assert.equal(err.code, 'bad_request', id);
      }
      assert.equal(h.api.requests.filter((r) => ['.', '..', '...'].includes(String((r.body as { chat_id?: unknown })?.chat_id))).length, 0);
      const chat = `a.b:${uniqueChat()}`;
      await c.register(token, chat);
      await c.request({ type: 'message', data: { id: 'dot1', ciphertext: 'x' } }, { type: 'ack' });
      await c.request({ type: 'delete_message', data: { id: 'dot1' } }, { type: 'ack' });
      const del = h.api.requests.find((r) => r.op === 'delete' && r.path.endsWith('/dot1'));
      assert.equal(del?.path, `/chat/${encodeURIComponent(chat)}/messages/dot1`);
      c.close();
    });

    it('a user removed from a chat: the refused write ends the registration (unregistered, reason forbidden), delivery stops, re-register asks the main API', async () => {
      const chat = uniqueChat();
      const token1 = await h.token(1);
      const a = await TestClient.connect(gw().wsUrl);
      await a.register(token1, chat);
      const b = await h.member(2, chat);
      h.api.setMembers(chat, [2]);
      try {
        const err = await a.request({ type: 'message', data: { id: `rm-${chat}`, ciphertext: 'x' } }, { type: 'error' });
        assert.equal(err.code, 'forbidden');
        const ended = await a.next({ type: 'unregistered', chat_id: chat });
        assert.deepEqual(ended, { type: 'unregistered', chat_id: chat, reason: 'forbidden' });
        await b.next(presence(1, 'offline'));
        const from = a.frames.length;
        await b.request({ type: 'message', data: { id: `after-${chat}`, ciphertext: 'secret' } }, { type: 'ack' });
        await expectNone(a, (f: Frame) => f.type === 'message', 300, from);
        // The cached verify was dropped: a re-register asks the main API, which says no.
        const verifies = verifiesFor(h, new Set([chat]));
        const again = await a.request({ type: 'register', token: token1, chat_id: chat }, { type: 'error' });
        assert.equal(again.code, 'forbidden');
        assert.equal(verifiesFor(h, new Set([chat])), verifies + 1);
      } finally {
        h.api.setMembers(chat, null);
      }
      a.close();
      b.close();
    });

    it('a member refused one operation (editing another user’s message) keeps the registration', async () => {
      const { chat, a, b } = await h.pair();
      await b.request({ type: 'message', data: { id: `theirs-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const err = await a.request({ type: 'edit_message', data: { id: `theirs-${chat}`, ciphertext: 'y' } }, { type: 'error' });
      assert.equal(err.code, 'forbidden');
      await expectNone(a, { type: 'unregistered' }, 300);
      await b.request({ type: 'message', data: { id: `still-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await a.next((f) => f.type === 'message' && (f.data as { id: string }).id === `still-${chat}`);
      a.close();
      b.close();
    });

    it('a 401 on re-register (token refresh refused) ends the registration it held', async () => {
      const { chat, a, b } = await h.pair();
      const err = await a.request({ type: 'register', token: 'not-a-token', chat_id: chat }, { type: 'error' });
      assert.equal(err.code, 'unauthorized');
      assert.deepEqual(await a.next({ type: 'unregistered' }), { type: 'unregistered', chat_id: chat, reason: 'unauthorized' });
      await b.next(presence(1, 'offline'));
      a.close();
      b.close();
    });

    it('ALLOWED_ORIGINS: an upgrade without Origin (native apps, CLI) is allowed; a foreign Origin is not', async () => {
      const inst = await h.gateway({ ALLOWED_ORIGINS: 'https://chat.example.com' });
      const native = await TestClient.connect(inst.wsUrl);
      assert.deepEqual(await native.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
      native.close();
      await assert.rejects(TestClient.connect(inst.wsUrl, { origin: 'https://evil.example.com' }), (e: { status?: number }) => e.status === 403);
    });

    it('ALLOWED_ORIGINS: a flood of refused upgrades with huge Origins costs one short log line per 10 s', async () => {
      const inst = await h.gateway({ ALLOWED_ORIGINS: 'https://chat.example.com' });
      const origin = `https://${'x'.repeat(8000)}.example.com`;
      for (let i = 0; i < 30; i++) await assert.rejects(TestClient.connect(inst.wsUrl, { origin }), (e: { status?: number }) => e.status === 403);
      const lines = inst.logs.filter((l) => l.includes('upgrade refused: origin not allowed'));
      assert.equal(lines.length, 1);
      assert.ok(lines[0]!.length < 1000, `a bounded line (${lines[0]!.length} bytes)`);
    });
  });
}
