import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../../src/config/index.js';
import { createEngine } from '../../src/engine/index.js';
import type { Engine, EngineEvents } from '../../src/engine/types.js';
import { createLogger } from '../../src/log.js';
import { waitFor } from '../support/harness.js';
import { RedisServer } from '../support/redis.js';

interface Recorder extends EngineEvents {
  got: Array<{ chat: string; frame: string; except: string | null }>;
  expired: Array<{ chat: string; users: string[] }>;
}

function recorder(): Recorder {
  const r: Recorder = {
    got: [],
    expired: [],
    deliver: (chat, frame, except) => r.got.push({ chat, frame: frame.toString(), except }),
    presenceExpired: (chat, users) => r.expired.push({ chat, users }),
    readyChange: () => undefined,
  };
  return r;
}

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

    if (kind === 'redis') {
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
        (dying as unknown as { timer: NodeJS.Timeout }).timer && clearInterval((dying as unknown as { timer: NodeJS.Timeout }).timer);
        (dying as unknown as { entries: Map<string, unknown> }).entries.clear();
        await waitFor(() => watchers.some((w) => w.expired.length > 0), 4000, 'expiry reported');
        await new Promise((res) => setTimeout(res, 700));
        const reports = watchers.flatMap((w) => w.expired);
        assert.deepEqual(reports, [{ chat: 'z', users: ['ghost'] }]);
        assert.deepEqual(await w1!.online('z'), []);
      });
    }
  });
}
