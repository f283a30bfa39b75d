import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startDevApi, type DevApi } from '../../dev-api/app.js';
import { TestClient, presence } from '../support/client.js';
import { waitFor } from '../support/harness.js';
import { GatewayProcess } from '../support/process.js';
import { RedisServer } from '../support/redis.js';
import { RedisEngine } from '../../src/engine/redis/engine.js';
import { createLogger } from '../../src/log.js';

const run = promisify(execFile);
const PRESENCE_TTL_MS = 1500;
const API_KEY = 'cluster-test-api-key-0123';
const cli = async (port: number, ...args: string[]) => (await run('redis-cli', ['-p', String(port), ...args])).stdout.trim();

describe('Redis Cluster: sharded pub/sub across three masters', () => {
  let api: DevApi;
  const nodes: RedisServer[] = [];
  const gateways: GatewayProcess[] = [];

  before(async () => {
    api = await startDevApi({ port: 0 });
    for (let i = 0; i < 3; i++) nodes.push(await RedisServer.start(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000']));
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    await waitFor(async () => (await Promise.all(nodes.map((n) => cli(n.port, 'cluster', 'info')))).every((t) => t.includes('cluster_state:ok')), 15_000, 'cluster ok');
    for (let i = 0; i < 2; i++) await spawnGateway();
  });

  async function spawnGateway(): Promise<GatewayProcess> {
    const seeds = nodes.map((n) => `redis://127.0.0.1:${n.port}`).join(',');
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url, REDIS_HOST: seeds, REDIS_CLUSTER: 'true', LOG_LEVEL: 'info', PRESENCE_TTL_MS: String(PRESENCE_TTL_MS), API_KEY });
    gateways.push(gw);
    await gw.listening();
    await waitFor(async () => (await fetch(`${gw.httpUrl}/readyz`)).status === 200, 10_000, 'gateway ready');
    return gw;
  }
  after(async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    await api.close();
    for (const n of nodes) await n.close();
  });

  it('two instances deliver across chats that hash to different shards', async () => {
    const [g1, g2] = gateways as [GatewayProcess, GatewayProcess];
    // Pick chats until they cover every master.
    const owners = new Map<number, number>();
    const chats: number[] = [];
    for (let chat = 1; owners.size < 3 && chat < 200; chat++) {
      const slot = Number(await cli(nodes[0]!.port, 'cluster', 'keyslot', `{${chat}}`));
      const owner = await ownerOf(slot);
      if (!owners.has(owner)) {
        owners.set(owner, chat);
        chats.push(chat);
      }
    }
    assert.equal(chats.length, 3, 'chats on three different shards');
    const tokenA = await api.mintToken(1);
    const tokenB = await api.mintToken(2);
    const a = await TestClient.connect(g1.wsUrl);
    const b = await TestClient.connect(g2.wsUrl);
    for (const chat of chats) {
      await a.register(tokenA, chat);
      const reg = await b.register(tokenB, chat);
      assert.deepEqual([...(reg.online as number[])].sort(), [1, 2]);
    }
    for (const chat of chats) {
      await a.request({ type: 'message', chat_id: chat, data: { id: `c-${chat}`, ciphertext: 'x' } }, { type: 'ack', chat_id: chat });
      const got = await b.next({ type: 'message', chat_id: chat });
      assert.equal((got.data as { id: string }).id, `c-${chat}`);
      await b.request({ type: 'message', chat_id: chat, data: { id: `d-${chat}`, ciphertext: 'y' } }, { type: 'ack', chat_id: chat });
      await a.next({ type: 'message', chat_id: chat });
    }
    // Each shard carries its own chat's channel: sharded pub/sub, not cluster-wide PUBLISH.
    for (const [owner, chat] of owners) {
      const channels = await cli(owner, 'pubsub', 'shardchannels');
      assert.ok(channels.includes(`{${chat}}`), `shard ${owner} holds chat ${chat}'s channel: ${channels}`);
    }
    a.close();
    b.close();
    await b.closed;
  });

  it('server API on the Cluster: revoke acts on both instances in the chat\'s order, publish numbers events in the stream, disconnect reaches every instance', async () => {
    const [g1, g2] = gateways as [GatewayProcess, GatewayProcess];
    const post = async (gw: GatewayProcess, path: string, body: object) => {
      const res = await fetch(`${gw.httpUrl}${path}`, { method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    const chat = 9001;
    const member = async (gw: GatewayProcess, user: number) => {
      const c = await TestClient.connect(gw.wsUrl);
      await c.register(await api.mintToken(user), chat);
      return c;
    };
    const [x1, x2, w1, w2] = [await member(g1, 21), await member(g2, 21), await member(g1, 22), await member(g2, 23)];
    const revoked = await post(g2, `/api/v1/chats/${chat}/revoke`, { user_id: 21 });
    assert.deepEqual(revoked, { status: 200, body: { chat_id: chat, user_id: 21, instances: 2, registrations: 2 } });
    for (const c of [x1, x2]) await c.next({ type: 'unregistered', chat_id: chat, reason: 'revoked' });
    const published = await post(g1, `/api/v1/chats/${chat}/publish`, { event: { kind: 'renamed' } });
    assert.equal(published.status, 200);
    for (const c of [w1, w2]) {
      const got = await c.next({ type: 'event', chat_id: chat });
      assert.deepEqual([got.seq, got.epoch, got.data], [published.body.seq, published.body.epoch, { kind: 'renamed' }]);
    }
    assert.equal(x1.all({ type: 'event' }).length + x2.all({ type: 'event' }).length, 0, 'a revoked connection got the event');
    // A command for every instance: delivered everywhere, but a Cluster cannot count it.
    const d = await post(g1, '/api/v1/users/23/disconnect', {});
    assert.deepEqual(d, { status: 200, body: { user_id: 23, instances: null, connections: null } });
    assert.equal((await w2.closed).code, 4403);
    for (const c of [x1, x2, w1]) c.close();
  });

  it('presence scripts run on the shards: a SIGKILLed instance is announced offline', async () => {
    const chat = 4242;
    const victim = await spawnGateway();
    const watcher = await TestClient.connect(gateways[0]!.wsUrl);
    await watcher.register(await api.mintToken(7), chat);
    const doomed = await TestClient.connect(victim.wsUrl);
    await doomed.register(await api.mintToken(8), chat);
    await watcher.next(presence(8, 'online'));
    victim.kill('SIGKILL');
    await watcher.next(presence(8, 'offline'), PRESENCE_TTL_MS * 2 + 2500);
    assert.doesNotMatch(gateways[0]!.output, /presence maintenance failed/);
    watcher.close();
  });

  it('the check made before replacing a silent link gets a write answered by the Cluster — not a MOVED — and fails when no seed answers', async () => {
    // The engine's private check, called directly: a silent link cannot be staged on a Cluster here.
    const check = (urls: string[]) => (new RedisEngine({ urls, cluster: true }, 1000, createLogger('silent')) as unknown as { freshConnectionAnswers(): Promise<boolean> }).freshConnectionAnswers();
    const down = await RedisServer.start([]);
    const downUrl = `redis://127.0.0.1:${down.port}`;
    await down.close();
    assert.equal(await check([downUrl, ...nodes.map((n) => `redis://127.0.0.1:${n.port}`)]), true, 'answered through a later seed, on whichever shard holds the key');
    assert.equal(await check([downUrl]), false);
  });

  it('a sharded subscriber killed on the chat\'s master (ioredis resubscribes with no event): every instance still delivers every seq, once, in order, nothing closed', async () => {
    const [g1, g2] = gateways as [GatewayProcess, GatewayProcess];
    const chat = 7373;
    const owner = await ownerOf(Number(await cli(nodes[0]!.port, 'cluster', 'keyslot', `{${chat}}`)));
    const sender = await TestClient.connect(g1.wsUrl);
    await sender.register(await api.mintToken(31), chat);
    const receivers = [await TestClient.connect(g1.wsUrl), await TestClient.connect(g2.wsUrl)];
    for (const [i, c] of receivers.entries()) await c.register(await api.mintToken(32 + i), chat);
    let last: Record<string, unknown> = {};
    for (let n = 0; n < 60; n++) {
      if (n === 15) await cli(owner, 'client', 'kill', 'type', 'pubsub');
      last = await sender.request({ type: 'message', data: { id: `k${n}`, ciphertext: 'x' } }, { type: 'ack', id: `k${n}` }, 5000);
      await new Promise((r) => setTimeout(r, 25));
    }
    for (const c of receivers) {
      await c.next((f) => f.type === 'message' && f.seq === last.seq && f.epoch === last.epoch, 5000);
      const seqs = c.all({ type: 'message' }).map((f) => f.seq as number);
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => seqs[0]! + i), 'a gap or a duplicate');
      assert.equal(seqs.length, 60);
      assert.equal(c.isOpen, true);
    }
    for (const c of [sender, ...receivers]) c.close();
  });

  /** The port of the master serving `slot`, read from CLUSTER NODES ("… ip:port@bus … master … 0-5460"). */
  async function ownerOf(slot: number): Promise<number> {
    for (const line of (await cli(nodes[0]!.port, 'cluster', 'nodes')).split('\n')) {
      const fields = line.split(' ');
      if (!fields[2]?.includes('master')) continue;
      const port = Number(fields[1]!.split('@')[0]!.split(':')[1]);
      for (const range of fields.slice(8)) {
        const [start, end = start] = range.split('-').map(Number);
        if (slot >= start! && slot <= end!) return port;
      }
    }
    throw new Error(`no owner for slot ${slot}`);
  }
});
