import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startDevApi, type DevApi } from '../../dev-api/app.js';
import { TestClient, expectNone, sleep, presence } from '../support/client.js';
import { waitFor } from '../support/harness.js';
import { GatewayProcess } from '../support/process.js';
import { RedisServer } from '../support/redis.js';

const PRESENCE_TTL_MS = 1500;

describe('several gateway processes on one Redis behave as one', () => {
  let api: DevApi;
  let redis: RedisServer;
  const gateways: GatewayProcess[] = [];
  let chatSeq = 500;

  async function spawnGateway(env: Record<string, string> = {}): Promise<GatewayProcess> {
    const gw = GatewayProcess.spawn({
      APP_PORT: '0',
      AUTH_HOST: api.url,
      REDIS_HOST: `127.0.0.1:${redis.port}`, // bare host:port is read as redis://
      PRESENCE_TTL_MS: String(PRESENCE_TTL_MS),
      RATE_LIMIT_PER_SEC: '1000',
      RATE_LIMIT_BURST: '1000',
      MAX_PENDING_WRITES: '1000',
      LOG_LEVEL: 'info',
      ...env,
    });
    gateways.push(gw);
    await gw.listening();
    await waitFor(async () => (await fetch(`${gw.httpUrl}/readyz`)).status === 200, 5000, 'readyz');
    return gw;
  }

  async function member(gw: GatewayProcess, user: number, chat: number): Promise<TestClient> {
    const c = await TestClient.connect(gw.wsUrl);
    await c.register(await api.mintToken(user), chat);
    return c;
  }

  before(async () => {
    api = await startDevApi({ port: 0 });
    redis = await RedisServer.start();
    await Promise.all([spawnGateway(), spawnGateway(), spawnGateway()]);
  });
  after(async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    await api.close();
    await redis.close();
  });

  it('message, edit, delete, typing and presence cross instances', async () => {
    const chat = ++chatSeq;
    const [g1, g2, g3] = gateways as [GatewayProcess, GatewayProcess, GatewayProcess];
    const a = await member(g1, 1, chat);
    const b = await member(g2, 2, chat);
    await a.next(presence(2, 'online'));
    const c = await member(g3, 3, chat);
    assert.deepEqual([...((c.frames.at(-1)!.online as number[]) ?? [])].sort(), [1, 2, 3]);
    await Promise.all([a, b].map((x) => x.next(presence(3, 'online'))));
    await a.request({ type: 'message', data: { id: `x-${chat}`, ciphertext: 'hi' } }, { type: 'ack' });
    await Promise.all([b, c].map((x) => x.next({ type: 'message', chat_id: chat })));
    await a.request({ type: 'edit_message', data: { id: `x-${chat}`, ciphertext: 'hi2' } }, { type: 'ack' });
    await Promise.all([b, c].map((x) => x.next({ type: 'edit_message', chat_id: chat })));
    await a.request({ type: 'delete_message', data: { id: `x-${chat}` } }, { type: 'ack' });
    await Promise.all([b, c].map((x) => x.next({ type: 'delete_message', chat_id: chat })));
    b.send({ type: 'typing' });
    await Promise.all([a, c].map((x) => x.next({ type: 'typing', user_id: 2 })));
    c.close();
    await Promise.all([a, b].map((x) => x.next(presence(3, 'offline'))));
    a.close();
    b.close();
  });

  it('two devices of one user on two instances: offline only after the last leaves', async () => {
    const chat = ++chatSeq;
    const [g1, g2, g3] = gateways as [GatewayProcess, GatewayProcess, GatewayProcess];
    const watcher = await member(g3, 9, chat);
    const d1 = await member(g1, 5, chat);
    const d2 = await member(g2, 5, chat);
    await watcher.next(presence(5, 'online'));
    d1.close();
    await expectNone(watcher, presence(5, 'offline'), 400);
    assert.equal(watcher.all({ type: 'presence', user_id: 5 }).length, 1);
    d2.close();
    await watcher.next(presence(5, 'offline'));
    watcher.close();
  });

  it('3 senders on different instances × 6 receivers on all instances, 300 messages: one identical sequence', async () => {
    const chat = ++chatSeq;
    const receivers = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => member(gateways[i % 3]!, 20 + i, chat)));
    const senders = await Promise.all([0, 1, 2].map((i) => member(gateways[i]!, 10 + i, chat)));
    api.addFault({ op: 'save', delayMs: 3, times: 30 });
    const ids = senders.map((_, s) => Array.from({ length: 100 }, (_, i) => `s${s}-${i}`));
    senders.forEach((c, s) => ids[s]!.forEach((id) => c.send({ type: 'message', data: { id: `${id}-${chat}`, ciphertext: 'x' } })));
    const seq = (c: TestClient) => c.all({ type: 'message' }).map((f) => (f.data as { id: string }).id);
    await Promise.all(receivers.map((r) => r.next(() => r.all({ type: 'message' }).length >= 300, 30_000)));
    const first = seq(receivers[0]!);
    assert.equal(first.length, 300);
    for (const r of receivers) assert.deepEqual(seq(r), first);
    for (let s = 0; s < 3; s++) {
      assert.deepEqual(first.filter((id) => id.startsWith(`s${s}-`)), ids[s]!.map((id) => `${id}-${chat}`));
    }
    for (const c of [...senders, ...receivers]) c.close();
  });

  it('an instance killed with SIGKILL: the others announce offline within PRESENCE_TTL_MS + one refresh', async () => {
    const chat = ++chatSeq;
    const victim = await spawnGateway();
    const watcher = await member(gateways[0]!, 30, chat);
    await member(victim, 31, chat);
    await watcher.next(presence(31, 'online'));
    const killedAt = Date.now();
    victim.kill('SIGKILL');
    await victim.exited;
    const bound = PRESENCE_TTL_MS + PRESENCE_TTL_MS / 3;
    await watcher.next(presence(31, 'offline'), bound + 2500);
    const took = Date.now() - killedAt;
    assert.ok(took >= PRESENCE_TTL_MS / 3, `offline came before any entry could expire (${took} ms)`);
    const fresh = await member(gateways[1]!, 32, chat);
    assert.deepEqual([...(fresh.frames.at(-1)!.online as number[])].sort(), [30, 32]);
    watcher.close();
    fresh.close();
  });

  it("an instance killed with SIGKILL while an offline waits in its presence window: the others still announce it", async () => {
    const chat = ++chatSeq;
    const victim = await spawnGateway({ PRESENCE_BATCH_MS: '2000' });
    const watcher = await member(gateways[0]!, 40, chat);
    const [first, second] = [await member(victim, 41, chat), await member(victim, 42, chat)];
    await watcher.next(presence(42, 'online'), 5000);
    await sleep(2200); // the joins' windows closed: the chat is quiet on the victim
    first.close(); // the chat's first change since: announced at once, and it opens a 2 s window
    await watcher.next(presence(41, 'offline'), 5000);
    second.close(); // gathered in that window: the victim holds this offline…
    await sleep(600); // …after its leave ran in Redis
    victim.kill('SIGKILL');
    await victim.exited;
    await watcher.next((f) => (f.type === 'presence' && f.user_id === 42 && f.status === 'offline') || (f.type === 'presence_batch' && (f.offline as number[]).includes(42)), PRESENCE_TTL_MS + PRESENCE_TTL_MS / 3 + 2500);
    const fresh = await member(gateways[1]!, 43, chat);
    assert.deepEqual([...(fresh.frames.at(-1)!.online as number[])].sort(), [40, 43]);
    watcher.close();
    fresh.close();
  });

  it('a message saved by an instance SIGKILLed before it broadcast is broadcast when the client resends it to another instance', async () => {
    const chat = ++chatSeq;
    const victim = await spawnGateway();
    const receiver = await member(gateways[0]!, 50, chat);
    const sender = await member(victim, 51, chat);
    const id = `saved-then-killed-${chat}`;
    const msg = { type: 'message', data: { id, ciphertext: 'x' } };
    api.addFault({ op: 'save', delayMs: 800, times: 1 });
    try {
      sender.send(msg);
      await waitFor(() => api.requests.some((r) => r.op === 'save' && (r.body as { id?: string })?.id === id), 3000, 'the save at the main API');
      victim.kill('SIGKILL');
      await victim.exited;
      await waitFor(() => api.messages.has(id), 3000, 'the save to complete at the main API');
    } finally {
      api.clearFaults();
    }
    // The SDK's reconnect, by hand: another instance, the same message id.
    const again = await member(gateways[0]!, 51, chat);
    const ack = await again.request(msg, { type: 'ack' });
    assert.equal(ack.duplicate, true);
    assert.equal(typeof ack.seq, 'number');
    const got = await receiver.next({ type: 'message' });
    assert.deepEqual([(got.data as { id: string }).id, got.seq], [id, ack.seq]);
    receiver.close();
    again.close();
  });

  // A resend racing the first send (the SDK resending on a new connection while the old one's save
  // is still in flight): the first is saved (201) and broadcast by its instance, the resend gets 409
  // on another; the chat sees the message once, whichever instance answers first.
  it('the same message (or delete) sent at once through two instances is broadcast once', async () => {
    const chat = ++chatSeq;
    const receiver = await member(gateways[2]!, 60, chat);
    const [first, second] = [await member(gateways[0]!, 61, chat), await member(gateways[1]!, 61, chat)];
    const ids = Array.from({ length: 20 }, (_, i) => `twice-${chat}-${i}`);
    for (const id of ids) {
      const msg = { type: 'message', data: { id, ciphertext: 'x' } };
      const acks = await Promise.all([first.request(msg, { type: 'ack', id }), second.request(msg, { type: 'ack', id })]);
      assert.deepEqual(acks.map((a) => a.duplicate).sort(), [false, true]);
    }
    await receiver.next((f) => f.type === 'message' && (f.data as { id: string }).id === ids.at(-1), 3000);
    await sleep(300);
    const seen = receiver.all({ type: 'message' }).map((f) => (f.data as { id: string }).id);
    assert.deepEqual(seen, ids, 'each message once, in order');
    // The same for a delete: its resend's "deleted, by you" 404 about when the first one's 204.
    for (const id of ids.slice(0, 8)) {
      const del = { type: 'delete_message', data: { id } };
      await Promise.all([first.request(del, { type: 'ack', id }), second.request(del, { type: 'ack', id })]);
    }
    await receiver.next((f) => f.type === 'delete_message' && (f.data as { id: string }).id === ids[7], 3000);
    await sleep(300);
    assert.deepEqual(receiver.all({ type: 'delete_message' }).map((f) => (f.data as { id: string }).id), ids.slice(0, 8), 'each delete once');
    for (const c of [receiver, first, second]) c.close();
  });

  it('graceful shutdown of one instance: the others see offline at once, not after the TTL', async () => {
    const chat = ++chatSeq;
    const leaving = await spawnGateway();
    const watcher = await member(gateways[0]!, 40, chat);
    const gone = await member(leaving, 41, chat);
    await watcher.next(presence(41, 'online'));
    const t0 = Date.now();
    leaving.kill('SIGTERM');
    await watcher.next(presence(41, 'offline'), 3000);
    assert.ok(Date.now() - t0 < PRESENCE_TTL_MS, 'offline waited for the TTL');
    assert.equal((await gone.closed).code, 1001);
    assert.equal((await leaving.exited).code, 0);
    watcher.close();
  });
});

