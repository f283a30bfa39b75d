/** Redis stalled, full, refusing writes or losing keys, seen from clients (the outages are in redis-outages.test.ts). */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestClient, sleep, presence, type Frame } from '../support/client.js';
import { metric, uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { GatewayProcess } from '../support/process.js';
import { drainBoundMs } from '../../src/gateway.js';
import { cli, online } from '../support/redis-kit.js';

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
    await watcher.next(presence(2, 'online'));
    const mark = watcher.frames.length;
    stoppable.kill('SIGSTOP');
    await watcher.next(presence(2, 'offline'), PRESENCE_TTL_MS * 3 + 2000, mark);
    stoppable.kill('SIGCONT');
    await watcher.next(presence(2, 'online'), PRESENCE_TTL_MS + 2000, mark);
    await sleep(PRESENCE_TTL_MS); // more refreshes and sweeps: nothing further is announced
    assert.deepEqual(watcher.all({ type: 'presence', user_id: 2 }).map((f) => f.status), ['online', 'offline', 'online']);
    assert.ok(stalled.isOpen);
    const fresh = await h.member(3, chat, 0);
    assert.deepEqual(online(fresh.frames.at(-1)!), [1, 2, 3]);
    for (const c of [watcher, stalled, fresh]) c.close();
  });

  it('FLUSHALL: the refresh restores presence and announces it; newcomers see the right online list', async () => {
    const { chat, a, b } = await h.pair(0);
    await a.next(presence(2, 'online'));
    const [markA, markB] = [a.frames.length, b.frames.length];
    await redisCli('flushall');
    await a.next(presence(2, 'online'), 3000, markA);
    await b.next(presence(1, 'online'), 3000, markB);
    const c = await h.member(3, chat);
    assert.deepEqual(online(c.frames.at(-1)!), [1, 2, 3]);
    for (const x of [a, b, c]) x.close();
  });

  it('FLUSHALL, then the last connection of a user leaves: offline is still announced', async () => {
    const { a, b } = await h.pair(1);
    await a.next(presence(2, 'online'));
    await redisCli('flushall');
    b.close();
    await a.next(presence(2, 'offline'));
    a.close();
  });

  it('rolling deploys: a publication of a kind this version does not know is not handed to clients; extra header fields are ignored', async () => {
    const { chat, a, b } = await h.pair(0);
    const channel = `ms:chat:{${chat}}`;
    const frame = (id: string) => JSON.stringify({ type: 'message', chat_id: chat, data: { id, ciphertext: 'x' } });
    // As a later version might publish them: a new kind (`!` + a name), and a frame whose header has a third field.
    assert.ok(Number(await redisCli('publish', channel, `zz1 !future\n${frame('from-a-new-kind')}`)) >= 1);
    assert.ok(Number(await redisCli('publish', channel, `zz2 nobody later-field\n${frame('with-extra-field')}`)) >= 1);
    await a.request({ type: 'message', data: { id: `live-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
    await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `live-${chat}`);
    const ids = b.all({ type: 'message' }).map((f) => (f.data as { id: string }).id);
    assert.deepEqual(ids, ['with-extra-field', `live-${chat}`]);
    assert.ok(a.all({ type: 'message' }).every((f) => (f.data as { id: string }).id !== 'from-a-new-kind'));
    a.close();
    b.close();
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
    // A readiness probe that timed out in the pause keeps the instance unready for a moment.
    await waitFor(() => h.instances[0]!.gateway.engine.isReady(), 3000, 'ready after the pause');
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

describe('Redis stalled past the command timeout: a retried append is not broadcast twice', () => {
  const h = useHarness('redis');
  // Instance 1 keeps presence entries for a minute: a ghost would outlive the test.
  before(() => h.gateway({ PRESENCE_TTL_MS: '60000' }));

  /** Pauses Redis (SIGSTOP: every socket stays up) for `ms` while `during` runs. */
  async function stalled(ms: number, during: () => Promise<void> | void): Promise<void> {
    h.redis!.signal('SIGSTOP');
    try {
      await during();
      await sleep(ms);
    } finally {
      h.redis!.signal('SIGCONT');
    }
  }

  it('a leave that timed out during a stall, which Redis ran when it woke, still announces offline', async () => {
    const { chat, a, b } = await h.pair(0);
    await a.next(presence(2, 'online'));
    const mark = a.frames.length;
    // The leave's command times out after 2 s and is logged as failed; Redis runs it on SIGCONT,
    // so the entry is gone and no sweep will ever find it: only running the leave again tells.
    await stalled(3000, () => b.close());
    await a.next(presence(2, 'offline'), 10_000, mark);
    const c = await h.member(3, chat, 0);
    assert.deepEqual(online(c.all({ type: 'registered' })[0]!), [1, 3]);
    await sleep(500);
    assert.equal(a.all({ type: 'presence', user_id: 2 }).filter((f) => f.status === 'offline').length, 1, 'announced once');
    a.close();
    c.close();
  });

  it('a register retried at once after its presence write timed out in a stall announces online (the first write, run late, is undone first)', async () => {
    const chat = uniqueChat();
    const a = await h.member(1, chat, 1);
    const b = await h.connect(1);
    const token = await h.token(2);
    const register = { type: 'register', token, chat_id: chat };
    const answered = (f: Frame) => f.type === 'registered' || f.type === 'error';
    let mark = 0;
    h.redis!.signal('SIGSTOP');
    try {
      await sleep(100);
      const first = await b.request(register, { type: 'error' }, 6000);
      assert.equal(first.code, 'upstream_unavailable');
      mark = b.frames.length;
      b.send(register); // the client's retry, while Redis still sleeps
      await sleep(300);
    } finally {
      h.redis!.signal('SIGCONT');
    }
    // On a slow machine the stall may have made the instance unready before the retry: the
    // retry is then refused at once, and the client retries again (the property is the same).
    let reg = await b.next(answered, 5000, mark);
    for (let tries = 0; reg.type === 'error' && tries < 10; tries++) {
      await sleep(500);
      reg = await b.request(register, answered, 5000);
    }
    assert.equal(reg.type, 'registered', JSON.stringify(reg));
    assert.deepEqual(online(reg), [1, 2]);
    await a.next(presence(2, 'online'), 3000);
    await sleep(500);
    assert.equal(a.frames.filter(presence(2, 'offline')).length, 0, 'no offline for the undone first write');
    a.close();
    b.close();
  });

  it('an instance drained during a Redis stall still announces its users offline when Redis answers within the drain', async () => {
    const draining = await h.gateway({ PRESENCE_TTL_MS: '60000' });
    const chat = uniqueChat();
    await h.member(1, chat, h.instances.indexOf(draining));
    const watcher = await h.member(2, chat, 1);
    let drained: Promise<void> | undefined;
    h.redis!.signal('SIGSTOP');
    try {
      drained = draining.gateway.shutdown();
      await sleep(2600); // its leaves time out (2 s) and run when Redis wakes: the entry goes, unannounced
    } finally {
      h.redis!.signal('SIGCONT');
    }
    await drained;
    await watcher.next(presence(1, 'offline'), 5000);
    watcher.close();
  });

  it('a register whose presence write timed out during a stall leaves no entry behind once Redis wakes', async () => {
    const chat = uniqueChat();
    const a = await h.member(1, chat, 1);
    const b = await h.connect(1);
    const token = await h.token(2);
    let answer: Frame | undefined;
    await stalled(500, async () => {
      await sleep(100);
      answer = await b.request({ type: 'register', token, chat_id: chat }, { type: 'error' }, 6000);
    });
    assert.equal(answer!.code, 'upstream_unavailable');
    // The join ran when Redis woke, for a member never attached: undone, rather than left online
    // for the presence TTL (a minute on this instance) — b, still connected, is not registered.
    await waitFor(async () => (await cli(h.redis!.port, 'zrange', `ms:presence:{${chat}}`, '0', '-1')) === '1', 8000, 'only user 1 has a presence entry');
    const c = await h.member(3, chat, 1);
    assert.deepEqual(online(c.all({ type: 'registered' })[0]!), [1, 3]);
    // Nobody was told user 2 came online, so nobody is told it went offline either.
    assert.equal(a.frames.filter((f) => presence(2, 'online')(f) || presence(2, 'offline')(f)).length, 0);
    for (const x of [a, b, c]) x.close();
  });

  it('a message sent while Redis is paused 5 s is saved once, broadcast once, stored once; the ack names that position', async () => {
    const { chat, a, b } = await h.pair(0);
    const id = `stall-${chat}`;
    h.redis!.signal('SIGSTOP');
    try {
      a.send({ type: 'message', data: { id, ciphertext: 'eA' } });
      // Attempts at ~0 s, ~2.1 s and ~4.3 s each time out after COMMAND_TIMEOUT_MS (2 s) and stay queued in Redis.
      await sleep(5000);
    } finally {
      h.redis!.signal('SIGCONT');
    }
    const ack = await a.next({ type: 'ack', id }, 10_000);
    const got = await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === id, 10_000);
    await sleep(1000);
    assert.equal(b.all({ type: 'message' }).length, 1, 'delivered once');
    assert.equal(got.seq, ack.seq, 'the ack names the position it was broadcast under');
    assert.equal(await cli(h.redis!.port, 'xlen', `ms:history:{${chat}}`), '1', 'stored once');
    assert.equal(h.api.requests.filter((r) => r.op === 'save' && JSON.stringify(r.body).includes(id)).length, 1);
    // The stream goes on from there.
    await a.request({ type: 'message', data: { id: `${id}-next`, ciphertext: 'eA' } }, { type: 'ack' });
    const next = await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `${id}-next`);
    assert.equal(next.seq, (ack.seq as number) + 1);
    a.close();
    b.close();
  });
});


describe('Redis that is up but does not serve: readiness and logs tell', () => {
  const h = useHarness('redis');
  const readyz = async () => (await fetch(`${h.instances[0]!.gateway.url}/readyz`)).status;
  const logged = (msg: string) => h.instances[0]!.logs.filter((l) => l.includes(msg)).length;

  it('out of memory (every write refused OOM): /readyz 503 and one error line, then ready again when Redis takes writes', async () => {
    assert.equal(await readyz(), 200);
    await cli(h.redis!.port, 'config', 'set', 'maxmemory', '1');
    try {
      await waitFor(async () => (await readyz()) === 503, 8000, '/readyz 503 while every write is refused');
      assert.equal(logged('redis does not answer writes'), 1);
      assert.ok(h.instances[0]!.logs.some((l) => l.includes('redis does not answer writes') && l.includes('OOM')), 'the error Redis gave is in the line');
      // Not ready: a new connection is refused 503 (a load balancer tries another instance).
      await assert.rejects(TestClient.connect(h.instances[0]!.wsUrl), (e: { status?: number }) => e.status === 503);
    } finally {
      await cli(h.redis!.port, 'config', 'set', 'maxmemory', '0');
    }
    await waitFor(async () => (await readyz()) === 200, 8000, 'ready again');
    assert.equal(logged('redis answers again: ready'), 1);
  });

  it('stalled until not ready, then killed and restarted: ready again, and broadcasts flow again', async () => {
    const { chat, a, b } = await h.pair();
    h.redis!.signal('SIGSTOP');
    await waitFor(async () => (await readyz()) === 503, 15_000, 'not ready during the stall');
    await h.redis!.stop(); // SIGKILL: its data is gone
    await h.redis!.startProcess();
    await waitFor(async () => (await readyz()) === 200, 10_000, 'ready again');
    // The catch-up after the outage ran although the first probe after it had not answered yet.
    await a.request({ type: 'message', data: { id: `after-restart-${chat}`, ciphertext: 'eA' } }, { type: 'ack' }, 5000);
    await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === `after-restart-${chat}`, 5000);
    a.close();
    b.close();
  });

  it('stalled (SIGSTOP) while every socket stays up: /readyz 503 during the stall, 200 after it', async () => {
    assert.equal(await readyz(), 200);
    h.redis!.signal('SIGSTOP');
    try {
      await waitFor(async () => (await readyz()) === 503, 15_000, '/readyz 503 during the stall'); // two probes time out: ~4–6 s, more on a busy machine
    } finally {
      h.redis!.signal('SIGCONT');
    }
    await waitFor(async () => (await readyz()) === 200, 8000, 'ready after the stall');
    const { chat, a, b } = await h.pair();
    await a.request({ type: 'message', data: { id: `after-stall-${chat}`, ciphertext: 'eA' } }, { type: 'ack' });
    await b.next({ type: 'message' });
    a.close();
    b.close();
  });
});

describe('SIGTERM while Redis is stalled: the drain keeps its documented bound', () => {
  const h = useHarness('redis');

  it('messages in flight, Redis SIGSTOPped, SIGTERM: the process exits 0 within SHUTDOWN_TIMEOUT_MS + UPSTREAM_TIMEOUT_MS + 4.25 s', async () => {
    const env = { SHUTDOWN_TIMEOUT_MS: '0', UPSTREAM_TIMEOUT_MS: '1000' };
    const bound = drainBoundMs({ shutdownTimeoutMs: 0, upstreamTimeoutMs: 1000 });
    assert.equal(bound, 0 + 1000 + 4250, 'the bound the docs state');
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: h.api.url, REDIS_HOST: h.redis!.url, LOG_LEVEL: 'info', ...env });
    try {
      await gw.listening();
      await waitFor(async () => (await fetch(`${gw.httpUrl}/readyz`)).status === 200, 5000, 'readyz');
      const chat = uniqueChat();
      const a = await TestClient.connect(gw.wsUrl);
      await a.register(await h.token(1), chat);
      h.api.addFault({ op: 'save', delayMs: 300, times: 4 });
      for (let i = 0; i < 4; i++) a.send({ type: 'message', data: { id: `drain-${chat}-${i}`, ciphertext: 'eA' } });
      await sleep(50);
      h.redis!.signal('SIGSTOP');
      const started = Date.now();
      gw.kill('SIGTERM');
      const exit = await Promise.race([gw.exited, sleep(bound + 3000).then(() => null)]);
      const took = Date.now() - started;
      assert.notEqual(exit, null, `still running ${took} ms after SIGTERM:\n${gw.output.slice(-2000)}`);
      assert.equal(exit!.code, 0, gw.output.slice(-2000));
      assert.ok(took <= bound + 1000, `exited after ${took} ms; bound ${bound} ms`);
      a.close();
    } finally {
      h.redis!.signal('SIGCONT');
      await gw.stop();
    }
  });
});

describe('Redis stalled past PUBLISH_RETRY_MS: the late broadcast an attempt had made reaches its sender', () => {
  const h = useHarness('redis', { PUBLISH_RETRY_MS: '500' });

  it('the ack has no position, the sender then receives its own broadcast with it, everyone gets it once', async () => {
    const { chat, a, b } = await h.pair(0);
    const id = `late-${chat}`;
    h.redis!.signal('SIGSTOP');
    try {
      a.send({ type: 'message', data: { id, ciphertext: 'eA' } });
      const ack = await a.next({ type: 'ack', id }, 5000);
      assert.equal(ack.seq, undefined, 'acked without a position once PUBLISH_RETRY_MS passed');
      await sleep(3000);
    } finally {
      h.redis!.signal('SIGCONT');
    }
    const own = await a.next((f) => f.type === 'message' && (f.data as { id: string }).id === id, 8000);
    const got = await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === id, 8000);
    assert.equal(own.seq, got.seq, 'the position it was broadcast under');
    await sleep(500);
    assert.equal(b.all({ type: 'message' }).length, 1);
    assert.equal(a.all({ type: 'message' }).length, 1);
    assert.equal(await cli(h.redis!.port, 'xlen', `ms:history:{${chat}}`), '1');
    // Broadcast late (by the first attempt, run when Redis woke), and counted so: never lost between late and dropped.
    assert.equal(await metric(h.instances[0]!, 'message_service_publish_late_total'), 1);
    assert.equal(await metric(h.instances[0]!, 'message_service_publish_dropped_total'), 0);
    a.close();
    b.close();
  });

  it('a write saved while a broadcast of its chat waits to be published late goes out after it: an edit never overtakes its message', async () => {
    const { chat, a, b } = await h.pair(0);
    const id = `late-edit-${chat}`;
    h.api.addFault({ op: 'save', delayMs: 800, times: 1 });
    a.send({ type: 'message', data: { id, ciphertext: 'v1' } });
    await sleep(100);
    await cli(h.redis!.port, 'config', 'set', 'maxmemory', '1'); // every append refused OOM, the connections stay up
    try {
      const ack = await a.next({ type: 'ack', id }, 5000);
      assert.equal(ack.seq, undefined, 'acked without a position once PUBLISH_RETRY_MS passed');
      await waitFor(() => !h.instances[0]!.gateway.engine.isReady(), 5000, 'the probes see the refusals');
    } finally {
      await cli(h.redis!.port, 'config', 'set', 'maxmemory', '0');
    }
    await waitFor(() => h.instances[0]!.gateway.engine.isReady(), 5000, 'ready again');
    // It waits for its chat's late broadcast, then is appended as usual: its ack has its position.
    const edited = await a.request({ type: 'edit_message', data: { id, ciphertext: 'v2' } }, { type: 'ack', op: 'edit_message' }, 5000);
    assert.equal(edited.seq, 2);
    await b.next({ type: 'edit_message' }, 5000);
    assert.deepEqual(b.all((f) => f.type === 'message' || f.type === 'edit_message').map((f) => [f.type, f.seq]), [['message', 1], ['edit_message', 2]]);
    a.close();
    b.close();
  });
});
