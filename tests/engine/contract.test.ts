import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { loadConfig } from '../../src/config/index.js';
import { createEngine } from '../../src/engine/index.js';
import { EngineUnavailableError, type Engine, type EngineEvents } from '../../src/engine/types.js';
import type { ControlCommand } from '../../src/engine/control.js';
import { createLogger } from '../../src/log.js';
import { waitFor } from '../support/harness.js';
import { RedisServer } from '../support/redis.js';

const run = promisify(execFile);
setFlagsFromString('--expose-gc');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Recorder extends EngineEvents {
  got: Array<{ chat: string; frame: string; except: string | null }>;
  expired: Array<{ chat: string; users: string[] }>;
  restored: Array<{ chat: string; users: string[] }>;
  /** Stream positions the engine's maintenance read. */
  positions: Array<{ chat: string; seq: number; epoch: string }>;
  /** Deliveries and commands in the order they arrived. */
  log: string[];
  commands: ControlCommand[];
  /** What `command` answers (connections acted on). */
  acted: number;
  onReadyChange?: (ready: boolean) => void;
}

function recorder(): Recorder {
  const r: Recorder = {
    got: [],
    expired: [],
    restored: [],
    positions: [],
    log: [],
    commands: [],
    acted: 0,
    deliver: (chat, frame, except) => {
      r.log.push(frame.toString());
      r.got.push({ chat, frame: frame.toString(), except });
    },
    command: (command) => {
      r.log.push(`cmd:${command.op}`);
      r.commands.push(command);
      return r.acted;
    },
    presenceExpired: (chat, users) => r.expired.push({ chat, users }),
    presenceRestored: (chat, users) => r.restored.push({ chat, users }),
    readyChange: (ready) => r.onReadyChange?.(ready),
    streamAt: (chat, position) => r.positions.push({ chat, ...position }),
  };
  return r;
}

/** The Redis engine's internals, to stall or crash one engine object without a second process. */
interface RedisInternals {
  timer: NodeJS.Timeout | null;
  presence: { entries: Map<string, unknown> };
  maintainPresence(): Promise<void>;
  cmd: { client(sub: 'ID'): Promise<number> };
  sub: { unsubscribe(channel: string): Promise<unknown>; disconnect(reconnect: boolean): void };
}
const internals = (e: Engine) => e as unknown as RedisInternals;

/**
 * The engine contract (src/engine/types.ts), run against every engine. Two engines of one kind
 * stand for two gateway instances; the memory engine is one instance by definition, so the
 * cross-instance cases run only where a second instance can exist.
 */
