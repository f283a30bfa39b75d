/**
 * Server-API commands across instances when a subscription loses them without the connection
 * dropping (a Cluster's sharded subscriber remade behind the client's back; simulated here by
 * unsubscribing the engine's own subscriber, as redis-outages.test.ts does), and what a
 * reconnect must not do with old ones. Real redis-server, real gateways.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { sleep, type Frame } from '../support/client.js';
import { uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { cli, subscriber } from '../support/redis-kit.js';

const API_KEY = 'redis-commands-api-key-0123';

describe('server-API commands and the Redis command log', () => {
  const h = useHarness('redis', { RATE_LIMIT_BURST: '1000', RATE_LIMIT_PER_SEC: '1000', API_KEY, PRESENCE_TTL_MS: '900', HISTORY_SIZE: '100' });
  before(() => h.gateway({ PRESENCE_TTL_MS: '900' }));
  const api = async (path: string, body: unknown) => {
    const res = await fetch(`${h.instances[0]!.gateway.url}/api/v1${path}`, { method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    return JSON.parse(text) as unknown;
  };
  const blip = async (i: number) => {
    subscriber(h, i).disconnect(false);
    await waitFor(() => !h.instances[i]!.gateway.engine.isReady(), 3000, 'the outage seen');
    await subscriber(h, i).connect();
    await waitFor(() => h.instances[i]!.gateway.engine.isReady(), 8000, 'back');
  };
  const ids = (frames: Frame[]) => frames.map((f) => (f.data as { id: string }).id);

  it('a revoke logged before an instance subscribed to the chat never ends a registration made there after it — not when the log is read, not after a reconnect', async () => {
    const chat = uniqueChat();
    const other = await h.member(1, chat, 0); // instance 1 has no member of the chat: it does not hear the revoke
    h.api.setMembers(chat, [1]);
    await api(`/chats/${chat}/revoke`, { user_id: 2 });
    h.api.setMembers(chat, [1, 2]); // the backend adds user 2 back
    const reAdded = await h.member(2, chat, 1); // at once: before instance 1 next reads the log
    await sleep(2500); // instance 1 reads the log (its probe) with the revoke in it
    await blip(1); // and loses its subscriber for a moment: nothing old is acted on again
    const ended = await reAdded.next((f) => f.type === 'unregistered', 2000).catch(() => null);
    assert.equal(ended, null, 'a revoke made before the registration ended it');
    other.close();
    reAdded.close();
  });

  it('a revoke lost with a chat subscription (no connection event) is acted on before the catch-up replays what came after it', async () => {
    const chat = uniqueChat();
    const sender = await h.member(1, chat, 0);
    const revoked = await h.member(2, chat, 1);
    const channel = `ms:chat:{${chat}}`;
    const send = (id: string) => sender.request({ type: 'message', data: { id, ciphertext: 'eA' } }, { type: 'ack' });
    await send('before');
    await revoked.next({ type: 'message' });
    await subscriber(h, 1).unsubscribe(channel);
    h.api.setMembers(chat, [1]);
    await api(`/chats/${chat}/revoke`, { user_id: 2 });
    await send('secret-1');
    await subscriber(h, 1).subscribe(channel);
    await send('secret-2'); // its number skips one on instance 1: the gap is caught up
    await revoked.next((f) => f.type === 'unregistered', 4000);
    await sleep(500);
    assert.deepEqual(ids(revoked.all({ type: 'message' })), ['before'], 'nothing published after the revoke reached the revoked user');
    sender.close();
    revoked.close();
  });

  it('a disconnect lost with the control subscription (no connection event) is acted on within a probe from the log', async () => {
    const chat = uniqueChat();
    const other = await h.member(1, chat, 0);
    const victim = await h.member(3, chat, 1);
    await subscriber(h, 1).unsubscribe('ms:control');
    try {
      await api('/users/3/disconnect', { reason: 'banned' });
      const closed = await Promise.race([victim.closed, sleep(5000).then(() => null)]);
      assert.equal(closed?.code, 4403, 'the connection on the instance that did not hear the command was closed');
    } finally {
      await subscriber(h, 1).subscribe('ms:control');
    }
    other.close();
  });

  it('a user who left while a chat subscription lost publications is told offline once the gap is found', async () => {
    const chat = uniqueChat();
    const sender = await h.member(1, chat, 0);
    const leaving = await h.member(3, chat, 0);
    const watcher = await h.member(2, chat, 1);
    await watcher.next((f) => f.type === 'presence' && f.user_id === 3 && f.status === 'online', 3000).catch(() => undefined);
    const channel = `ms:chat:{${chat}}`;
    await subscriber(h, 1).unsubscribe(channel);
    leaving.close(); // its offline is published while instance 1 does not hear the chat
    await sleep(700);
    await sender.request({ type: 'message', data: { id: 'during', ciphertext: 'eA' } }, { type: 'ack' });
    await subscriber(h, 1).subscribe(channel);
    await sender.request({ type: 'message', data: { id: 'after', ciphertext: 'eA' } }, { type: 'ack' }); // the gap is found
    await watcher.next((f) => (f.type === 'presence' && f.user_id === 3 && f.status === 'offline') || (f.type === 'presence_batch' && ((f.offline as unknown[]) ?? []).map(String).includes('3')), 6000);
    sender.close();
    watcher.close();
  });

  it('a Redis that only pauses writes keeps every instance\'s links: not ready while it lasts, ready after, nothing replaced', { timeout: 60_000 }, async () => {
    const chat = uniqueChat();
    const a = await h.member(1, chat, 0);
    const b = await h.member(2, chat, 1);
    const names = async () => new Set((await cli(h.redis!.port, 'client', 'list')).split('\n').filter((l) => l.includes('name=message-service ')).map((l) => /id=(\d+)/.exec(l)![1]));
    const before = await names();
    await cli(h.redis!.port, 'client', 'pause', '9000', 'WRITE');
    await waitFor(() => h.instances.every((i) => !i.gateway.engine.isReady()), 8000, 'not ready while writes are paused');
    await sleep(9500);
    await waitFor(() => h.instances.every((i) => i.gateway.engine.isReady()), 10_000, 'ready again');
    assert.deepEqual(h.instances.map((i) => i.logs.filter((l) => l.includes('replaced')).length), h.instances.map(() => 0), 'links replaced');
    const after = await names();
    assert.deepEqual([...before].filter((id) => after.has(id)), [...before], 'the same connections to Redis');
    assert.ok(a.isOpen && b.isOpen);
    a.close();
    b.close();
  });
});
