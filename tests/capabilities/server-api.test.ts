import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { describe, it } from 'node:test';
import { TestClient, expectNone, presence, sleep, type Frame } from '../support/client.js';
import { ENGINE_MODES, Harness, metric, uniqueChat, useHarness, waitFor, type Instance } from '../support/harness.js';

const API_KEY = 'test-api-key-0123456789';

/** Calls the server API of `inst` (its own API port when it has one). */
async function call(inst: Instance, method: string, path: string, body?: unknown, key: string | null = API_KEY): Promise<{ status: number; body: Record<string, unknown> }> {
  const port = inst.gateway.apiPort ?? inst.gateway.port;
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? null : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

/** POSTs `body` exactly as given (an empty string included) with the key. */
async function raw(inst: Instance, path: string, body: string, type = 'application/json'): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${inst.gateway.apiPort ?? inst.gateway.port}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': type },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

const verifiesOf = (h: Harness, chat: number) => h.api.requests.filter((r) => r.op === 'verify' && (r.body as { chat_id?: unknown })?.chat_id === chat).length;
const STREAM_TYPES = new Set(['message', 'edit_message', 'delete_message', 'event']);
const streamOf = (c: TestClient, chat: number) => c.all((f) => f.chat_id === chat && STREAM_TYPES.has(f.type));

for (const mode of ENGINE_MODES) {
  describe(`server API [${mode}]`, () => {
    const h = useHarness(mode, { API_KEY, RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000', AUTH_CACHE_TTL_MS: '60000' });
    // With Redis, three instances: the API is called on the first, the user is on all of them.
    const spread = mode === 'redis' ? [0, 1, 2] : [0, 0, 0];
    const ready = async () => {
      while (h.instances.length < Math.max(...spread) + 1) await h.gateway();
    };

    /** User 1 online or offline in `f` (a `presence` or a `presence_batch`). */
    const presenceOf1 = (f: Frame) => presence(1, 'online')(f) || presence(1, 'offline')(f);

    /**
     * A connection of user 1 whose register for `chat` is held attached while it asks the main
     * API again: the first "yes" is on its way when a revoke runs, so the register re-checks once
     * attached (the user came online with its join, not announced yet). Returns once that re-check
     * is at the main API (it answers 1.5 s later); the revoke's answer says it found nothing yet.
     */
    const registerHeldInRecheck = async (chat: number): Promise<TestClient> => {
      const before = verifiesOf(h, chat);
      h.api.addFault({ op: 'verify', delayMs: 400, status: 200, body: { user_id: 1 }, times: 1 });
      h.api.addFault({ op: 'verify', delayMs: 1500, status: 200, body: { user_id: 1 }, times: 1 });
      const c = await h.connect(0);
      c.send({ type: 'register', token: await h.token(1), chat_id: chat });
      await new Promise((r) => setTimeout(r, 150));
      assert.equal((await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/revoke`, { user_id: 1 })).body.registrations, 0);
      await waitFor(() => verifiesOf(h, chat) === before + 2, 3000, 'the re-check at the main API');
      return c;
    };

    it('revoke: every registration of the user in the chat ends on every instance; nothing more of the chat reaches it; a new register asks the main API', async () => {
      await ready();
      const chat = uniqueChat();
      const watcher = await h.member(2, chat, 0);
      const revoked: TestClient[] = [];
      for (const i of spread) revoked.push(await h.member(1, chat, i));
      const other = uniqueChat();
      for (const c of revoked) await c.register(await h.token(1), other); // another chat of the same user stays
      await watcher.next(presence(1, 'online'));

      const answer = await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/revoke`, { user_id: 1 });
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, { chat_id: chat, user_id: 1, instances: mode === 'redis' ? 3 : 1, registrations: 3 });
      // The audit line names who was revoked where.
      assert.ok(h.instances[0]!.logs.join('').split('\n').some((l) => l.includes('"msg":"server API: revoke"') && l.includes(`"chat":"${chat}"`) && l.includes('"user":"1"')), 'revoke logged with chat and user');
      // Acted on before the answer: the unregistered frames are already on their way.
      for (const c of revoked) await c.next({ type: 'unregistered', chat_id: chat, reason: 'revoked' }, 2000);
      await watcher.next(presence(1, 'offline'));

      const from = revoked.map((c) => c.frames.length);
      await watcher.request({ type: 'message', chat_id: chat, data: { id: `after-revoke-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      watcher.send({ type: 'typing', chat_id: chat });
      for (const [i, c] of revoked.entries()) await expectNone(c, (f) => f.chat_id === chat, 300, from[i]);
      // The user's other chat is untouched.
      const stayer = await h.member(3, other, 0);
      await stayer.request({ type: 'message', data: { id: `other-${other}`, ciphertext: 'y' } }, { type: 'ack' });
      for (const c of revoked) await c.next({ type: 'message', chat_id: other });

      // The cached verify is gone everywhere: registering again asks the main API, which now refuses.
      h.api.setMembers(chat, [2]);
      for (const [n, i] of spread.entries()) {
        const before = verifiesOf(h, chat);
        const c = revoked[n]!;
        const refused = await c.request({ type: 'register', token: await h.token(1), chat_id: chat }, { type: 'error' });
        assert.equal(refused.code, 'forbidden', `instance ${i}`);
        assert.equal(verifiesOf(h, chat), before + 1, `instance ${i} answered from its cache`);
      }
      h.api.setMembers(chat, null);
      for (const c of [watcher, stayer, ...revoked]) c.close();
    });

    it('revoke during a register: an answer the main API gave before the revoke does not register the user', async () => {
      await ready();
      const chat = uniqueChat();
      const watcher = await h.member(2, chat, 0);
      h.api.setMembers(chat, [2]);
      // The main API's "yes" is on its way (sent before the membership changed) when revoke is called.
      h.api.addFault({ op: 'verify', delayMs: 600, status: 200, body: { user_id: 1 }, times: 1 });
      try {
        const c = await h.connect(0);
        const answer = c.request({ type: 'register', token: await h.token(1), chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error', 5000);
        await new Promise((r) => setTimeout(r, 200));
        assert.equal((await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/revoke`, { user_id: 1 })).status, 200);
        const got = await answer;
        assert.equal(got.type, 'error');
        assert.equal(got.code, 'forbidden');
        await expectNone(watcher, presence(1, 'online'), 300);
        c.close();
      } finally {
        h.api.clearFaults();
        h.api.setMembers(chat, null);
      }
      watcher.close();
    });

    it('revoke while a register re-asks the main API: the register still gets its one answer, an error after `unregistered`; nobody is told offline for a user never announced online', async () => {
      await ready();
      const chat = uniqueChat();
      const watcher = await h.member(2, chat, 0);
      try {
        const c = await registerHeldInRecheck(chat);
        assert.equal((await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/revoke`, { user_id: 1 })).body.registrations, 1);
        const got = await c.next((f) => f.type === 'registered' || f.type === 'error', 5000);
        assert.equal(got.type, 'error');
        assert.equal(got.code, 'forbidden');
        const types = c.frames.map((f) => f.type);
        assert.ok(types.indexOf('unregistered') >= 0 && types.indexOf('unregistered') < types.indexOf('error'), types.join());
        await expectNone(watcher, presenceOf1, 500);
        c.close();
      } finally {
        h.api.clearFaults();
      }
      watcher.close();
    });

    it('a connection closed while its register re-asks the main API: no offline for an online never announced; a second connection of the user that stays is announced online', async () => {
      await ready();
      const chat = uniqueChat();
      const watcher = await h.member(2, chat, 0);
      try {
        const lone = await registerHeldInRecheck(chat);
        lone.close();
        await lone.closed;
        await expectNone(watcher, presenceOf1, 800);
        h.api.clearFaults();
        const held = await registerHeldInRecheck(chat);
        h.api.clearFaults();
        const stays = await h.member(1, chat, 0); // finds the user online already: announces nothing
        held.close();
        await held.closed;
        await watcher.next(presence(1, 'online'), 3000);
        assert.equal(watcher.all((f) => presence(1, 'offline')(f)).length, 0);
        stays.close();
      } finally {
        h.api.clearFaults();
      }
      watcher.close();
    });

    it('disconnect: every connection of the user is closed 4403 on every instance; others stay', async () => {
      await ready();
      const chat = uniqueChat();
      const conns: TestClient[] = [];
      for (const i of spread) conns.push(await h.member(5, chat, i));
      const bystander = await h.member(6, chat, 0);
      const answer = await call(h.instances[0]!, 'POST', '/api/v1/users/5/disconnect', { reason: 'logged out everywhere' });
      assert.ok(h.instances[0]!.logs.join('').split('\n').some((l) => l.includes('"msg":"server API: disconnect"') && l.includes('"user":"5"')), 'disconnect logged with the user');
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, { user_id: 5, instances: mode === 'redis' ? 3 : 1, connections: 3 });
      for (const c of conns) assert.deepEqual(await c.closed, { code: 4403, reason: 'logged out everywhere' });
      await bystander.next(presence(5, 'offline'));
      assert.equal(bystander.isOpen, true);
      // The body is optional: a bare POST disconnects with the default reason.
      const bare = await call(h.instances[0]!, 'POST', '/api/v1/users/55/disconnect');
      assert.deepEqual([bare.status, bare.body.connections], [200, 0]);
      bystander.close();
    });

    it('disconnect counts the connections it closed: a second one while the first one\'s are still in their close handshake answers 0', async () => {
      await ready();
      const chat = uniqueChat();
      const conns: TestClient[] = [];
      for (const i of spread) conns.push(await h.member(15, chat, i));
      // Not reading (a slow mobile link): each close handshake lasts until CLOSE_GRACE_MS.
      const sockets = conns.map((c) => (c.ws as unknown as { _socket: Socket })._socket);
      for (const socket of sockets) socket.pause();
      const first = await call(h.instances[0]!, 'POST', '/api/v1/users/15/disconnect', { reason: 'logout' });
      const second = await call(h.instances[0]!, 'POST', '/api/v1/users/15/disconnect', { reason: 'ban' });
      for (const socket of sockets) socket.resume();
      assert.equal(first.body.connections, 3);
      assert.equal(second.body.connections, 0, 'connections closed by the first disconnect were counted again');
      for (const c of conns) assert.deepEqual(await c.closed, { code: 4403, reason: 'logout' });
      // Likewise a revoke in a chat no instance is subscribed to: no instance acted.
      const nobody = uniqueChat();
      assert.deepEqual((await call(h.instances[0]!, 'POST', `/api/v1/chats/${nobody}/revoke`, { user_id: 15 })).body, { chat_id: nobody, user_id: 15, instances: 0, registrations: 0 });
    });

    it('disconnect during a connection\'s first register: the connection, not yet bound to the user when the disconnect ran, is closed 4403 too', async () => {
      await ready();
      const chat = uniqueChat();
      const old = await h.member(7, chat, 0);
      const watcher = await h.member(8, chat, 0);
      // The main API admits the new connection, but its answer arrives after the disconnect.
      h.api.addFault({ op: 'verify', delayMs: 600, status: 200, body: { user_id: 7 }, times: 1 });
      try {
        const racing = await h.connect(0);
        const answer = racing.request({ type: 'register', token: await h.token(7), chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error', 5000).catch(() => null);
        await new Promise((r) => setTimeout(r, 200));
        const done = await call(h.instances[0]!, 'POST', '/api/v1/users/7/disconnect', { reason: 'banned' });
        assert.deepEqual([done.status, done.body.connections], [200, 1]);
        assert.deepEqual(await old.closed, { code: 4403, reason: 'banned' });
        const closed = await Promise.race([racing.closed, new Promise<{ code: number }>((r) => setTimeout(() => r({ code: -1 }), 3000))]);
        assert.equal(closed.code, 4403, 'the racing connection stayed open');
        assert.equal((await answer)?.type === 'registered', false, 'the racing connection was registered');
        await expectNone(watcher, presence(7, 'online'), 300);
      } finally {
        h.api.clearFaults();
      }
      watcher.close();
    });

    it('publish: system events are numbered in the chat stream with concurrent messages, in one order on every instance, and recovered', async () => {
      await ready();
      const chat = uniqueChat();
      const receivers = [await h.member(7, chat, spread[1]!), await h.member(8, chat, spread[2]!)];
      const sender = await h.member(9, chat, 0);
      const start = (await sender.request({ type: 'message', data: { id: `m0-${chat}`, ciphertext: 'x' } }, { type: 'ack' })).seq as number;
      const published: Array<Promise<{ status: number; body: Record<string, unknown> }>> = [];
      for (let i = 1; i <= 10; i++) {
        sender.send({ type: 'message', data: { id: `m${i}-${chat}`, ciphertext: 'x' } });
        published.push(call(h.instances[spread[2]!]!, 'POST', `/api/v1/chats/${chat}/publish`, { event: { kind: 'renamed', n: i } }));
      }
      const answers = await Promise.all(published);
      for (const a of answers) assert.equal(a.status, 200);
      const total = start + 20;
      for (const r of receivers) await waitFor(() => streamOf(r, chat).length >= 21, 5000, '21 broadcasts');
      const orders = receivers.map((r) => streamOf(r, chat).map((f) => `${f.seq}:${f.type}:${f.type === 'event' ? (f.data as { n: number }).n : (f.data as { id: string }).id}`));
      assert.deepEqual(orders[0], orders[1], 'two receivers saw different orders');
      const seqs = streamOf(receivers[0]!, chat).map((f) => f.seq as number);
      assert.deepEqual(seqs, Array.from({ length: 21 }, (_, i) => start + i), 'gap or duplicate in seq');
      const events = streamOf(receivers[0]!, chat).filter((f) => f.type === 'event');
      assert.deepEqual(events.map((f) => (f.data as { n: number }).n), [...Array(10).keys()].map((i) => i + 1));
      assert.deepEqual(events.map((f) => f.seq), answers.map((a) => a.body.seq), 'the answers name the positions delivered');
      assert.equal(new Set(answers.map((a) => a.body.epoch)).size, 1);
      assert.equal(Math.max(...seqs), total);

      // Recovered like messages: a client that was at `start` gets the ten events (and messages) replayed.
      const late = await h.connect(spread[1]!);
      const epoch = receivers[0]!.frames.find((f) => f.seq === start)!.epoch;
      const reg = await late.request({ type: 'register', token: await h.token(7), chat_id: chat, since: { seq: start, epoch } }, { type: 'registered' });
      assert.equal(reg.recovered, true);
      const replayed = streamOf(late, chat);
      assert.deepEqual(replayed.map((f) => f.seq), seqs.slice(1));
      assert.equal(replayed.filter((f) => f.type === 'event').length, 10);
      for (const c of [...receivers, sender, late]) c.close();
    });

    it('publish without an id: every publish is its own event, `duplicate: false`; an id that is not 1–64 of A-Z a-z 0-9 _ - is 400 naming it', async () => {
      await ready();
      const chat = uniqueChat();
      const receiver = await h.member(7, chat, spread[1]!);
      const body = { event: { kind: 'pinned', message: 'm1' } };
      const answers = [await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/publish`, body), await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/publish`, body)];
      assert.deepEqual(answers.map((a) => [a.status, a.body.seq, a.body.duplicate]), [[200, 1, false], [200, 2, false]]);
      await waitFor(() => streamOf(receiver, chat).length >= 2, 5000, 'two events');
      for (const id of ['', 'a b', 'x'.repeat(65), 'a.b', 7]) {
        const bad = await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/publish`, { id, event: { n: 1 } });
        assert.deepEqual([bad.status, bad.body.error], [400, 'bad_request'], JSON.stringify(id));
        assert.match(String(bad.body.message), /id/);
      }
      await sleep(200);
      assert.deepEqual(streamOf(receiver, chat).map((f) => f.seq), [1, 2]);
      receiver.close();
    });

    // The id is looked up in the chat's history by the engine's append (an operation token, as
    // the hub's retries use): the memory engine ignores it for now (see docs/server-api.md).
    it('publish with an id: a resend (on any instance, at once or later, even with another event) publishes nothing and is answered with the first one\'s position', async () => {
      await ready();
      const chat = uniqueChat();
      const receivers = [await h.member(7, chat, spread[1]!), await h.member(8, chat, spread[2]!)];
      const publish = (inst: number, id: string, event: Record<string, unknown>, to = chat) => call(h.instances[inst]!, 'POST', `/api/v1/chats/${to}/publish`, { id, event });
      const id = `renamed-${chat}`;
      // Two at once on two instances: whichever runs first publishes, the other finds it.
      const first = await Promise.all([publish(0, id, { kind: 'renamed', n: 1 }), publish(spread[2]!, id, { kind: 'renamed', n: 1 })]);
      const later = [await publish(spread[1]!, id, { kind: 'renamed', n: 1 }), await publish(0, id, { kind: 'renamed', n: 2 })];
      const answers = [...first, ...later];
      for (const a of answers) assert.equal(a.status, 200, JSON.stringify(a.body));
      assert.equal(new Set(answers.map((a) => `${a.body.seq}:${a.body.epoch}`)).size, 1, 'one position answered to every resend');
      assert.deepEqual(answers.map((a) => a.body.duplicate).sort(), [false, true, true, true]);
      assert.equal(answers[0]!.body.seq, 1);
      // Another id, and the same id in another chat, are other events.
      const next = await publish(0, `${id}-2`, { kind: 'renamed', n: 3 });
      assert.deepEqual([next.body.seq, next.body.duplicate], [2, false]);
      const elsewhere = await publish(0, id, { kind: 'renamed', n: 4 }, uniqueChat());
      assert.deepEqual([elsewhere.body.seq, elsewhere.body.duplicate], [1, false]);
      for (const r of receivers) await waitFor(() => streamOf(r, chat).length >= 2, 5000, 'two events');
      await sleep(300);
      for (const r of receivers) assert.deepEqual(streamOf(r, chat).map((f) => [f.seq, (f.data as { n: number }).n]), [[1, 1], [2, 3]]);
      assert.ok(!receivers.some((r) => r.frames.some((f) => JSON.stringify(f).includes(id))), 'the id reached a client');
      for (const r of receivers) r.close();
    });

    it('presence: the distinct users online in a chat over every instance', async () => {
      await ready();
      const chat = uniqueChat();
      const conns = [await h.member(11, chat, spread[0]!), await h.member(12, chat, spread[1]!), await h.member(11, chat, spread[2]!)];
      const answer = await call(h.instances[0]!, 'GET', `/api/v1/chats/${chat}/presence`);
      assert.equal(answer.status, 200);
      assert.deepEqual({ ...answer.body, online: (answer.body.online as number[]).sort() }, { chat_id: chat, online: [11, 12] });
      for (const c of conns) c.close();
    });

    it('a wrong or missing key gets 401 and changes nothing; bad input gets 400 naming the field', async () => {
      await ready();
      const chat = uniqueChat();
      const a = await h.member(13, chat, 0);
      const b = await h.member(14, chat, 0);
      for (const key of ['wrong-key-0123456789', null, `${API_KEY}x`, API_KEY.slice(0, -1)]) {
        const revoke = await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/revoke`, { user_id: 13 }, key);
        assert.equal(revoke.status, 401);
        assert.equal(revoke.body.error, 'unauthorized');
        assert.equal((await call(h.instances[0]!, 'POST', '/api/v1/users/13/disconnect', {}, key)).status, 401);
        assert.equal((await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/publish`, { event: { x: 1 } }, key)).status, 401);
      }
      await b.request({ type: 'message', data: { id: `still-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await a.next({ type: 'message', chat_id: chat });
      assert.equal(a.all({ type: 'event' }).length, 0);
      assert.equal(a.isOpen, true);
      // Refused keys are logged (someone may be guessing), limited, and never with the key sent.
      const logs = h.instances[0]!.logs.join('\n');
      assert.match(logs, /server API: missing or wrong API key/);
      assert.doesNotMatch(logs, /wrong-key-0123456789/);
      const published = await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/publish`, { event: { kind: 'logged' } });
      assert.equal(published.status, 200);
      assert.ok(h.instances[0]!.logs.some((l) => l.includes('"server API: publish"') && l.includes(`"seq":${published.body.seq}`)), 'a publish is logged with its position');

      const bad = await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/revoke`, { user_id: { nope: 1 } });
      assert.equal(bad.status, 400);
      assert.match(String(bad.body.message), /user_id/);
      const dots = await call(h.instances[0]!, 'POST', '/api/v1/chats/../revoke', { user_id: 1 });
      assert.notEqual(dots.status, 200);
      const noEvent = await call(h.instances[0]!, 'POST', `/api/v1/chats/${chat}/publish`, { event: 'text' });
      assert.equal(noEvent.status, 400);
      assert.match(String(noEvent.body.message), /event/);
      // An event nested deeper than a client's frame may be is refused, not broadcast (nor a 500).
      const deep = `{"event":${'{"d":'.repeat(5000)}1${'}'.repeat(5000)}}`; // written out: too deep for JSON.stringify
      const tooDeep = await fetch(`http://127.0.0.1:${h.instances[0]!.gateway.apiPort ?? h.instances[0]!.gateway.port}/api/v1/chats/${chat}/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: deep,
      });
      assert.equal(tooDeep.status, 400);
      assert.match(String(((await tooDeep.json()) as { message: string }).message), /event/);
      // The deepest event is one level less than a client's frame (32): its frame adds a level.
      const nested = (levels: number) => `{"event":${'{"d":'.repeat(levels - 1)}{}${'}'.repeat(levels - 1)}}`;
      assert.equal((await raw(h.instances[0]!, `/api/v1/chats/${chat}/publish`, nested(31))).status, 200);
      const deeper = await raw(h.instances[0]!, `/api/v1/chats/${chat}/publish`, nested(32));
      assert.equal(deeper.status, 400);
      await a.next({ type: 'event', chat_id: chat }); // the 31-level event reached clients, whose limit it fits
      // A number JSON parsing changed (an overflow is Infinity, a 64-bit id loses digits) is refused, not rounded.
      for (const n of ['1e400', '123456789012345678901234567890']) {
        const unfit = await raw(h.instances[0]!, `/api/v1/chats/${chat}/publish`, `{"event":{"n":${n}}}`);
        assert.deepEqual([unfit.status, unfit.body.error], [400, 'bad_request'], n);
        assert.match(String(unfit.body.message), /string/);
      }
      // An empty JSON body (a bare POST from many HTTP clients) is no body: disconnect takes it as `{}`.
      const bare = await raw(h.instances[0]!, '/api/v1/users/99/disconnect', '');
      assert.deepEqual([bare.status, bare.body.connections], [200, 0]);
      assert.equal((await raw(h.instances[0]!, `/api/v1/chats/${chat}/revoke`, '')).status, 400);
      // Every status the OpenAPI document lists says what it is in `error`.
      const big = await raw(h.instances[0]!, `/api/v1/chats/${chat}/publish`, JSON.stringify({ event: { pad: 'x'.repeat(70_000) } }));
      assert.deepEqual([big.status, big.body.error], [413, 'too_large']);
      const text = await raw(h.instances[0]!, '/api/v1/users/99/disconnect', '<a/>', 'application/xml');
      assert.deepEqual([text.status, text.body.error], [415, 'unsupported_media_type']);
      // Prototype-poisoning keys are refused, and the answer says so (not "not valid JSON").
      const poisoned = await raw(h.instances[0]!, `/api/v1/chats/${chat}/publish`, '{"event":{"__proto__":{"admin":true}}}');
      assert.deepEqual([poisoned.status, poisoned.body.error], [400, 'bad_request']);
      assert.match(String(poisoned.body.message), /__proto__/);
      const longReason = await call(h.instances[0]!, 'POST', '/api/v1/users/13/disconnect', { reason: 'x'.repeat(121) });
      assert.equal(longReason.status, 400);
      assert.match(String(longReason.body.message), /reason/);
      assert.equal(a.isOpen, true);
      a.close();
      b.close();
    });
  });
}

