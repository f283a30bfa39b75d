import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, afterEach, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { ClientError, createClient, type Client, type OutboxStorage } from '../../packages/client/src/index.js';
import { sleep } from '../support/client.js';
import { uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { proxy, sdk, text } from './support.js';

type Frame = Record<string, unknown> & { type: string };

/** A stand-in gateway on a real socket: `answer` returns the frames to send back for each frame received. */
async function scripted(answer: (f: Frame, n: number) => Array<object | { delayMs: number; frame: object }>): Promise<{ url: string; received: Frame[] }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => server.once('listening', r));
  const received: Frame[] = [];
  server.on('connection', (ws) =>
    ws.on('message', (d) => {
      const f = JSON.parse(String(d)) as Frame;
      received.push(f);
      for (const out of answer(f, received.length)) {
        if ('delayMs' in out && 'frame' in out) setTimeout(() => ws.send(JSON.stringify(out.frame)), out.delayMs as number);
        else ws.send(JSON.stringify(out));
      }
    }),
  );
  after(() => {
    for (const ws of server.clients) ws.terminate();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws`, received };
}

const clients: Client[] = [];
after(() => clients.forEach((c) => c.close()));

/** A token that looks like a JWT expiring in `sec` seconds (the SDK decodes it only for timing). */
function fakeJwt(sec: number, n: number): string {
  const now = Math.floor(Date.now() / 1000);
  return `h.${Buffer.from(JSON.stringify({ exp: now + sec, iat: now, n })).toString('base64url')}.s`;
}

describe('SDK: what the gateway refuses without naming the request, leaving and reopening, events after leave/close [memory]', () => {
  const h = useHarness('memory');
  // A test that timed out never reaches its own `finally`: its faults must not refuse the next test's calls.
  afterEach(() => h.api.clearFaults());

  it('one message id written to two chats at once: each answer settles the write of the chat it names', { timeout: 15_000 }, async () => {
    const a = await sdk(h, 1);
    const [idA, idB] = [uniqueChat(), uniqueChat()];
    const chatA = a.client.chat(idA);
    const chatB = a.client.chat(idB);
    await Promise.all([chatA.ready(), chatB.ready()]);
    h.api.addFault({ op: 'save', delayMs: 400, times: 1 }); // chat A's save: B's is saved first
    const id = `same-${idA}`;
    const sentA = chatA.send(text('a'), { id });
    await waitFor(() => h.api.requests.some((r) => r.op === 'save' && (r.body as { id?: string }).id === id), 3000, "chat A's save at the main API");
    const sentB = chatB.send(text('b'), { id });
    const [outcomeA, ackB] = await Promise.all([sentA.then(() => 'acked', (e: ClientError) => e.code), sentB]);
    assert.equal(String(h.api.messages.get(id)?.chat_id), String(idB), 'saved in chat B');
    assert.equal(outcomeA, 'bad_request', 'chat A: the id was taken in chat B (409 naming it), so not saved here — not a success');
    assert.deepEqual([ackB.chatId, ackB.duplicate, ackB.seq], [idB, false, 1]);
  });

  it('content nested deeper than the gateway accepts, or with numbers JSON does not carry exactly, is refused bad_request without being sent; the chat carries on', { timeout: 15_000 }, async () => {
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url });
    const chat = a.client.chat(uniqueChat());
    await chat.ready();
    let deep: Record<string, unknown> = { leaf: 1 };
    for (let i = 0; i < 35; i++) deep = { d: deep };
    await assert.rejects(chat.send({ ...text('deep'), meta: deep }, { id: 'too-deep' }), (e: ClientError) => e instanceof ClientError && e.code === 'bad_request');
    // 29 levels of content: frame (1) + data (2) + 30 = 32 levels, the most the gateway reads.
    let ok: Record<string, unknown> = { leaf: 1 };
    for (let i = 0; i < 29; i++) ok = { d: ok };
    assert.equal((await chat.send({ ...text('ok'), meta: ok })).duplicate, false);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await assert.rejects(chat.send({ ...text('cyclic'), meta: cyclic }), { code: 'bad_request' });
    // Numbers JSON would not carry as given (Infinity would be written null, 2^64 arrive rounded).
    await assert.rejects(chat.send({ ...text('inf'), meta: { n: Infinity } }, { id: 'inf' }), { code: 'bad_request' });
    await assert.rejects(chat.send({ ...text('big'), meta: { n: 2 ** 64 } }, { id: 'big' }), { code: 'bad_request' });
    assert.equal((await chat.send({ ...text('safe'), meta: { n: Number.MAX_SAFE_INTEGER, f: 0.5 } })).duplicate, false);
    for (const id of ['too-deep', 'inf', 'big']) {
      assert.equal(p.links[0]!.fromClient.filter((f) => (f.data as { id?: string } | undefined)?.id === id).length, 0, `${id} never sent`);
    }
    assert.deepEqual(a.all('unhandled'), []);
  });

  it('an error the gateway could not attach to a request does not hold a chat forever: the write that got no other answer takes it', { timeout: 15_000 }, async () => {
    const gw = await scripted((f) => {
      if (f.type === 'register') return [{ type: 'registered', chat_id: f.chat_id, user_id: 1, online: [1], seq: 0, epoch: 'e' }];
      const id = (f.data as { id: string }).id;
      if (id.startsWith('bad')) return [{ type: 'error', code: 'bad_request', message: 'frame is nested deeper than 32 levels', retryable: false }];
      return [{ type: 'ack', op: f.type, id, chat_id: f.chat_id, duplicate: false }];
    });
    const client = createClient({ url: gw.url, token: 't', WebSocket, requestTimeoutMs: 400 });
    clients.push(client);
    const chat = client.chat(1);
    const bad = chat.send({ ciphertext: 'eA' }, { id: 'bad1' });
    const next = chat.send({ ciphertext: 'eA' }, { id: 'next1' });
    await assert.rejects(bad, { code: 'bad_request' });
    assert.equal((await next).id, 'next1');
    assert.equal(gw.received.filter((f) => (f.data as { id?: string } | undefined)?.id === 'bad1').length, 1, 'not resent');
  });

  it("an error without op that answers the app's sendRaw never fails a slow write: the write gets its own ack", { timeout: 20_000 }, async () => {
    const chatId = uniqueChat();
    const a = await sdk(h, 1, { requestTimeoutMs: 1000 });
    const b = await sdk(h, 2);
    const chatA = a.client.chat(chatId);
    await chatA.ready();
    await b.client.chat(chatId).ready();
    h.api.addFault({ op: 'save', delayMs: 2500, times: 1 }); // slow, but within UPSTREAM_TIMEOUT_MS (5 s)
    const slow = chatA.send(text('slow'), { id: `slow-${chatId}` });
    await sleep(200);
    a.client.sendRaw('this is not json'); // answered bad_request without op
    const ack = await slow; // overdue at 1 s: resent, never failed by the sendRaw's answer
    assert.equal(ack.id, `slow-${chatId}`);
    await waitFor(() => b.messageIds().includes(`slow-${chatId}`), 3000, 'b gets it');
    assert.deepEqual(a.all('failed'), []);
    assert.equal(a.all('unhandled', (f) => f.type === 'error' && f.code === 'bad_request').length, 1, "the sendRaw's answer is the app's");
  });

  it('a chat id the protocol forbids is refused by chat() at once (bad_request), before anything is sent', { timeout: 15_000 }, async () => {
    const a = await sdk(h, 1);
    for (const id of [0, -1, 1.5, Number.MAX_SAFE_INTEGER + 1, '', '.', '..', 'a b', 'x'.repeat(65), 'é']) {
      assert.throws(() => a.client.chat(id), (e: ClientError) => e instanceof ClientError && e.code === 'bad_request', JSON.stringify(id));
    }
    assert.equal(a.client.state, 'disconnected', 'no connection was opened for them');
    await a.client.chat(`ok.id:${uniqueChat()}-_`).ready();
  });

  it('the position stays below an edit the SDK still holds: a client closed meanwhile, resumed from it, gets the edit', { timeout: 15_000 }, async () => {
    const chatId = uniqueChat();
    const b = await sdk(h, 2);
    const chatB = b.client.chat(chatId);
    await chatB.ready();
    const id = `old-${chatId}`;
    await chatB.send(text('v1'), { id }); // from before A's time: A holds its edit
    const a = await sdk(h, 1);
    const chatA = a.client.chat(chatId);
    const start = (await chatA.ready()).position!;
    const ack = await chatB.edit(id, text('v2'));
    await sleep(300);
    assert.deepEqual(a.all('edit'), [], 'held');
    assert.deepEqual(chatA.position, start, 'not past the held edit');
    const persisted = chatA.position!;
    a.client.close();
    const a2 = await sdk(h, 1, { hold: { ms: 200 } });
    a2.client.chat(chatId, { since: persisted });
    const edit = await a2.next('edit', () => true, 3000);
    assert.equal(edit.seq, ack.seq);
    assert.deepEqual(a2.all('gap'), []);
  });

  it('a chat left while its write is out and opened again before the leave completed gets what reached it meanwhile (no gap)', { timeout: 15_000 }, async () => {
    const chatId = uniqueChat();
    const a = await sdk(h, 1);
    const b = await sdk(h, 2);
    const chatA = a.client.chat(chatId);
    const chatB = b.client.chat(chatId);
    await chatA.ready();
    await chatB.ready();
    h.api.addFault({ op: 'save', delayMs: 1000, times: 1 });
    const slow = chatA.send(text('slow'), { id: `slow-${chatId}` });
    await sleep(100);
    chatA.leave();
    await chatB.send(text('x'), { id: `x-${chatId}` });
    await sleep(200);
    assert.deepEqual(a.messageIds(), [], 'nothing while left');
    const again = a.client.chat(chatId);
    assert.equal(again, chatA, 'the same handle: the leave had not completed');
    await slow;
    await chatB.send(text('y'), { id: `y-${chatId}` });
    await waitFor(() => a.messageIds().length === 2, 3000, `x and y; got ${JSON.stringify(a.messageIds())}`);
    await sleep(2300); // a hole would be reported as a gap after 2 s
    assert.deepEqual(a.messageIds(), [`x-${chatId}`, `y-${chatId}`]);
    assert.deepEqual(a.all('gap'), []);
  });

  it("a chat left, its link cut, and opened again before the leave completed gets the reconnect's replay", { timeout: 15_000 }, async () => {
    const chatId = uniqueChat();
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url, reconnect: { minDelayMs: 200, maxDelayMs: 300 } });
    const b = await sdk(h, 2);
    const chatA = a.client.chat(chatId);
    const chatB = b.client.chat(chatId);
    await chatA.ready();
    await chatB.ready();
    h.api.addFault({ op: 'save', delayMs: 1500, times: 1 });
    const slow = chatA.send(text('slow'), { id: `slow-${chatId}` });
    await sleep(100);
    chatA.leave();
    p.cut();
    await chatB.send(text('x'), { id: `x-${chatId}` }); // missed by A's link: replayed on its reconnect
    h.api.addFault({ op: 'save', delayMs: 1500, times: 1 }); // A's resend is slow too: still leaving
    await waitFor(() => p.links.length >= 2 && p.links[1]!.fromGateway.some((f) => f.type === 'registered'), 5000, 'registered again');
    await sleep(20);
    const again = a.client.chat(chatId);
    assert.equal(again, chatA);
    await slow;
    await waitFor(() => a.messageIds().length > 0 || a.all('gap').length > 0, 3000, 'x or a gap');
    assert.deepEqual(a.messageIds(), [`x-${chatId}`]);
    assert.deepEqual(a.all('gap'), []);
  });

  it('a chat left while its write keeps being retried keeps at most 10,000 deliveries; opened again, it resumes from the gateway: all of them, once, in order', { timeout: 90_000 }, async () => {
    const chatId = uniqueChat();
    const fastGw = await h.gateway({ RATE_LIMIT_PER_SEC: '5000', RATE_LIMIT_BURST: '5000', MAX_PENDING_WRITES: '1000' });
    const quick = { url: fastGw.wsUrl, rateLimit: { perSec: 4000, burst: 4000 } };
    const a = await sdk(h, 1, quick);
    const chatA = a.client.chat(chatId);
    await chatA.ready();
    const senders = await Promise.all([2, 3, 4].map((u) => sdk(h, u, quick)));
    const chats = senders.map((x) => x.client.chat(chatId));
    await Promise.all(chats.map((c) => c.ready()));
    const mine = await chatA.send(text('m0'));
    h.api.addFault({ op: 'edit', status: 503 }); // every edit refused for now: A's edit is retried
    try {
      chatA.edit(mine.id, text('m0 edited')).catch(() => undefined);
      await sleep(200);
      chatA.leave(); // still registered (its edit is out), muted
      const N = 10_050;
      await Promise.all(chats.map(async (c, k) => {
        for (let i = k; i < N; i += chats.length) await c.send(text(`n${i}`));
      }));
      await sleep(300);
      const stream = (a.client as unknown as { chats: Map<string, { stream: { deferred: unknown[] | null } }> }).chats.get(String(chatId))!.stream;
      assert.equal(stream.deferred?.length, 10_000, 'kept no more than the bound');
      assert.deepEqual(a.messageIds(), [], 'nothing while left');
      const again = a.client.chat(chatId);
      assert.equal(again, chatA, 'the leave had not completed');
      await waitFor(() => a.messageIds().length >= N, 20_000, `all ${N}; got ${a.messageIds().length}`);
      await sleep(300);
      const got = a.all('message');
      assert.equal(got.length, N, 'each once');
      assert.ok(got.every((m, i) => i === 0 || m.seq! > got[i - 1]!.seq!), 'in order');
      assert.deepEqual(a.all('gap'), []);
    } finally {
      h.api.clearFaults();
    }
  });

  it("a register refused for the user's connections on the instance (MAX_CONNECTIONS_PER_USER) is one error event, however many chats; retried, they register once one closes", { timeout: 30_000 }, async () => {
    const limited = await h.gateway({ MAX_CONNECTIONS_PER_USER: '1' });
    const chatId = uniqueChat();
    const first = await sdk(h, 77, { url: limited.wsUrl });
    await first.client.chat(chatId).ready();
    const second = await sdk(h, 77, { url: limited.wsUrl, reconnect: { minDelayMs: 50, maxDelayMs: 400 } });
    const chatIds = [chatId, uniqueChat(), uniqueChat(), uniqueChat(), uniqueChat()];
    const ready = Promise.all(chatIds.map((id) => second.client.chat(id).ready()));
    const err = await second.next('error', () => true, 5000);
    assert.equal((err.error as ClientError).code, 'rate_limited');
    assert.match((err.error as ClientError).message, /MAX_CONNECTIONS_PER_USER/);
    assert.ok(chatIds.includes((err.error as ClientError).details.chatId as number));
    assert.match(err.during, /register/);
    await sleep(2000); // every chat refused again and again meanwhile
    assert.equal(second.all('error').length, 1, 'one fact, told once (not once per chat)');
    first.client.close();
    await ready;
    assert.equal(second.all('registered').length, chatIds.length);
  });

  it('after leave(), no event of the chat: an edit held before it is not released to the app', { timeout: 15_000 }, async () => {
    const chatId = uniqueChat();
    const b = await sdk(h, 2);
    const chatB = b.client.chat(chatId);
    await chatB.ready();
    const id = `old-${chatId}`;
    await chatB.send(text('v1'), { id });
    const a = await sdk(h, 1, { hold: { ms: 500 } });
    const chatA = a.client.chat(chatId);
    await chatA.ready();
    await chatB.edit(id, text('v2')); // held by A
    await sleep(100);
    h.api.addFault({ op: 'save', delayMs: 1200, times: 1 });
    const pending = chatA.send(text('mine'), { id: `mine-${chatId}` });
    await sleep(100);
    const heard: string[] = [];
    a.client.on('edit', () => heard.push('client'));
    chatA.on('edit', () => heard.push('chat'));
    chatA.leave();
    await pending;
    await sleep(700);
    assert.deepEqual(heard, []);
  });

  it('close() while a write is being stored: no event after close(), one failed event for the write', { timeout: 15_000 }, async () => {
    const storage: OutboxStorage = {
      load: () => [],
      put: () => new Promise<void>((_, reject) => setTimeout(() => reject(new Error('disk full')), 200)),
      remove: () => undefined,
    };
    const a = await sdk(h, 1, { storage });
    const chat = a.client.chat(uniqueChat());
    await chat.ready();
    const sent = chat.send(text('x')).catch((e: ClientError) => e.code);
    await sleep(50);
    a.client.close();
    const closedAt = a.events.length;
    assert.equal(await sent, 'closed');
    await sleep(400);
    assert.deepEqual(a.events.slice(closedAt).map((e) => e.type), []);
    assert.equal(a.all('failed').length, 1);
  });

  it('a URL list moves past an entry the WebSocket constructor refuses; a list of only such entries ends the client', { timeout: 15_000 }, async () => {
    const a = await sdk(h, 1, { url: ['chat.example.com:3000/ws', h.instances[0]!.wsUrl], reconnect: { minDelayMs: 20, maxDelayMs: 50 } });
    await a.client.chat(uniqueChat()).ready();
    const none = await sdk(h, 1, { url: ['chat.example.com:3000/ws', 'not a url'], reconnect: { minDelayMs: 20, maxDelayMs: 50 } });
    const chat = none.client.chat(uniqueChat());
    await assert.rejects(chat.ready(), { code: 'disconnected' });
    const final = await none.next('state', (e) => e.retryInMs === null);
    assert.equal(final.error?.code, 'disconnected');
  });
});

describe('SDK: answers the real gateway gives only in races (scripted gateway)', () => {
  it("a register's token expiring while it is under way (unregistered token_expired, then its unauthorized) is registered again and is not a refused token", { timeout: 15_000 }, async () => {
    let registers = 0;
    const gw = await scripted((f) => {
      if (f.type !== 'register') return [];
      if (++registers === 1) {
        return [
          { type: 'unregistered', chat_id: f.chat_id, reason: 'token_expired' },
          { delayMs: 100, frame: { type: 'error', code: 'unauthorized', message: 'the registration ended while it was being made (token_expired)', op: 'register', chat_id: f.chat_id, retryable: false } },
        ];
      }
      return [{ type: 'registered', chat_id: f.chat_id, user_id: 1, online: [1], seq: 0, epoch: 'e' }];
    });
    let calls = 0;
    const client = createClient({ url: gw.url, token: () => `opaque-${++calls}`, WebSocket, maxAuthFailures: 1 });
    clients.push(client);
    const ended: unknown[] = [];
    client.on('state', (e) => e.retryInMs === null && ended.push(e));
    await client.chat(1).ready();
    assert.deepEqual(ended, []);
    assert.ok(registers >= 2);
  });

  it('a refresh resent while the first is under way: the "already in progress" answer is not its answer; the new token is used, the provider asked once', { timeout: 15_000 }, async () => {
    let calls = 0;
    const gw = await scripted((f, n) => {
      if (f.type === 'register') return [{ type: 'registered', chat_id: f.chat_id, user_id: 1, online: [1], seq: 0, epoch: 'e' }];
      if (f.type !== 'refresh') return [];
      const refreshes = gw.received.slice(0, n).filter((x) => x.type === 'refresh').length;
      if (refreshes === 1) return [{ delayMs: 700, frame: { type: 'refreshed', chat_ids: [1] } }];
      return [{ type: 'error', code: 'rate_limited', message: 'a refresh is already in progress; wait for its answer', op: 'refresh', retryable: true }];
    });
    const unhandled: unknown[] = [];
    const errors: unknown[] = [];
    const client = createClient({ url: gw.url, token: () => fakeJwt(++calls === 1 ? 3 : 600, calls), WebSocket, requestTimeoutMs: 300 });
    clients.push(client);
    client.on('unhandled', (f) => unhandled.push(f));
    client.on('error', (e) => errors.push(e));
    await client.chat(1).ready();
    await waitFor(() => gw.received.some((f) => f.type === 'refresh'), 5000, 'a refresh');
    await sleep(1500);
    assert.deepEqual(unhandled, []);
    assert.deepEqual(errors, []);
    assert.equal(calls, 2, 'the provider: once for the register, once for the refresh');
    assert.ok(gw.received.filter((f) => f.type === 'refresh').length >= 2, 'the refresh was resent');
  });

  it('a resent refresh answered "refresh again in <n> ms" (its first send was dropped) is sent again after n ms; later tokens are refreshed too', { timeout: 25_000 }, async () => {
    const gw = await scripted((f, n) => {
      if (f.type === 'register') return [{ type: 'registered', chat_id: f.chat_id, user_id: 1, online: [1], seq: 0, epoch: 'e' }];
      if (f.type !== 'refresh') return [];
      const refreshes = gw.received.slice(0, n).filter((x) => x.type === 'refresh').length;
      // Dropped unread over the bucket (an earlier frame refused: no op, so every unanswered request is suspect): resent after the pause.
      if (refreshes === 1) return [{ type: 'error', code: 'rate_limited', message: 'too many requests; slow down', retry_after_ms: 1000, retryable: true }];
      if (refreshes === 2) return [{ type: 'error', code: 'rate_limited', message: 'refreshes are paced at RATE_LIMIT_PER_SEC main-API verifies a second; refresh again in 400 ms', op: 'refresh', retryable: true }];
      return [{ type: 'refreshed', chat_ids: [1] }];
    });
    let calls = 0;
    const errors: unknown[] = [];
    const client = createClient({ url: gw.url, token: () => fakeJwt(10, ++calls), WebSocket, refreshLeadMs: 5000 });
    clients.push(client);
    client.on('error', (e) => errors.push(e));
    await client.chat(1).ready();
    // Each 10 s token is refreshed 5 s before its exp: the second one's refresh comes too.
    await waitFor(() => gw.received.filter((f) => f.type === 'refresh').length >= 4, 15_000, 'four refreshes');
    const refreshes = gw.received.filter((f) => f.type === 'refresh').map((f) => f.token);
    assert.equal(refreshes[2], refreshes[1], 'after the pace, the same new token');
    assert.notEqual(refreshes[3], refreshes[2], "the next token's own refresh");
    assert.deepEqual(errors, []);
  });
});