for (const kind of ['memory', 'redis'] as const) {
  describe(`engine contract [${kind}]`, () => {
    let redis: RedisServer | null = null;
    const engines: Engine[] = [];
    const log = createLogger('silent');

    async function engine(events: EngineEvents = recorder(), presenceTtl = '1200'): Promise<Engine> {
      const config = loadConfig({ PRESENCE_TTL_MS: presenceTtl, ...(redis ? { REDIS_HOST: redis.url } : {}) });
      const e = await createEngine(config, log);
      await e.start(events);
      await waitFor(() => e.isReady(), 5000, 'engine ready');
      engines.push(e);
      return e;
    }

    const cli = async (...args: string[]) => (await run('redis-cli', ['-p', String(redis!.port), ...args])).stdout.trim();
    const numsub = async (chat: string) => Number((await cli('pubsub', 'numsub', `ms:chat:{${chat}}`)).split('\n')[1]);

    before(async () => {
      if (kind === 'redis') redis = await RedisServer.start();
    });
    after(async () => {
      for (const e of engines) await e.close();
      await redis?.close();
    });

    it('delivers only through a subscription, in publish order, bytes and exceptConn unchanged', async () => {
      const r = recorder();
      const e = await engine(r);
      await e.publish('c1', Buffer.from('before'), null);
      await e.subscribe('c1');
      for (let i = 0; i < 50; i++) await e.publish('c1', Buffer.from(`{"n":${i}}`), i % 2 ? 'conn-x' : null);
      await e.publish('other', Buffer.from('not subscribed'), null);
      await waitFor(() => r.got.length >= 50, 3000, 'deliveries');
      assert.deepEqual(r.got.map((g) => g.frame), Array.from({ length: 50 }, (_, i) => `{"n":${i}}`));
      assert.deepEqual(r.got.map((g) => g.except), Array.from({ length: 50 }, (_, i) => (i % 2 ? 'conn-x' : null)));
      assert.ok(r.got.every((g) => g.chat === 'c1'));
      await e.unsubscribe('c1');
      await e.publish('c1', Buffer.from('after'), null);
      await new Promise((res) => setTimeout(res, 100));
      assert.equal(r.got.length, 50);
    });

    it('presence: join is true only for the first connection of a user, leave only for the last', async () => {
      const e = await engine();
      assert.equal(await e.join('p1', 'u1', 'a'), true);
      assert.equal(await e.join('p1', 'u1', 'b'), false);
      assert.equal(await e.join('p1', 'u2', 'c'), true);
      assert.deepEqual((await e.online('p1')).sort(), ['u1', 'u2']);
      assert.equal(await e.leave('p1', 'u1', 'a'), false);
      assert.equal(await e.leave('p1', 'u1', 'a'), false, 'a second leave of the same connection is a no-op');
      assert.equal(await e.leave('p1', 'u1', 'b'), true);
      assert.deepEqual(await e.online('p1'), ['u2']);
    });

    it('online after join, many at once: every caller sees itself, and then everyone is online', async () => {
      const e = await engine();
      const users = Array.from({ length: 60 }, (_, i) => `j${i}`);
      // As a burst of registrations runs: each joins, then reads the list (the hub's order).
      const seen = await Promise.all(users.map(async (u) => (await e.join('burst', u, `c-${u}`), e.online('burst'))));
      seen.forEach((online, i) => assert.ok(online.includes(users[i]!), `${users[i]} is missing from its own online list`));
      assert.deepEqual((await e.online('burst')).sort(), [...users].sort());
    });

    it('publish resolves only once this instance delivered it itself; at once without a subscription', async () => {
      const r = recorder();
      const e = await engine(r);
      await e.subscribe('pub');
      for (let i = 0; i < 30; i++) {
        await e.publish('pub', Buffer.from(`s${i}`), null);
        assert.equal(r.got.length, i + 1, `publication ${i} was not delivered when publish resolved`);
      }
      await Promise.all(Array.from({ length: 100 }, (_, i) => e.publish('pub', Buffer.from(`b${i}`), i % 2 ? 'conn-y' : null)));
      assert.equal(r.got.length, 130);
      assert.deepEqual(r.got.slice(30).map((g) => g.except), Array.from({ length: 100 }, (_, i) => (i % 2 ? 'conn-y' : null)));
      const t0 = Date.now();
      await e.publish('not-subscribed', Buffer.from('x'), null);
      await e.unsubscribe('pub');
      await e.publish('pub', Buffer.from('after unsubscribe'), null);
      assert.ok(Date.now() - t0 < 500, `publish without a subscription took ${Date.now() - t0} ms`);
      assert.equal(r.got.length, 130);
    });

    it('contains: whether the history holds a broadcast appended with a key', async () => {
      const e = await engine();
      assert.equal(await e.contains('h1', 'm1'), false);
      await e.append('h1', Buffer.from('{"type":"message"}'), null, 'm1');
      await e.append('h1', Buffer.from('{"type":"presence-like"}'), null);
      assert.equal(await e.contains('h1', 'm1'), true);
      assert.equal(await e.contains('h1', 'm2'), false);
      assert.equal(await e.contains('h2', 'm1'), false);
    });

    if (kind === 'redis') {
      it('a retried append finds its operation by token, pages back through the history, and appends nothing twice', async () => {
        const e = await engine();
        const firstAt = Date.now();
        const first = await e.append('tok1', Buffer.from('{"type":"message","n":0}'), null, 'm0', { token: '~t0', retry: false, firstAt });
        // More than one page (16 entries) appended after it, by other operations.
        for (let i = 1; i <= 40; i++) await e.append('tok1', Buffer.from(`{"type":"message","n":${i}}`), null, `m${i}`, { token: `~t${i}`, retry: false, firstAt });
        const again = await e.append('tok1', Buffer.from('{"type":"message","n":0}'), null, 'm0', { token: '~t0', retry: true, firstAt });
        assert.deepEqual([again.seq, again.epoch], [first.seq, first.epoch]);
        assert.equal(again.earlier?.toString(), `{"seq":${first.seq},"epoch":"${first.epoch}","type":"message","n":0}`, 'the stored bytes come back');
        assert.equal((await e.position('tok1')).seq, 41, 'nothing appended');
        // A retry of an operation never appended appends it (after looking).
        const fresh = await e.append('tok1', Buffer.from('{"type":"message","n":99}'), null, 'm99', { token: '~t99', retry: true, firstAt });
        assert.equal(fresh.seq, 42);
        assert.equal(fresh.earlier, undefined);
      });
    }

    if (kind === 'memory') {
      it('history costs the bytes it keeps: no shared buffer kept alive per entry, replays byte for byte', async () => {
        // A kept slice of Node's buffer pool would keep its whole 8 KiB slab alive per entry.
        const gc = runInNewContext('gc') as () => void;
        const e = await engine();
        const body = `,"data":{"ciphertext":"${'A'.repeat(400)}","note":"grüße €"}}`; // UTF-8 comes back unchanged
        gc();
        const before = process.memoryUsage().arrayBuffers;
        for (let i = 0; i < 20_000; i++) await e.append(`mem${i % 200}`, Buffer.from(`{"type":"message","n":${i}${body}`), null);
        gc();
        const grown = process.memoryUsage().arrayBuffers - before;
        assert.ok(grown < 4 * 1024 * 1024, `20,000 history entries of ~450 bytes hold ${(grown / 1048576).toFixed(1)} MiB of buffers`);
        const result = await e.recover('mem7', { seq: 0, epoch: (await e.position('mem7')).epoch }, 1 << 20);
        assert.ok(result.recovered);
        assert.equal(result.frames.length, 100);
        for (const [i, frame] of result.frames.entries()) {
          assert.equal(frame.toString(), `{"seq":${i + 1},"epoch":"${(await e.position('mem7')).epoch}","type":"message","n":${7 + 200 * i}${body}`);
        }
      });
    }

    it('a command reaches this instance and says what it did', async () => {
      const r = recorder();
      r.acted = 2;
      const e = await engine(r);
      await e.subscribe('k1');
      const result = await e.command('k1', { op: 'revoke', chat: 'k1', user: 'u1' });
      assert.deepEqual(r.commands, [{ op: 'revoke', chat: 'k1', user: 'u1' }]);
      assert.deepEqual(result, { instances: 1, connections: 2 });
      // Every instance: the engines of earlier tests are instances too (they answer 0).
      assert.deepEqual(await e.command(null, { op: 'disconnect', user: 'u1', reason: 'bye' }), { instances: kind === 'memory' ? 1 : engines.length, connections: 2 });
      assert.deepEqual(r.commands.at(-1), { op: 'disconnect', user: 'u1', reason: 'bye' });
      r.acted = 0;
    });

    if (kind === 'redis') {
      it('commands: a chat\'s reach the instances subscribed to it, in order with its publications; others reach every instance; the answers are summed', async () => {
        const [r1, r2, r3] = [recorder(), recorder(), recorder()];
        [r1.acted, r2.acted, r3.acted] = [1, 2, 4];
        const [e1, e2] = [await engine(r1), await engine(r2)];
        await engine(r3);
        await e1.subscribe('k2');
        await e2.subscribe('k2');
        await e2.publish('k2', Buffer.from('before'), null);
        const revoked = e1.command('k2', { op: 'revoke', chat: 'k2', user: 'u' });
        await e2.publish('k2', Buffer.from('after'), null);
        assert.deepEqual(await revoked, { instances: 2, connections: 3 });
        await waitFor(() => r1.log.length >= 3 && r2.log.length >= 3, 2000, 'both instances');
        for (const r of [r1, r2]) assert.deepEqual(r.log, ['before', 'cmd:revoke', 'after']);
        assert.deepEqual(r3.commands, [], 'an instance without the chat got its command');
        assert.deepEqual(await e2.command(null, { op: 'forget', user: 'u', chat: null }), { instances: engines.length, connections: 7 });
        for (const r of [r1, r2, r3]) assert.deepEqual(r.commands.at(-1), { op: 'forget', user: 'u', chat: null });
      });

      it('publish waits at most the command timeout for its own delivery, and not at all once the connection is lost', async () => {
        const r = recorder();
        const e = await engine(r);
        await Promise.all([e.subscribe('lost1'), e.subscribe('lost2')]);
        // Redis drops the subscriptions behind the engine's back: our publications never come back.
        await internals(e).sub.unsubscribe('ms:chat:{lost1}');
        await internals(e).sub.unsubscribe('ms:chat:{lost2}');
        let t0 = Date.now();
        await e.publish('lost1', Buffer.from('x'), null);
        const took = Date.now() - t0;
        assert.ok(took >= 1500 && took < 3000, `bounded wait took ${took} ms`);
        t0 = Date.now();
        const waiting = e.publish('lost2', Buffer.from('y'), null);
        await sleep(100);
        internals(e).sub.disconnect(true);
        await waiting;
        assert.ok(Date.now() - t0 < 1000, `publish waited ${Date.now() - t0} ms after the connection was lost`);
        assert.equal(r.got.length, 0);
        await waitFor(() => e.isReady(), 5000, 'engine ready again');
      });

      it('two instances: one order for everyone, shared presence', async () => {
        const r1 = recorder();
        const r2 = recorder();
        const e1 = await engine(r1);
        const e2 = await engine(r2);
        await Promise.all([e1.subscribe('x'), e2.subscribe('x')]);
        await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 ? e1 : e2).publish('x', Buffer.from(String(i)), null)));
        await waitFor(() => r1.got.length === 100 && r2.got.length === 100, 3000, 'both got all');
        assert.deepEqual(r1.got.map((g) => g.frame), r2.got.map((g) => g.frame));
        assert.equal(await e1.join('x', 'u', 'i1-c'), true);
        assert.equal(await e2.join('x', 'u', 'i2-c'), false);
        assert.equal(await e1.leave('x', 'u', 'i1-c'), false);
        assert.equal(await e2.leave('x', 'u', 'i2-c'), true);
      });

      it('entries of an instance that stops refreshing expire, and exactly one sweeper reports them', async () => {
        const watchers = [recorder(), recorder()];
        const [w1, w2] = await Promise.all(watchers.map((w) => engine(w, '900')));
        await Promise.all([w1!.subscribe('z'), w2!.subscribe('z')]);
        const dying = await engine(recorder(), '900');
        assert.equal(await dying.join('z', 'ghost', 'd-1'), true);
        // Simulate a crash: the engine object stops refreshing without leaving.
        clearInterval(internals(dying).timer!);
        internals(dying).presence.entries.clear();
        await waitFor(() => watchers.some((w) => w.expired.length > 0), 4000, 'expiry reported');
        await new Promise((res) => setTimeout(res, 700));
        const reports = watchers.flatMap((w) => w.expired);
        assert.deepEqual(reports, [{ chat: 'z', users: ['ghost'] }]);
        assert.deepEqual(await w1!.online('z'), []);
      });

      it('a user swept offline while its instance stalled is re-created by the refresh and announced online once', async () => {
        const rs = recorder();
        const rw = recorder();
        const stalled = await engine(rs, '900');
        const sweeper = await engine(rw, '900');
        await Promise.all([stalled.subscribe('st'), sweeper.subscribe('st'), stalled.subscribe('st-alone')]);
        assert.equal(await stalled.join('st', 'u', 's-1'), true);
        // Expires too, but nobody else sweeps this chat: no offline was told, so no online is due.
        assert.equal(await stalled.join('st-alone', 'v', 's-2'), true);
        clearInterval(internals(stalled).timer!); // the stall: no refresh, no sweep
        await waitFor(() => rw.expired.length > 0, 4000, 'the sweeper reports the stalled user');
        assert.deepEqual(rw.expired, [{ chat: 'st', users: ['u'] }]);
        assert.deepEqual(await sweeper.online('st'), []);
        // The stall ends: the next maintenance round runs.
        await internals(stalled).maintainPresence();
        assert.deepEqual(rs.restored, [{ chat: 'st', users: ['u'] }]);
        assert.deepEqual(await sweeper.online('st'), ['u']);
        assert.deepEqual(await stalled.online('st-alone'), ['v']);
        await internals(stalled).maintainPresence();
        await sleep(700); // a few sweeps of the other instance
        assert.deepEqual(rs.restored, [{ chat: 'st', users: ['u'] }], 'announced once');
        assert.equal(rw.expired.length, 1);
        assert.deepEqual([...rs.expired, ...rw.restored], []);
        assert.equal(await stalled.leave('st', 'u', 's-1'), true);
      });

      it('presence lost by Redis (FLUSHALL): the refresh re-creates and announces it; a leave still announces offline', async () => {
        const r = recorder();
        const e = await engine(r, '900');
        await e.subscribe('fl');
        assert.equal(await e.join('fl', 'u1', 'f-1'), true);
        assert.equal(await e.join('fl', 'u1', 'f-2'), false);
        assert.equal(await e.join('fl', 'u2', 'f-3'), true);
        await cli('flushall');
        // (Not read as empty here: a refresh every 300 ms may already have re-created it on a
        // loaded machine. `restored` below says the refresh found it lost.)
        await waitFor(async () => (await e.online('fl')).length === 2, 2000, 'presence re-created');
        assert.deepEqual((await e.online('fl')).sort(), ['u1', 'u2']);
        assert.deepEqual(r.restored.map((x) => ({ chat: x.chat, users: x.users.sort() })), [{ chat: 'fl', users: ['u1', 'u2'] }]);

        // Lost and left before any refresh (a TTL so long that none runs here).
        const slow = await engine(recorder(), '60000');
        assert.equal(await slow.join('fl2', 'w', 'g-1'), true);
        assert.equal(await slow.join('fl2', 'w', 'g-2'), false);
        await cli('flushall');
        assert.equal(await slow.leave('fl2', 'w', 'g-1'), true, 'nothing live is left for the user: offline');
        assert.equal(await slow.leave('fl2', 'w', 'g-1'), false, 'a second leave of the same connection is a no-op');
        assert.equal(await slow.leave('fl2', 'w', 'g-2'), true, 'g-2 was lost too: nobody else will announce it');
        assert.equal(await slow.leave('fl2', 'w', 'g-2'), false);
        assert.deepEqual(await slow.online('fl2'), []);
      });

      it('a subscribe that timed out on a stalled Redis is undone when Redis catches up; a later subscribe is kept', async () => {
        const r = recorder();
        const e = await engine(r);
        await cli('client', 'pause', '3000', 'ALL');
        const failed = await Promise.allSettled([e.subscribe('slow1'), e.subscribe('slow2')]);
        assert.ok(failed.every((f) => f.status === 'rejected' && f.reason instanceof EngineUnavailableError));
        // Wanted again while Redis still sleeps: its SUBSCRIBE follows the undo and must win.
        const again = e.subscribe('slow1');
        await again;
        assert.equal(await numsub('slow2'), 0, 'the timed-out subscription of slow2 stayed');
        assert.equal(await numsub('slow1'), 1);
        await e.publish('slow1', Buffer.from('still here'), null);
        assert.deepEqual(r.got.map((g) => g.frame), ['still here']);
        await sleep(300);
        assert.equal(await numsub('slow2'), 0);
        await e.unsubscribe('slow1');
        assert.equal(await numsub('slow1'), 0);
      });

      it('unsubscribe while the command connection is down still releases the channel on the subscriber connection', async () => {
        const r = recorder();
        const e = await engine(r);
        await e.subscribe('nr');
        assert.equal(await numsub('nr'), 1);
        let during: Promise<void> | null = null;
        r.onReadyChange = (ready) => {
          if (!ready) during ??= e.unsubscribe('nr');
        };
        await cli('client', 'kill', 'id', String(await internals(e).cmd.client('ID')));
        await waitFor(() => during !== null, 3000, 'engine not ready');
        await during;
        await waitFor(() => e.isReady(), 5000, 'engine ready again');
        assert.equal(await numsub('nr'), 0);
      });
    }
  });
}

