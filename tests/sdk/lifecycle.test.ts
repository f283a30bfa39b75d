import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { WebSocketServer, WebSocket } from 'ws';
import { ClientError, createClient, MemoryStorage, type ClientOptions, type OutboxEntry } from '../../packages/client/src/index.js';
import { sleep } from '../support/client.js';
import { uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { proxy, sdk, text } from './support.js';

/** Runs exit-fixture.ts `what` and resolves with how long the process lived, in ms. */
function lifetime(what: string, url: string, token: string): Promise<{ ms: number; code: number | null; out: string }> {
  const started = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', 'tests/sdk/exit-fixture.ts', what, url, token], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  child.stderr.on('data', (d: Buffer) => (out += d));
  const kill = setTimeout(() => child.kill('SIGKILL'), 40_000);
  return new Promise((resolve) => child.on('exit', (code) => (clearTimeout(kill), resolve({ ms: Date.now() - started, code, out }))));
}

/** A stand-in gateway on a real socket that answers a register with `frames` (for answers the real one never gives). */
async function scriptedGateway(frames: object[]): Promise<{ url: string; close(): void }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => server.once('listening', r));
  server.on('connection', (ws) =>
    ws.on('message', (d) => {
      if ((JSON.parse(String(d)) as { type: string }).type !== 'register') return;
      for (const f of frames) ws.send(JSON.stringify(f));
    }),
  );
  return { url: `ws://127.0.0.1:${(server.address() as { port: number }).port}/ws`, close: () => server.close() };
}