describe('server API: where it is served', () => {
  const h = new Harness('memory');
  it('off without API_KEY (404); on its own listener with API_PORT (404 on the public port); the OpenAPI document matches docs/openapi.json', async () => {
    await h.start();
    try {
      const off = await h.gateway();
      assert.equal((await call(off, 'GET', '/api/v1/chats/1/presence')).status, 404);
      assert.equal((await call(off, 'GET', '/api/v1/openapi.json')).status, 404);

      const own = await h.gateway({ API_KEY, API_PORT: '0' });
      assert.ok(own.gateway.apiPort !== null && own.gateway.apiPort !== own.gateway.port);
      assert.equal((await call(own, 'GET', '/api/v1/chats/1/presence')).status, 200);
      // The key is required for whatever spelling of a route's path the router matches.
      for (const path of ['/%61pi/v1/chats/1/presence', '/api/v1/chats/%31/presence', '/api%2Fv1/chats/1/presence', '/API/v1/chats/1/presence']) {
        const res = await call(own, 'GET', path, undefined, null);
        assert.ok(res.status === 401 || res.status === 404, `${path}: ${res.status}`);
      }
      const encoded = await call(own, 'POST', '/%61pi/v1/users/1/disconnect', {}, null);
      assert.equal(encoded.status, 401);
      // A path the router cannot take: 400 with the key, without echoing it back; 401 without the key, as everywhere.
      // Counted like every request, under route="unknown" (it matched no route).
      const unknown = (status: number) => metric(own, 'message_service_api_requests_total', { route: 'unknown', status: String(status) });
      const [before400, before401] = [await unknown(400), await unknown(401)];
      const malformed = ['/api/v1/chats/%ZZ/presence', `/api/v1/chats/${'a'.repeat(120)}/presence`, `/api/v1/chats/${'7'.repeat(150)}/publish`];
      for (const path of malformed) {
        const method = path.endsWith('/publish') ? 'POST' : 'GET';
        const undecodable = await call(own, method, path, method === 'POST' ? { event: {} } : undefined);
        assert.deepEqual([undecodable.status, undecodable.body.error], [400, 'bad_request'], path);
        assert.ok(!String(undecodable.body.message).includes('/api/v1'), 'the path is echoed back');
        assert.equal((await call(own, method, path, undefined, null)).status, 401, `${path} without the key`);
      }
      assert.deepEqual([(await unknown(400)) - before400, (await unknown(401)) - before401], [malformed.length, malformed.length], 'requests refused for their path are not counted');
      const publicPort = await fetch(`${own.gateway.url}/api/v1/chats/1/presence`, { headers: { authorization: `Bearer ${API_KEY}` } });
      assert.equal(publicPort.status, 404);
      assert.equal((await fetch(`${own.gateway.url}/healthz`)).status, 200);
      assert.equal((await fetch(`http://127.0.0.1:${own.gateway.apiPort}/healthz`)).status, 404);

      const served = await fetch(`http://127.0.0.1:${own.gateway.apiPort}/api/v1/openapi.json`);
      assert.equal(served.status, 200);
      const doc = (await served.json()) as { openapi: string; paths: Record<string, unknown> };
      assert.deepEqual(doc, JSON.parse(readFileSync('docs/openapi.json', 'utf8')), 'docs/openapi.json is stale: run npm run openapi');
      assert.deepEqual(Object.keys(doc.paths).sort(), [
        '/api/v1/chats/{chat_id}/presence',
        '/api/v1/chats/{chat_id}/publish',
        '/api/v1/chats/{chat_id}/revoke',
        '/api/v1/users/{user_id}/disconnect',
      ]);
    } finally {
      await h.close();
    }
  });
});