describe('engine [redis cluster]', () => {
  let node: RedisServer;
  const engines: Engine[] = [];
  before(async () => {
    node = await RedisServer.start(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-announce-ip', '127.0.0.1']);
    await run('redis-cli', ['-p', String(node.port), 'cluster', 'addslotsrange', '0', '16383']);
    await waitFor(async () => (await run('redis-cli', ['-p', String(node.port), 'cluster', 'info'])).stdout.includes('cluster_state:ok'), 10_000, 'cluster ok');
  });
  after(async () => {
    for (const e of engines) await e.close();
    await node.close();
  });

  it('sharded (un)subscribe issued in the same tick as other commands of the shard stays on the sharded subscriber', async () => {
    const r = recorder();
    const config = loadConfig({ PRESENCE_TTL_MS: '60000', REDIS_HOST: node.url, REDIS_CLUSTER: 'true' });
    const e = await createEngine(config, createLogger('silent'));
    engines.push(e);
    await e.start(r);
    await waitFor(() => e.isReady(), 5000, 'engine ready');
    // One tick: SSUBSCRIBE and SPUBLISH for one chat (one shard), then its presence script.
    const subscribed = e.subscribe('t1');
    const published = e.publish('t1', Buffer.from('first'), null);
    await Promise.all([subscribed, published]);
    assert.equal(await e.join('t1', 'u', 'c'), true);
    await e.publish('t1', Buffer.from('second'), null);
    await waitFor(() => r.got.length >= 1, 2000, 'delivery');
    assert.equal(r.got.at(-1)!.frame, 'second');
    // One tick: SUNSUBSCRIBE and the presence leave.
    const unsubscribed = e.unsubscribe('t1');
    assert.equal(await e.leave('t1', 'u', 'c'), true);
    await unsubscribed;
    assert.equal((await run('redis-cli', ['-p', String(node.port), 'pubsub', 'shardnumsub', 'ms:chat:{t1}'])).stdout.trim(), 'ms:chat:{t1}\n0');
  });

  it('commands: a chat\'s go over its sharded channel and are counted; one for every instance reaches them all, uncounted', async () => {
    const config = loadConfig({ PRESENCE_TTL_MS: '60000', REDIS_HOST: node.url, REDIS_CLUSTER: 'true' });
    const [r1, r2] = [recorder(), recorder()];
    [r1.acted, r2.acted] = [1, 2];
    const [e1, e2] = [await createEngine(config, createLogger('silent')), await createEngine(config, createLogger('silent'))];
    engines.push(e1, e2);
    await e1.start(r1);
    await e2.start(r2);
    await waitFor(() => e1.isReady() && e2.isReady(), 5000, 'engines ready');
    await e1.subscribe('k3');
    await e2.subscribe('k3');
    assert.deepEqual(await e1.command('k3', { op: 'revoke', chat: 'k3', user: 'u' }), { instances: 2, connections: 3 });
    assert.deepEqual(await e2.command(null, { op: 'forget', user: 'u', chat: null }), { instances: null, connections: null });
    await waitFor(() => r1.commands.length === 2 && r2.commands.length === 2, 2000, 'the command for every instance');
  });
});
