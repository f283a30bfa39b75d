import assert from 'node:assert/strict';
import { execFile as execFileCb } from 'node:child_process';
import { describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { Backend, ChatApp, converge, sleep, table, until, type AppReport, type EngineKind } from './fault-kit.js';

/**
 * Proof under faults: SDK apps against real gateway processes (each behind a relay proxy, the
 * "load balancer" backends; every app has the list of them), sending concurrently while links
 * are cut, the instance an app is on is SIGKILLed, redis-server restarts, and the main API
 * answers 503. Afterwards every app's history must hold every message the others got acked —
 * each once, live messages in the chat's one order — and every send must have settled.
 */

const execFile = promisify(execFileCb);

type Fault = [name: string, run: (b: Backend, chats: number[]) => Promise<void>];

let chatBase = 3_000_000 + (process.pid % 1000) * 1000;

/** Cuts every link; the network stays down for a moment, then comes back. */
const cutLinks: Fault = [
  'links cut and restored',
  async (b) => {
    for (const s of b.slots) s.proxy.refusing = true;
    b.cut();
    await sleep(400);
    for (const s of b.slots) s.proxy.refusing = false;
  },
];
const apiOutage: Fault = ['main API answers 503 for 40 saves', async (b) => b.apiOutage(40)];
const redisRestart: Fault = ['redis-server restarted', async (b) => b.restartRedis(500)];
/** SIGKILLs the instance most apps are on; with one instance (memory) it is started again. */
const killBusiest: Fault = [
  'the instance apps are on SIGKILLed',
  async (b) => {
    const busiest = b.slots.reduce((best, s, i) => (s.proxy.open.length > b.slots[best]!.proxy.open.length ? i : best), 0);
    await b.kill(busiest);
    if (b.slots.length === 1) await b.restart(busiest);
  },
];
/** Restarts the Cluster master serving the first chat (its stream is lost with it). */
const clusterMasterRestart: Fault = ['the Cluster master of a chat restarted', async (b, chats) => b.restartRedis(500, await b.nodeOf(chats[0]!))];

async function scenario(t: TestContext, engine: EngineKind, instances: number, faults: Fault[]): Promise<AppReport[]> {
  const b = await Backend.start({ engine, instances });
  const chats = [++chatBase, ++chatBase];
  const apps: ChatApp[] = [];
  try {
    for (let user = 1; user <= 4; user++) apps.push(new ChatApp(user, chats, await b.api.mintToken(user), b.urls(user), b.api));
    await Promise.all(apps.map((a) => a.ready()));
    for (const a of apps) a.startSending(8);
    for (const [name, fault] of faults) {
      await sleep(1000);
      t.diagnostic(`fault: ${name}`);
      await fault(b, chats);
    }
    await sleep(1000);
    await Promise.all(apps.map((a) => a.stopSending()));
    const settled = await Promise.all(apps.map((a) => a.settled(30_000)));
    const reports = await converge(apps, 15_000, b.kills, b.api);
    for (const line of table(reports).split('\n')) t.diagnostic(line);
    assert.deepEqual(settled, apps.map(() => true), 'every send settled');
    for (const r of reports) {
      assert.equal(r.unsettled, 0);
      assert.ok(r.acked > 0, `user ${r.user} got acks`);
      for (const code of Object.keys(r.rejected)) assert.doesNotMatch(code, /^untyped/, `user ${r.user}: a send rejected with an untyped error`);
      assert.equal(r.duplicated, 0, `user ${r.user}: a message delivered twice`);
      assert.deepEqual(r.lostIds, [], `user ${r.user}: messages lost:\n${r.lostDetails.join('\n')}`);
      assert.equal(r.echoes, 0, `user ${r.user}: its own message shown to it`);
      assert.deepEqual(r.orderViolations, [], `user ${r.user}: order`);
      if (r.neverBroadcast > 0) t.diagnostic(`user ${r.user}: ${r.neverBroadcast} saved but never broadcast by the gateway (known gateway limits, see docs/client-sdk.md, Soak): ${r.neverBroadcastIds.join(' ')}`);
    }
    for (const a of apps) assert.ok(a.client.state === 'connected', `user ${a.user} connected at the end`);
    return reports;
  } catch (err) {
    t.diagnostic(b.logs());
    throw err;
  } finally {
    for (const a of apps) a.close();
    await b.close();
  }
}

describe('SDK under faults against real gateway processes', () => {
  it('memory engine, one process: links cut, main API 503s, the process SIGKILLed and restarted (history gone: gaps filled from the main API)', async (t) => {
    const reports = await scenario(t, 'memory', 1, [cutLinks, apiOutage, killBusiest]);
    for (const r of reports) assert.ok(r.gaps >= 1, `user ${r.user}: the restart is a gap`);
  });

  it('Redis engine, two processes on one redis-server: links cut, main API 503s, redis-server restarted, an instance SIGKILLed', async (t) => {
    const reports = await scenario(t, 'redis', 2, [cutLinks, apiOutage, redisRestart, killBusiest]);
    for (const r of reports) assert.ok(r.gaps >= 1, `user ${r.user}: the lost Redis streams are gaps`);
  });

  it('Redis engine, three processes: an instance SIGKILLed, links cut, redis-server restarted, main API 503s', async (t) => {
    await scenario(t, 'redis', 3, [killBusiest, cutLinks, redisRestart, apiOutage]);
  });

  it('Redis Cluster, three masters, two processes: links cut, main API 503s, an instance SIGKILLed, a master restarted', async (t) => {
    await scenario(t, 'cluster', 2, [cutLinks, apiOutage, killBusiest, clusterMasterRestart]);
  });

  it('over the gateway rate limit (burst 5): frames the gateway drops unread are resent; 20 sends at once all acked, each delivered once', async (t) => {
    const b = await Backend.start({ engine: 'memory', instances: 1, env: { RATE_LIMIT_BURST: '5' } });
    const chats = Array.from({ length: 10 }, () => ++chatBase);
    const sender = new ChatApp(1, chats, await b.api.mintToken(1), b.urls(), b.api);
    const receiver = new ChatApp(2, chats, await b.api.mintToken(2), b.urls(), b.api);
    try {
      // Ten registers at once each: over a burst of 5, so some are dropped unread and resent.
      await Promise.all([sender.ready(30_000), receiver.ready(30_000)]);
      const sends = Array.from({ length: 20 }, (_, i) => sender.send(chats[i % chats.length]!));
      assert.ok(await sender.settled(30_000), 'every send settled');
      await Promise.all(sends);
      const [report] = await converge([receiver, sender], 10_000);
      for (const line of table([report!]).split('\n')) t.diagnostic(line);
      assert.equal([...sender.sent.values()].filter((r) => r.outcome === 'acked').length, 20, 'all 20 acked');
      assert.equal(report!.delivered, 20, 'all 20 delivered live');
      assert.equal(report!.duplicated, 0);
      // The case this is about happened: the gateway refused frames and dropped others unread.
      const refused = b.slots[0]!.proxy.links.flatMap((l) => l.fromGateway).filter((f) => f.type === 'error' && f.code === 'rate_limited');
      assert.ok(refused.length >= 1, 'the gateway answered rate_limited');
      const metrics = await (await fetch(`${b.slots[0]!.gateway!.httpUrl}/metrics`)).text();
      const dropped = Number(/message_service_ops_total\{type="invalid",result="rate_limited"\} (\d+)/.exec(metrics)?.[1] ?? 0);
      assert.ok(dropped >= 1, 'the gateway dropped frames unread');
      t.diagnostic(`rate_limited answers: ${refused.length}; frames dropped unread: ${dropped}`);
      for (const app of [sender, receiver]) assert.equal(app.client.state, 'connected', 'no 1008: the SDK backed off');
    } finally {
      sender.close();
      receiver.close();
      await b.close();
    }
  });

});
