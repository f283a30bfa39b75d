import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { TestClient, sleep } from '../support/client.js';
import { uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { GatewayProcess } from '../support/process.js';

const run = promisify(execFile);
const cli = async (port: number, ...args: string[]) => (await run('redis-cli', ['-p', String(port), ...args])).stdout.trim();
const online = (f: Record<string, unknown>) => [...(f.online as number[])].sort();

describe('Redis faults: stalls and lost keys, seen from clients', () => {
  const PRESENCE_TTL_MS = 900;
  // Instance 0 refreshes often; instance 1 practically never (its losses stay lost during a test).
  const h = useHarness('redis', { PRESENCE_TTL_MS: String(PRESENCE_TTL_MS) });
  before(() => h.gateway({ PRESENCE_TTL_MS: '60000' }));
  /** A gateway in its own process, so that it can be stalled with SIGSTOP. */
  let stoppable: GatewayProcess;
  before(async () => {
    stoppable = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: h.api.url, REDIS_HOST: h.redis!.url, LOG_LEVEL: 'info', PRESENCE_TTL_MS: String(PRESENCE_TTL_MS) });
    await stoppable.listening();
    await waitFor(async () => (await fetch(`${stoppable.httpUrl}/readyz`)).status === 200, 5000, 'readyz');
  });
  after(async () => {
    stoppable.kill('SIGCONT');
    await stoppable.stop();
  });
  const redisCli = (...args: string[]) => cli(h.redis!.port, ...args);

  it('SIGSTOP longer than PRESENCE_TTL_MS: others see offline, then online once it resumes', async () => {
    const chat = uniqueChat();
    const watcher = await h.member(1, chat, 0);
    const stalled = await TestClient.connect(stoppable.wsUrl);
    await stalled.register(await h.token(2), chat);
    await watcher.next({ type: 'presence', user_id: 2, status: 'online' });
    const mark = watcher.frames.length;
    stoppable.kill('SIGSTOP');
    await watcher.next({ type: 'presence', user_id: 2, status: 'offline' }, PRESENCE_TTL_MS * 3 + 2000, mark);
    stoppable.kill('SIGCONT');
    await watcher.next({ type: 'presence', user_id: 2, status: 'online' }, PRESENCE_TTL_MS + 2000, mark);
    await sleep(PRESENCE_TTL_MS); // more refreshes and sweeps: nothing further is announced
    assert.deepEqual(watcher.all({ type: 'presence', user_id: 2 }).map((f) => f.status), ['online', 'offline', 'online']);
    assert.ok(stalled.isOpen);
    const fresh = await h.member(3, chat, 0);
    assert.deepEqual(online(fresh.frames.at(-1)!), [1, 2, 3]);
    for (const c of [watcher, stalled, fresh]) c.close();
  });

  it('FLUSHALL: the refresh restores presence and announces it; newcomers see the right online list', async () => {
    const { chat, a, b } = await h.pair(0);
    await a.next({ type: 'presence', user_id: 2, status: 'online' });
    const [markA, markB] = [a.frames.length, b.frames.length];
    await redisCli('flushall');
    await a.next({ type: 'presence', user_id: 2, status: 'online' }, 3000, markA);
    await b.next({ type: 'presence', user_id: 1, status: 'online' }, 3000, markB);
    const c = await h.member(3, chat);
    assert.deepEqual(online(c.frames.at(-1)!), [1, 2, 3]);
    for (const x of [a, b, c]) x.close();
  });

  it('FLUSHALL, then the last connection of a user leaves: offline is still announced', async () => {
    const { a, b } = await h.pair(1);
    await a.next({ type: 'presence', user_id: 2, status: 'online' });
    await redisCli('flushall');
    b.close();
    await a.next({ type: 'presence', user_id: 2, status: 'offline' });
    a.close();
  });

  it('a register that timed out on a stalled Redis leaves no subscription behind', async () => {
    const chat = uniqueChat();
    const channel = `ms:chat:{${chat}}`;
    const a = await h.connect(0);
    await redisCli('client', 'pause', '3000', 'ALL');
    const err = await a.request({ type: 'register', token: await h.token(1), chat_id: chat }, { type: 'error' }, 4000);
    assert.equal(err.code, 'upstream_unavailable');
    // The pause is over once redis-cli answers; the late SUBSCRIBE has run by then.
    assert.equal(await redisCli('pubsub', 'numsub', channel), `${channel}\n0`);
    await a.register(await h.token(1), chat);
    assert.equal(await redisCli('pubsub', 'numsub', channel), `${channel}\n1`);
    const b = await h.member(2, chat);
    await a.request({ type: 'message', data: { id: `after-stall-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
    await b.next({ type: 'message', chat_id: chat });
    a.close();
    b.close();
    await Promise.all([a.closed, b.closed]);
    await waitFor(async () => (await redisCli('pubsub', 'numsub', channel)) === `${channel}\n0`, 3000, 'channel released');
  });
});
