import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { TestClient, sleep } from '../support/client.js';
import { metric, uniqueChat, useHarness, waitFor } from '../support/harness.js';

const run = promisify(execFile);

describe('Redis engine connections and subscriptions', () => {
  const h = useHarness('redis', { MAX_CHATS_PER_CONNECTION: '100', AUTH_CACHE_TTL_MS: '60000', RATE_LIMIT_BURST: '200', UPSTREAM_TIMEOUT_MS: '20000' });
  const cli = async (...args: string[]) => (await run('redis-cli', ['-p', String(h.redis!.port), ...args])).stdout.trim();
  const stat = async (command: string) => Number(/calls=(\d+)/.exec((await cli('info', 'commandstats')).split('\n').find((l) => l.startsWith(`cmdstat_${command}:`)) ?? '')?.[1] ?? 0);

  it('one command and one subscriber connection; 2,000 chats subscribed in a few batched commands and released', async () => {
    const clients = (await cli('client', 'list')).split('\n').filter((l) => l.includes('name=message-service'));
    assert.deepEqual(clients.map((l) => /name=(\S+)/.exec(l)![1]).sort(), ['message-service', 'message-service-sub']);

    const subscribesBefore = await stat('subscribe');
    const token = await h.token(1);
    const conns = await Promise.all(Array.from({ length: 20 }, () => h.connect()));
    const chats = 2000;
    await Promise.all(
      conns.map(async (c, ci) => {
        for (let k = 0; k < 100; k++) c.send({ type: 'register', token, chat_id: 10_000 + ci * 100 + k });
        await c.next(() => c.all({ type: 'registered' }).length === 100, 30_000);
        assert.equal(c.all({ type: 'error' }).length, 0);
      }),
    );
    const channels = (await cli('pubsub', 'channels', 'ms:chat:*')).split('\n').filter(Boolean);
    assert.equal(channels.length, chats);
    const subscribeCalls = (await stat('subscribe')) - subscribesBefore;
    // Batched: far fewer calls than chats. How many chats share a call depends on how fast the
    // registers arrive — the first of each connection shares the anonymous half of the main-API
    // pool — so the bound leaves room (one call per chat would be 2,000).
    assert.ok(subscribeCalls > 0 && subscribeCalls <= chats / 5, `SUBSCRIBE was called ${subscribeCalls} times for ${chats} chats`);

    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.closed));
    await waitFor(async () => (await cli('pubsub', 'channels', 'ms:chat:*')) === '', 5000, 'channels released');
    const after = await TestClient.connect(h.instances[0]!.wsUrl);
    assert.deepEqual(await after.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
    after.close();
  });
});

describe('a chat whose last local member leaves while its broadcasts are in flight', () => {
  const API_KEY = 'test-api-key-0123456789';
  const h = useHarness('redis', { API_KEY, HISTORY_SIZE: '5', RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
  /** A system event published through instance B's server API (B has no member of the chat). */
  const publish = async (chat: number, n: number) => {
    const res = await fetch(`${h.instances[1]!.gateway.url}/api/v1/chats/${chat}/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ event: { n } }),
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(res.status, 200, await res.text());
  };

  it('keeps no position of it: a member who registers after the history moved on gets the next broadcast, not 1012', async () => {
    await h.gateway();
    const leaver = await h.connect(0);
    const token = await h.token(1);
    const chats = Array.from({ length: 20 }, () => uniqueChat());
    for (const chat of chats) {
      await leaver.register(token, chat);
      // Broadcasts keep coming from B while the only member on A leaves: some arrive at A after
      // its hub let the chat go and before Redis has its UNSUBSCRIBE.
      let stop = false;
      const pump = (async () => {
        for (let k = 0; !stop; k += 2) await Promise.all([publish(chat, k), publish(chat, k + 1)]);
      })();
      await sleep(40);
      leaver.send({ type: 'unregister', chat_id: chat });
      await leaver.next((f) => f.type === 'unregistered' && f.chat_id === chat);
      await sleep(40);
      stop = true;
      await pump;
    }
    // The chats move on past the history (5) while A has nobody in them.
    for (const chat of chats) for (let k = 0; k < 8; k++) await publish(chat, 100 + k);

    const fresh = await h.connect(0);
    const token2 = await h.token(2);
    for (const chat of chats) await fresh.register(token2, chat);
    for (const chat of chats) await publish(chat, 200);
    await waitFor(() => chats.every((chat) => fresh.all((f) => f.type === 'event' && f.chat_id === chat).length === 1), 10_000, 'the next broadcast of every chat');
    assert.equal(fresh.isOpen, true);
    assert.equal(await metric(h.instances[0]!, 'message_service_resyncs_total', { outcome: 'gap' }), 0);
  });
});