describe('SDK lifecycle: leaving, closing, timers, the app\'s own callbacks [memory]', () => {
  const h = useHarness('memory');

  it('a chat left while its register is out is unregistered when the answer comes: nobody sees the user online, no stray events', async () => {
    const chatId = uniqueChat();
    const a = await sdk(h, 1);
    await a.client.chat(uniqueChat()).ready(); // connected, so the register goes out at once
    const left = a.client.chat(chatId);
    left.leave();
    await sleep(300);
    const b = await sdk(h, 2);
    const chatB = b.client.chat(chatId);
    assert.deepEqual((await chatB.ready()).online, [2], 'user 1 is not registered in the chat it left');
    await chatB.send(text('after the leave'));
    await sleep(200);
    assert.deepEqual(a.all('unhandled'), [], 'no frame of the left chat reaches the app');
    assert.deepEqual(a.messageIds(), []);
  });

  it("a left handle's listeners stay silent after the chat is opened again (one event per listener of the new handle)", async () => {
    const chatId = uniqueChat();
    const a = await sdk(h, 1);
    const b = await sdk(h, 2);
    await b.client.chat(chatId).ready();
    const heard: string[] = [];
    const old = a.client.chat(chatId);
    old.on('message', (e) => heard.push(`old:${e.message.id}`));
    await old.ready();
    old.leave();
    const again = a.client.chat(chatId);
    again.on('message', (e) => heard.push(`new:${e.message.id}`));
    await again.ready();
    await b.client.chat(chatId).send(text('m'), { id: `relisten-${chatId}` });
    await a.next('message');
    await sleep(100);
    assert.deepEqual(heard, [`new:relisten-${chatId}`]);
  });

  it('no SDK timer keeps a Node process alive: close or leave while connecting, close from a listener, leave with an edit held', async () => {
    const token = await h.token(1);
    for (const what of ['close-while-connecting', 'leave-while-connecting', 'close-in-connected-listener', 'leave-with-held-edit', 'leave-while-the-token-provider-hangs']) {
      const run = await lifetime(what, h.instances[0]!.wsUrl, token);
      assert.equal(run.code, 0, `${what}: ${run.out}`);
      assert.match(run.out, new RegExp(`${what}: done`));
      // The fixture arms 60 s timers; a process that lived that long kept one of them.
      assert.ok(run.ms < 20_000, `${what}: exited after ${run.ms} ms`);
    }
  });

  it('a chat left and opened again while its register is out is registered by that one register (no second one refused rate_limited)', async () => {
    const chatId = uniqueChat();
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url });
    await a.client.chat(uniqueChat()).ready();
    h.api.addFault({ op: 'verify', delayMs: 800, times: 1 });
    const first = a.client.chat(chatId);
    await sleep(50);
    first.leave();
    const again = a.client.chat(chatId);
    await again.ready();
    const registers = p.links[0]!.fromClient.filter((f) => f.type === 'register' && f.chat_id === chatId);
    assert.equal(registers.length, 1);
    assert.equal(p.links[0]!.fromGateway.filter((f) => f.type === 'error' && f.chat_id === chatId).length, 0);
    assert.equal((await again.send(text('registered'))).duplicate, false);
  });

  it('a chat reopened with an older position while its earlier register is out gets everything after that position', async () => {
    const chatId = uniqueChat();
    const b = await sdk(h, 2);
    const chatB = b.client.chat(chatId);
    await chatB.ready();
    const acks = [];
    for (let i = 1; i <= 5; i++) acks.push(await chatB.send(text(`m${i}`), { id: `older-${chatId}-${i}` }));
    const epoch = acks[0]!.epoch!;
    const a = await sdk(h, 1);
    await a.client.chat(uniqueChat()).ready();
    h.api.addFault({ op: 'verify', delayMs: 600, times: 1 });
    const first = a.client.chat(chatId, { since: { seq: 4, epoch } });
    await sleep(50);
    first.leave();
    const again = a.client.chat(chatId, { since: { seq: 1, epoch } });
    await waitFor(() => a.messageIds().length >= 4, 5000, `replay; got ${JSON.stringify(a.messageIds())}`);
    await sleep(300);
    assert.deepEqual(a.messageIds(), [2, 3, 4, 5].map((i) => `older-${chatId}-${i}`));
    assert.deepEqual(a.all('gap'), []);
    assert.deepEqual(again.position, { seq: 5, epoch });
  });

  it('a chat opened from a `connected` listener is registered once', async () => {
    const chatId = uniqueChat();
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url });
    a.client.on('state', (e) => {
      if (e.state === 'connected') a.client.chat(chatId);
    });
    await a.client.chat(uniqueChat()).ready();
    await a.client.chat(chatId).ready();
    assert.equal(p.links[0]!.fromClient.filter((f) => f.type === 'register' && f.chat_id === chatId).length, 1);
  });

  it('token provider failures in a row are counted anew after a quiet spell; a provider that says "logged out" during a refresh ends the client', async () => {
    let fail = true;
    const token = await h.token(1);
    const a = await sdk(h, 1, {
      reconnect: { minDelayMs: 20, maxDelayMs: 50 },
      tokenGiveUpMs: 1000,
      token: () => {
        if (fail) throw new Error('token endpoint down');
        return token;
      },
    });
    const first = a.client.chat(uniqueChat());
    await a.next('error');
    first.leave();
    await sleep(1500);
    const second = a.client.chat(uniqueChat());
    await sleep(100);
    fail = false;
    await second.ready(); // not ended by two failures 1.5 s apart
    // Logged out: the provider's first token is a 3 s JWT; the refresh ahead of exp throws.
    let calls = 0;
    const b = await sdk(h, 2, {
      token: async () => {
        if (++calls === 1) return h.api.mintToken(2, { expiresInSec: 3 });
        throw new ClientError('unauthorized', 'logged out');
      },
    });
    await b.client.chat(uniqueChat()).ready();
    const final = await b.next('state', (e) => e.retryInMs === null, 5000);
    assert.equal(final.error?.message, 'logged out');
    assert.equal(b.all('unregistered').filter((e) => e.reason === 'token_expired').length, 0, 'ended before the token expired');
  });

  it('a url function with nothing for a moment is a failed attempt, not the end; Infinity as a timeout is the longest timer', async () => {
    let attempts = 0;
    const a = await sdk(h, 1, {
      url: () => (++attempts === 1 ? '' : h.instances[0]!.wsUrl),
      reconnect: { minDelayMs: 20, maxDelayMs: 50 },
      tokenTimeoutMs: Infinity,
      token: async () => h.token(1),
    });
    assert.equal((await a.client.chat(uniqueChat()).ready()).userId, 1);
    assert.ok(attempts >= 2);
    assert.throws(() => createClient({ url: [], token: 't', WebSocket }), /no gateway URL/);
  });

  it('pings waiting in the pacing queue, or for their pong, reject closed when the client closes', async () => {
    const a = await sdk(h, 1, { rateLimit: { perSec: 1, burst: 2 } });
    await a.client.chat(uniqueChat()).ready();
    await sleep(2100); // the bucket refills after the register
    const pings = [1, 2, 3, 4].map(() => a.client.ping().then(() => 'pong', (e: { code: string }) => e.code));
    a.client.close(); // the first two are out (no pong yet), the others queued
    const settled = await Promise.race([Promise.all(pings), sleep(2000).then(() => 'pending')]);
    assert.notEqual(settled, 'pending', 'every ping settled');
    assert.deepEqual(settled, ['closed', 'closed', 'closed', 'closed'], 'told the client was closed (as every pending promise is), not disconnected');
    assert.equal(await a.client.ping().then(() => 'pong', (e: { code: string }) => e.code), 'closed', 'a ping after close()');
  });

  it('a JWT valid for longer than a timer can wait (~24.8 days) is refreshed once, ahead of its exp, not in a loop', async () => {
    let calls = 0;
    const a = await sdk(h, 1, {
      token: () => {
        calls++;
        return h.api.mintToken(1, { expiresInSec: 30 * 24 * 3600 });
      },
    });
    await a.client.chat(uniqueChat()).ready();
    await sleep(1500);
    assert.equal(calls, 1, 'asked once (for the register); the refresh is weeks away');
    assert.deepEqual(a.all('error'), []);
  });

  it('an own message restored from the storage after a restart is not shown to its sender when it is replayed', async () => {
    const chatId = uniqueChat();
    const storage = new MemoryStorage();
    const first = await sdk(h, 1, { storage });
    const chat = first.client.chat(chatId);
    await chat.ready();
    await chat.send(text('first'), { id: `own0-${chatId}` });
    const since = chat.position!;
    h.api.addFault({ op: 'save', delayMs: 400, times: 1 });
    chat.send(text('crash'), { id: `own1-${chatId}` }).catch(() => undefined);
    await sleep(100);
    first.client.close(); // the app dies with the write at the main API; the storage keeps it
    await waitFor(() => h.api.messages.has(`own1-${chatId}`), 3000, 'saved');
    const second = await sdk(h, 1, { storage });
    second.client.chat(chatId, { since });
    const sent = await second.next('sent');
    assert.equal(sent.ack.id, `own1-${chatId}`);
    assert.equal(sent.ack.duplicate, true);
    await sleep(200);
    assert.deepEqual(second.messageIds(), [], 'its own message is not delivered to it');
  });

  it("a late answer to an edit's earlier send never settles the next edit of the same message", async () => {
    const chatId = uniqueChat();
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url, requestTimeoutMs: 300, reconnect: { minDelayMs: 50, maxDelayMs: 100 } });
    const chat = a.client.chat(chatId);
    const id = `edits-${chatId}`;
    await chat.send(text('v0'), { id });
    h.api.addFault({ op: 'edit', delayMs: 600, times: 3 }); // v1 and its resends are slower than requestTimeoutMs
    const v1 = chat.edit(id, text('v1'));
    const v2 = chat.edit(id, text('v2'));
    await v1;
    await v2;
    p.cut(); // had v2 been settled by v1's late answer, it would never have been sent
    await waitFor(() => h.api.messages.get(id)?.ciphertext === text('v2').ciphertext, 4000, 'v2 reached the main API');
  });

  it('a malformed outbox storage (load() returns no array, or junk entries) is reported, and sending still works', async () => {
    const badId = { key: 'k', op: 'message', chatId: 1, order: 1, data: { id: 'id with spaces', ciphertext: 'eA' } };
    for (const loaded of [undefined, [null, { key: 1 }], [badId]]) {
      const storage = { load: () => loaded as unknown as OutboxEntry[], put: () => undefined, remove: () => undefined };
      const a = await sdk(h, 1, { storage });
      const chat = a.client.chat(uniqueChat());
      assert.equal((await chat.send(text('works'))).duplicate, false);
      const reported = await a.next('error');
      assert.equal(reported.during, 'outbox storage');
    }
  });

  it("an app's isKnownMessage that throws is reported and taken as 'not known'; the stream carries on", async () => {
    const gw = await scriptedGateway([
      { type: 'registered', chat_id: 1, user_id: 1, online: [1], seq: 0, epoch: 'e' },
      { type: 'edit_message', chat_id: 1, seq: 1, epoch: 'e', data: { id: 'from-history', ciphertext: 'bmV3', sender_id: 2 } },
      { type: 'message', chat_id: 1, seq: 2, epoch: 'e', data: { id: 'm2', ciphertext: 'eA', sender_id: 2, chat_id: 1 } },
      // A bogus seq from a broken gateway is not a position: it must not hide what follows.
      { type: 'message', chat_id: 1, seq: 1e300, epoch: 'e', data: { id: 'm-bogus', ciphertext: 'eA', sender_id: 2, chat_id: 1 } },
      { type: 'message', chat_id: 1, seq: 3, epoch: 'e', data: { id: 'm3', ciphertext: 'eA', sender_id: 2, chat_id: 1 } },
    ]);
    try {
      const options: ClientOptions = {
        url: gw.url,
        token: 't',
        WebSocket,
        hold: { ms: 100 },
        isKnownMessage: () => {
          throw new Error('local database not open yet');
        },
      };
      const client = createClient(options);
      const seen: string[] = [];
      const errors: string[] = [];
      client.on('message', (e) => seen.push(`message ${e.message.id}`));
      client.on('edit', (e) => seen.push(`edit ${e.edit.id}`));
      client.on('error', (e) => errors.push(e.during));
      const chat = client.chat(1);
      await waitFor(() => seen.length >= 4, 3000, `deliveries; got ${JSON.stringify(seen)}`);
      assert.deepEqual(seen, ['message m2', 'message m-bogus', 'message m3', 'edit from-history']);
      assert.deepEqual(chat.position, { seq: 3, epoch: 'e' });
      assert.deepEqual(errors, ['isKnownMessage']);
      client.close();
    } finally {
      gw.close();
    }
  });
});

describe('SDK lifecycle: a write the main API applied after the gateway gave up [memory, UPSTREAM_TIMEOUT_MS=1000]', () => {
  const h = useHarness('memory', { UPSTREAM_TIMEOUT_MS: '1000' });

  it('a delete answered upstream_unavailable that the main API applied anyway resolves on its resend (not_found there = done)', async () => {
    const chatId = uniqueChat();
    const a = await sdk(h, 1);
    const chat = a.client.chat(chatId);
    const id = `del-${chatId}`;
    await chat.send(text('x'), { id });
    // The first delete outlasts the gateway's timeout but is applied; the resend comes after it.
    h.api.addFault({ op: 'delete', delayMs: 1500, times: 1 });
    h.api.addFault({ op: 'delete', delayMs: 800, times: 1 }); // resends reach the main API after the first was applied
    const ack = await chat.delete(id);
    assert.equal(ack.duplicate, true);
    assert.ok(h.api.deleted.has(id));
    assert.ok(h.api.requests.filter((r) => r.op === 'delete' && r.path.includes(id)).length >= 2, 'resent after upstream_unavailable');
    assert.deepEqual(a.all('failed'), []);
  });
});