describe('Redis outage: readiness, fast errors, recovery on the same connections', () => {
  let api: DevApi;
  let redis: RedisServer;
  let gw: GatewayProcess;

  before(async () => {
    api = await startDevApi({ port: 0 });
    redis = await RedisServer.start();
    gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url, REDIS_HOST: redis.url, LOG_LEVEL: 'info', PRESENCE_TTL_MS: '3000' });
    await gw.listening();
    await waitFor(async () => (await fetch(`${gw.httpUrl}/readyz`)).status === 200, 5000, 'readyz');
  });
  after(async () => {
    await gw.stop();
    await api.close();
    await redis.close();
  });

  it('Redis stopped then restarted mid-conversation', async () => {
    const chat = 900;
    const a = await TestClient.connect(gw.wsUrl);
    const b = await TestClient.connect(gw.wsUrl);
    await a.register(await api.mintToken(1), chat);
    await b.register(await api.mintToken(2), chat);
    await a.request({ type: 'message', data: { id: 'before', ciphertext: 'x' } }, { type: 'ack' });
    await b.next({ type: 'message' });

    await redis.stop();
    await waitFor(async () => (await fetch(`${gw.httpUrl}/readyz`)).status === 503, 5000, 'readyz 503');
    const savesBefore = api.requests.filter((r) => r.op === 'save').length;
    const t0 = Date.now();
    const err = await a.request({ type: 'message', data: { id: 'during', ciphertext: 'x' } }, { type: 'error' }, 3000);
    assert.equal(err.code, 'upstream_unavailable');
    assert.equal(err.retryable, true);
    assert.ok(Date.now() - t0 < 2500, 'the error must come fast, not after a hang');
    assert.equal(api.requests.filter((r) => r.op === 'save').length, savesBefore, 'nothing may be saved while Redis is down');
    const err2 = await b.request({ type: 'register', token: await api.mintToken(2), chat_id: 901 }, { type: 'error' });
    assert.equal(err2.code, 'upstream_unavailable');
    assert.deepEqual(await a.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
    assert.equal((await fetch(`${gw.httpUrl}/healthz`)).status, 200);
    // Not ready: a new connection is refused 503 (a load balancer tries another instance).
    await assert.rejects(TestClient.connect(gw.wsUrl), (e: { status?: number }) => e.status === 503);

    await redis.startProcess();
    await waitFor(async () => (await fetch(`${gw.httpUrl}/readyz`)).status === 200, 10_000, 'readyz 200 again');
    assert.ok(a.isOpen && b.isOpen, 'clients stay connected through the outage');
    const ack = await a.request({ type: 'message', data: { id: 'during', ciphertext: 'x' } }, { type: 'ack' });
    assert.equal(ack.duplicate, false);
    await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === 'during', 3000);
    // Presence was restored: a newcomer sees both users online.
    const c = await TestClient.connect(gw.wsUrl);
    const reg = await c.register(await api.mintToken(3), chat);
    assert.deepEqual([...(reg.online as number[])].sort(), [1, 2, 3]);
    for (const x of [a, b, c]) x.close();
  });
});
