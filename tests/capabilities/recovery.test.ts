import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { TestClient, sleep, type Frame } from '../support/client.js';
import { ENGINE_MODES, Harness, metric, uniqueChat, useHarness } from '../support/harness.js';

const run = promisify(execFile);
const STREAM = new Set(['message', 'edit_message', 'delete_message']);
const stream = (c: TestClient, chat: number, from = 0) => c.frames.slice(from).filter((f) => STREAM.has(f.type) && f.chat_id === chat);
const seqs = (frames: Frame[]) => frames.map((f) => f.seq as number);
const idOf = (f: Frame) => (f.data as { id: string }).id;
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Registers with `since` and returns the frames answered: the replay, then `registered`. */
/** Sends a message whose save takes 400 ms, and stops Redis while the main API holds it: saved, not yet published. */
async function sendAsRedisStops(h: Harness, sender: TestClient, id: string): Promise<void> {
  h.api.addFault({ op: 'save', delayMs: 400, times: 1 });
  sender.send({ type: 'message', data: { id, ciphertext: 'x' } });
  await sleep(150);
  await h.redis!.stop();
}

async function resume(c: TestClient, token: string, chat: number, since: { seq: number; epoch: string }): Promise<{ replay: Frame[]; registered: Frame }> {
  const from = c.frames.length;
  const registered = await c.request({ type: 'register', token, chat_id: chat, since }, (f) => f.type === 'registered' || f.type === 'error');
  assert.equal(registered.type, 'registered', JSON.stringify(registered));
  const at = c.frames.indexOf(registered);
  return { replay: c.frames.slice(from, at).filter((f) => STREAM.has(f.type)), registered };
}

