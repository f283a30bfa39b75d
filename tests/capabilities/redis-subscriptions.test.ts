import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { TestClient } from '../support/client.js';
import { useHarness, waitFor } from '../support/harness.js';

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