for (const mode of ENGINE_MODES) {
  describe(`chat stream: seq, epoch and recovery [${mode}]`, () => {
    const h = useHarness(mode, { RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000', MAX_PENDING_WRITES: '1000' });

    it('every broadcast of a chat is numbered 1, 2, 3 … in one order for every receiver; acks carry the same positions; presence and typing are not numbered', async () => {
      if (mode === 'redis') await h.gateway();
      const chat = uniqueChat();
      const last = h.instances.length - 1;
      const senders = await Promise.all([1, 2, 3].map((u, i) => h.member(u, chat, i % (last + 1))));
      const receivers = await Promise.all([11, 12, 13, 14].map((u, i) => h.member(u, chat, i % (last + 1))));
      const epoch = receivers[0]!.all({ type: 'registered' })[0]!.epoch;
      const perSender = 30;
      senders.forEach((c, s) => {
        for (let i = 0; i < perSender; i++) c.send({ type: 'message', data: { id: `s${s}-${i}-${chat}`, ciphertext: 'x' } });
        c.send({ type: 'typing', chat_id: chat });
      });
      const total = senders.length * perSender;
      await Promise.all(receivers.map((r) => r.next(() => stream(r, chat).length >= total, 15_000)));
      const order = stream(receivers[0]!, chat).map(idOf);
      for (const r of receivers) {
        const got = stream(r, chat);
        assert.deepEqual(seqs(got), range(1, total));
        assert.ok(got.every((f) => f.epoch === epoch));
        assert.deepEqual(got.map(idOf), order);
        assert.ok(r.all({ type: 'presence' }).every((f) => f.seq === undefined));
        assert.ok(r.all({ type: 'typing' }).every((f) => f.seq === undefined));
      }
      for (const s of senders) {
        await s.next(() => s.all({ type: 'ack' }).length >= perSender, 10_000);
        for (const ack of s.all({ type: 'ack' })) {
          assert.equal(ack.epoch, epoch);
          assert.equal(order[(ack.seq as number) - 1], ack.id, 'ack position matches the broadcast');
        }
      }
      for (const c of [...senders, ...receivers]) c.close();
    });

    it('register with since: the missed broadcasts are replayed in order, byte for byte as live, before registered {recovered:true}; then live continues', async () => {
      const { chat, a, b } = await h.pair();
      const token2 = await h.token(2);
      const watcher = await h.member(3, chat);
      for (let i = 0; i < 3; i++) await a.request({ type: 'message', data: { id: `before${i}-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await b.next(() => stream(b, chat).length === 3);
      const seen = stream(b, chat).at(-1)!;
      b.close();
      await b.closed;
      const missedIds = [`m0-${chat}`, `m1-${chat}`];
      await a.request({ type: 'message', data: { id: missedIds[0], ciphertext: 'x' } }, { type: 'ack' });
      await a.request({ type: 'edit_message', data: { id: missedIds[0], ciphertext: 'y' } }, { type: 'ack' });
      await a.request({ type: 'message', data: { id: missedIds[1], ciphertext: 'x' } }, { type: 'ack' });
      await a.request({ type: 'delete_message', data: { id: `before0-${chat}` } }, { type: 'ack' });
      await watcher.next(() => stream(watcher, chat).length === 7);
      const live = stream(watcher, chat).slice(3);

      const back = await TestClient.connect(h.instances[0]!.wsUrl);
      const { replay, registered } = await resume(back, token2, chat, { seq: seen.seq as number, epoch: seen.epoch as string });
      assert.deepEqual(replay, live, 'the replay is exactly what a live receiver got');
      assert.equal(registered.recovered, true);
      assert.equal(registered.reason, undefined);
      assert.deepEqual([registered.seq, registered.epoch], [7, seen.epoch]);
      const ack = await a.request({ type: 'message', data: { id: `after-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const next = await back.next({ type: 'message', seq: 8 });
      assert.equal(idOf(next), `after-${chat}`);
      assert.equal(ack.seq, 8);
      // Resuming at the current position replays nothing and still recovers.
      const again = await resume(back, token2, chat, { seq: 8, epoch: seen.epoch as string });
      assert.deepEqual(again.replay, []);
      assert.equal(again.registered.recovered, true);
      assert.equal(await metric(h.instances[0]!, 'message_service_recoveries_total', { outcome: 'recovered' }) >= 2, true);
      for (const c of [a, back, watcher]) c.close();
    });

    it('a position from another epoch or beyond the end is refused epoch_changed, with nothing replayed', async () => {
      const { chat, a, b } = await h.pair();
      await a.request({ type: 'message', data: { id: `x-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const epoch = b.all({ type: 'registered' })[0]!.epoch as string;
      const c = await TestClient.connect(h.instances[0]!.wsUrl);
      const token = await h.token(2);
      for (const since of [{ seq: 0, epoch: 'someOtherEpoch' }, { seq: 5, epoch }]) {
        const { replay, registered } = await resume(c, token, chat, since);
        assert.deepEqual(replay, []);
        assert.deepEqual([registered.recovered, registered.reason, registered.seq, registered.epoch], [false, 'epoch_changed', 1, epoch]);
      }
      for (const x of [a, b, c]) x.close();
    });

    it('a bad since is bad_request', async () => {
      const c = await TestClient.connect(h.instances[0]!.wsUrl);
      const token = await h.token(1);
      for (const since of [{ seq: -1, epoch: 'e' }, { seq: 1.5, epoch: 'e' }, { seq: 1, epoch: '' }, { seq: 1 }, { seq: 1, epoch: 'a"b' }, 'x']) {
        const err = await c.request({ type: 'register', token, chat_id: uniqueChat(), since }, { type: 'error' });
        assert.equal(err.code, 'bad_request', JSON.stringify(since));
      }
      c.close();
    });

    it('HISTORY_SIZE bounds the replay (too_far_behind), HISTORY_SIZE=0 keeps none (no_history), HISTORY_TTL_MS ages entries out', async () => {
      const check = async (env: Record<string, string>, missed: number, wait: number, reason: string) => {
        const inst = await h.gateway(env);
        const chat = uniqueChat();
        const a = await TestClient.connect(inst.wsUrl);
        await a.register(await h.token(1), chat);
        const reg = await (await TestClient.connect(inst.wsUrl)).register(await h.token(2), chat);
        for (let i = 0; i < missed; i++) await a.request({ type: 'message', data: { id: `h${i}-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
        await sleep(wait);
        const c = await TestClient.connect(inst.wsUrl);
        const { replay, registered } = await resume(c, await h.token(2), chat, { seq: reg.seq as number, epoch: reg.epoch as string });
        assert.deepEqual(replay, [], JSON.stringify(env));
        assert.deepEqual([registered.recovered, registered.reason, registered.seq], [false, reason, missed], JSON.stringify(env));
        a.close();
        c.close();
      };
      await check({ HISTORY_SIZE: '5' }, 6, 0, 'too_far_behind');
      await check({ HISTORY_SIZE: '0' }, 2, 0, 'no_history');
      await check({ HISTORY_TTL_MS: '1000' }, 2, 1300, 'too_far_behind');
      // Within the bounds it recovers.
      const inst = await h.gateway({ HISTORY_SIZE: '5' });
      const chat = uniqueChat();
      const a = await TestClient.connect(inst.wsUrl);
      await a.register(await h.token(1), chat);
      for (let i = 0; i < 7; i++) await a.request({ type: 'message', data: { id: `k${i}-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const c = await TestClient.connect(inst.wsUrl);
      const epoch = (await c.register(await h.token(2), chat)).epoch as string;
      const { replay, registered } = await resume(c, await h.token(2), chat, { seq: 2, epoch });
      assert.deepEqual(seqs(replay), [3, 4, 5, 6, 7]);
      assert.equal(registered.recovered, true);
      a.close();
      c.close();
    });

    it('a replay larger than half of MAX_BUFFERED_BYTES is refused too_far_behind instead of overflowing the connection', async () => {
      const inst = await h.gateway({ MAX_BUFFERED_BYTES: '16384', MAX_MESSAGE_BYTES: '3072' }); // the least buffer 3072 allows (config: 5 × + 1024)
      const chat = uniqueChat();
      const a = await TestClient.connect(inst.wsUrl);
      await a.register(await h.token(1), chat);
      const c = await TestClient.connect(inst.wsUrl);
      const start = await c.register(await h.token(2), chat);
      c.close();
      for (let i = 0; i < 4; i++) await a.request({ type: 'message', data: { id: `big${i}-${chat}`, ciphertext: 'x'.repeat(3000) } }, { type: 'ack' });
      const d = await TestClient.connect(inst.wsUrl);
      const { replay, registered } = await resume(d, await h.token(2), chat, { seq: start.seq as number, epoch: start.epoch as string });
      assert.deepEqual(replay, []);
      assert.equal(registered.reason, 'too_far_behind');
      assert.ok(d.isOpen);
      a.close();
      d.close();
    });

    it('resuming while the chat is busy: replay then live, each position exactly once, no gap', async () => {
      const { chat, a, b } = await h.pair();
      const token2 = await h.token(2);
      for (let i = 0; i < 5; i++) await a.request({ type: 'message', data: { id: `p${i}-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await b.next(() => stream(b, chat).length === 5);
      const last = stream(b, chat).at(-1)!;
      b.close();
      let sending = true;
      let sent = 5;
      const pump = (async () => {
        while (sending) {
          await a.request({ type: 'message', data: { id: `q${sent}-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
          sent++;
        }
      })();
      await sleep(50);
      const c = await TestClient.connect(h.instances[0]!.wsUrl);
      await resume(c, token2, chat, { seq: last.seq as number, epoch: last.epoch as string });
      await sleep(150);
      sending = false;
      await pump;
      await c.next(() => stream(c, chat).length >= sent - 5, 5000);
      assert.deepEqual(seqs(stream(c, chat)), range(6, sent));
      a.close();
      c.close();
    });

    it('registrations racing a busy chat on every instance: re-registering without since and resuming with since lose nothing, repeat nothing, and registered names the exact boundary', async () => {
      // Memory-engine instances share nothing: there, everything runs on one.
      const n = mode === 'redis' ? 2 : 1;
      if (mode === 'redis') await h.gateway();
      const chat = uniqueChat();
      const senders = await Promise.all([1, 2, 3].map((u, i) => h.member(u, chat, i % n)));
      const stayer = await h.member(11, chat, n - 1);
      const token11 = await h.token(11);
      const token12 = await h.token(12);
      let sending = true;
      let total = 0;
      const pumps = senders.map(async (s, k) => {
        for (let i = 0; sending; i++) {
          await s.request({ type: 'message', data: { id: `r${k}-${i}-${chat}`, ciphertext: 'x' } }, { type: 'ack' }, 5000);
          total++;
        }
      });
      // One connection re-registers without since, over and over; it never leaves the chat.
      const reregistering = (async () => {
        for (let i = 0; i < 40; i++) await stayer.request({ type: 'register', token: token11, chat_id: chat }, { type: 'registered' }, 5000);
      })();
      // Another leaves and comes back with its last position, over and over, on alternating instances.
      const legs: Array<{ client: TestClient; since: number }> = [];
      const resuming = (async () => {
        let at = { seq: 0, epoch: stayer.all({ type: 'registered' })[0]!.epoch as string };
        for (let i = 0; i < 12; i++) {
          const c = await h.connect(i % n);
          legs.push({ client: c, since: at.seq });
          await resume(c, token12, chat, at);
          await sleep(20);
          c.close();
          await c.closed;
          const last = stream(c, chat).at(-1);
          if (last !== undefined) at = { seq: last.seq as number, epoch: last.epoch as string };
        }
      })();
      await Promise.all([reregistering, resuming]);
      sending = false;
      await Promise.all(pumps);
      await stayer.next(() => stream(stayer, chat).length >= total, 5000).catch(() => undefined);
      // Every broadcast once, in order; each `registered` between exactly the broadcasts at or before its position and those after.
      assert.deepEqual(seqs(stream(stayer, chat)), range(1, total), `the re-registering connection lost or repeated broadcasts: ${JSON.stringify(stayer.frames.slice(0, 8))}`);
      const answers = stayer.all((f) => f.type === 'registered');
      for (const answer of answers.slice(1)) {
        const at = stayer.frames.indexOf(answer);
        const before = stream(stayer, chat).filter((f) => stayer.frames.indexOf(f) < at).at(-1);
        assert.equal(answer.seq, before?.seq ?? 0, 'registered names where the connection stands');
      }
      for (const { client, since } of legs) {
        const got = seqs(stream(client, chat));
        assert.deepEqual(got, range(since + 1, since + got.length), `resume after ${since}: ${got.join(',')}`);
        const answer = client.all({ type: 'registered' })[0]!;
        const after = stream(client, chat).filter((f) => client.frames.indexOf(f) > client.frames.indexOf(answer));
        assert.ok(after.every((f) => (f.seq as number) > (answer.seq as number)), 'a broadcast at or before registered came after it');
      }
      for (const c of [...senders, stayer]) c.close();
    });

    it('a chat that was quiet past HISTORY_TTL_MS keeps its epoch: a client at the top resumes with nothing missed, live members go on in the same epoch', async () => {
      const inst = await h.gateway({ HISTORY_TTL_MS: '1000' });
      const i = h.instances.indexOf(inst);
      const chat = uniqueChat();
      const a = await h.member(1, chat, i);
      const b = await h.member(2, chat, i);
      const first = await a.request({ type: 'message', data: { id: `q0-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await sleep(2600); // past the TTL and at least one sweep of the memory engine (every second)
      const c = await h.connect(i);
      const { replay, registered } = await resume(c, await h.token(3), chat, { seq: first.seq as number, epoch: first.epoch as string });
      assert.deepEqual([replay.length, registered.recovered, registered.epoch], [0, true, first.epoch]);
      await a.request({ type: 'message', data: { id: `q1-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const next = await b.next((f) => f.type === 'message' && idOf(f) === `q1-${chat}`);
      assert.deepEqual([next.seq, next.epoch], [2, first.epoch]);
      for (const x of [a, b, c]) x.close();
    });
  });
}

describe('chat stream after Redis loses it', () => {
  it('FLUSHALL: the next broadcast starts a new epoch at seq 1; the old position is refused epoch_changed, never recovered with a gap', async () => {
    const h = new Harness('redis', { RATE_LIMIT_BURST: '1000' });
    await h.start();
    try {
      await h.gateway();
      const { chat, a, b } = await h.pair();
      await a.request({ type: 'message', data: { id: `one-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const first = await b.next({ type: 'message' });
      await run('redis-cli', ['-p', String(h.redis!.port), 'flushall']);
      const ack = await a.request({ type: 'message', data: { id: `two-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const second = await b.next((f) => f.type === 'message' && idOf(f) === `two-${chat}`);
      assert.equal(second.seq, 1);
      assert.notEqual(second.epoch, first.epoch);
      assert.deepEqual([ack.seq, ack.epoch], [1, second.epoch]);
      const c = await TestClient.connect(h.instances[0]!.wsUrl);
      const { replay, registered } = await resume(c, await h.token(2), chat, { seq: first.seq as number, epoch: first.epoch as string });
      assert.deepEqual(replay, []);
      assert.deepEqual([registered.recovered, registered.reason, registered.seq, registered.epoch], [false, 'epoch_changed', 1, second.epoch]);
      for (const x of [a, b, c]) x.close();
    } finally {
      await h.close();
    }
  });

  it('Redis down between the save and the broadcast: the broadcast is retried and delivered once Redis is back; past PUBLISH_RETRY_MS it is acked without a position and published late, once Redis is back', async () => {
    const h = new Harness('redis', { RATE_LIMIT_BURST: '1000', PUBLISH_RETRY_MS: '8000' });
    await h.start();
    try {
      const inst = await h.gateway();
      const { chat, a, b } = await h.pair();
      await sendAsRedisStops(h, a, `r-${chat}`);
      await sleep(1000);
      await h.redis!.startProcess();
      const ack = await a.next({ type: 'ack', id: `r-${chat}` }, 10_000);
      assert.equal(typeof ack.seq, 'number');
      const got = await b.next((f) => f.type === 'message' && idOf(f) === `r-${chat}`, 5000);
      assert.deepEqual([got.seq, got.epoch], [ack.seq, ack.epoch]);
      assert.ok((await metric(inst, 'message_service_publish_retries_total')) > 0);
      assert.equal(await metric(inst, 'message_service_publish_dropped_total'), 0);
      for (const x of [a, b]) x.close();

      // Redis gone for longer than PUBLISH_RETRY_MS: acked as saved, without a position, and
      // broadcast late — under the position it gets then — once Redis is back.
      const short = await h.gateway({ PUBLISH_RETRY_MS: '500' });
      const chat2 = uniqueChat();
      const s = await TestClient.connect(short.wsUrl);
      await s.register(await h.token(1), chat2);
      const r = await TestClient.connect(short.wsUrl);
      await r.register(await h.token(2), chat2);
      await sendAsRedisStops(h, s, `d-${chat2}`);
      const late = await s.next({ type: 'ack', id: `d-${chat2}` }, 5000);
      assert.equal(late.seq, undefined);
      assert.equal(late.duplicate, false);
      assert.equal(r.all({ type: 'message' }).length, 0);
      await h.redis!.startProcess();
      const got2 = await r.next((f) => f.type === 'message' && idOf(f) === `d-${chat2}`, 10_000);
      assert.equal(typeof got2.seq, 'number');
      assert.equal(await metric(short, 'message_service_publish_late_total'), 1);
      assert.equal(await metric(short, 'message_service_publish_dropped_total'), 0);
      // The sender's ack had no position: the late broadcast reaches it too, under the same one.
      const own = await s.next((f) => f.type === 'message' && idOf(f) === `d-${chat2}`, 5000);
      assert.deepEqual([own.seq, own.epoch], [got2.seq, got2.epoch]);
      s.close();
      r.close();
    } finally {
      await h.close();
    }
  });
});
