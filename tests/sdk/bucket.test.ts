import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { ClientError, createClient, type Client } from '../../packages/client/src/index.js';
import { sleep } from '../support/client.js';
import { uniqueChat, useHarness, waitFor } from '../support/harness.js';
import type { Link } from './proxy.js';
import { fast, proxy, sdk, text } from './support.js';

/**
 * The gateway's token bucket refuses the first frame over it `rate_limited` (with
 * `retry_after_ms`) without reading it: a refusal that says nothing about the request, which
 * the SDK sends again once the gateway reads again. These gateways have a bucket smaller than
 * the SDK's pacing (set above it here), which the SDK says it handles.
 */
const BUCKET = { RATE_LIMIT_BURST: '3', RATE_LIMIT_PER_SEC: '1' };
/** Pacing that never holds a frame back: the gateway's bucket is what refuses. */
const unpaced = { rateLimit: { perSec: 100, burst: 100 } };

/** 'resolved', or the code and message a promise (a write, `ready()`) rejects with. */
const outcome = (p: Promise<unknown>) => p.then(() => 'resolved', (e: unknown) => (e instanceof ClientError ? `${e.code}: ${e.message}` : String(e)));

/** The bucket's refusal of a request of `op` for `chat`, as the gateway sent it on `link`. */
const bucketRefusal = (link: Link | undefined, op: string, chat?: number) =>
  link?.fromGateway.find((f) => f.type === 'error' && f.code === 'rate_limited' && typeof f.retry_after_ms === 'number' && f.op === op && (chat === undefined || String(f.chat_id) === String(chat)));

const framesOf = (link: Link, type: string, chat: number) => link.fromClient.filter((f) => f.type === type && String(f.chat_id) === String(chat));

describe('SDK: an unregister refused by the gateway\'s token bucket', () => {
  const h = useHarness('memory', { MAX_CHATS_PER_CONNECTION: '3', ...BUCKET });

  it('is sent again after the pause: the gateway lets go of the chat (the others see the user offline) and a later chat fits in its place', { timeout: 30_000 }, async () => {
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url, ...unpaced });
    const b = await sdk(h, 2);
    const [k, c1, c2] = [uniqueChat(), uniqueChat(), uniqueChat()];
    const chats = [a.client.chat(k), a.client.chat(c1), a.client.chat(c2)];
    await Promise.all(chats.map((c) => c.ready()));
    const watcher = b.client.chat(c1);
    await watcher.ready();
    await sleep(3500); // the gateway's bucket is full again (3)
    // Three pings take the bucket's three tokens; the unregister right after them is refused.
    const pings = [a.client.ping(), a.client.ping(), a.client.ping()];
    chats[1]!.leave();
    await Promise.all(pings);
    const link = p.links[0]!;
    await waitFor(() => bucketRefusal(link, 'unregister', c1) !== undefined, 5000, 'the bucket\'s refusal of the unregister');
    // The gateway lets go of the chat: B is told A went offline there.
    await b.next('presence', (e) => String(e.chatId) === String(c1) && String(e.userId) === '1' && e.status === 'offline', 8000);
    assert.equal(framesOf(link, 'unregister', c1).length, 2, 'the refused unregister was sent again');
    assert.ok(link.fromGateway.some((f) => f.type === 'unregistered' && String(f.chat_id) === String(c1) && f.reason === undefined), 'and answered');
    // The app has k, c2 and a new one: 3, within MAX_CHATS_PER_CONNECTION.
    const c3 = a.client.chat(uniqueChat());
    assert.equal(await outcome(c3.ready()), 'resolved', 'a third chat fits: A left c1');
    assert.deepEqual(a.all('unregistered'), []);
    assert.deepEqual(a.all('unhandled'), []);
  });
});

describe('SDK: a register refused by the gateway\'s token bucket (a chat being left)', () => {
  const h = useHarness('memory', BUCKET);

  it('after a reconnect, the register of a chat being left is sent again after the pause: the writes made before leave() are sent and acked, then the chat is unregistered', { timeout: 40_000 }, async () => {
    const p = await proxy(h);
    const a = await sdk(h, 1, { url: p.url, ...fast, ...unpaced });
    const chats = [uniqueChat(), uniqueChat(), uniqueChat(), uniqueChat()].map((id) => a.client.chat(id));
    await Promise.all(chats.map((c) => c.ready()));
    const left = chats[3]!;
    const leftId = left.id as number;
    await sleep(3500); // the bucket is full again
    h.api.addFault({ op: 'save', delayMs: 1500, times: 1 });
    const w1 = outcome(left.send(text('first, at the main API when the link drops'), { id: 'bucket-leave-w1' }));
    const w2 = outcome(left.send(text('second, waiting behind the first'), { id: 'bucket-leave-w2' }));
    left.leave(); // writes already made are still sent and answered, then the chat is unregistered
    await sleep(300);
    p.cut(); // a network blip: the next connection registers the four chats, the last one over the bucket
    assert.deepEqual(await Promise.all([w1, w2]), ['resolved', 'resolved'], 'both writes made before leave() are answered');
    const link = p.links[1]!;
    assert.ok(bucketRefusal(link, 'register', leftId), 'the left chat\'s register was refused by the bucket');
    assert.equal(framesOf(link, 'register', leftId).length, 2, 'and sent again');
    assert.ok(h.api.messages.has('bucket-leave-w2'), 'the write never sent before the blip was saved');
    await waitFor(() => link.fromGateway.some((f) => f.type === 'unregistered' && String(f.chat_id) === String(leftId)), 5000, 'the left chat unregistered');
    assert.deepEqual(a.all('failed'), []);
    assert.deepEqual(a.all('unregistered'), []);
  });

  it('a chat left while its register refused by the bucket waits for the pause still sends and acks its write', { timeout: 40_000 }, async () => {
    const p = await proxy(h);
    // A backoff long enough that a register retried with backoff (as a refusal for now) would
    // still be waiting when the chat is left.
    const a = await sdk(h, 1, { url: p.url, ...unpaced, reconnect: { minDelayMs: 2000, maxDelayMs: 2000 } });
    const chats = [uniqueChat(), uniqueChat(), uniqueChat(), uniqueChat()].map((id) => a.client.chat(id));
    await Promise.all(chats.map((c) => c.ready()));
    const left = chats[3]!;
    const leftId = left.id as number;
    p.cut();
    await a.next('state', (e) => e.state === 'disconnected');
    const w = outcome(left.send(text('made while disconnected'), { id: 'bucket-left-in-pause' }));
    // The next connection registers the four chats; the last one's register is over the bucket.
    await waitFor(() => bucketRefusal(p.links[1], 'register', leftId) !== undefined, 10_000, 'the bucket\'s refusal of the register');
    left.leave();
    assert.equal(await w, 'resolved');
    assert.ok(h.api.messages.has('bucket-left-in-pause'));
    const link = p.links[1]!;
    await waitFor(() => link.fromGateway.some((f) => f.type === 'unregistered' && String(f.chat_id) === String(leftId)), 5000, 'the left chat unregistered');
    assert.deepEqual(a.all('failed'), []);
  });
});

describe('SDK: a refresh refused by the gateway\'s token bucket', () => {
  const h = useHarness('memory', BUCKET);

  it('is sent again after the pause with the same token: not a failed attempt, the provider is not asked again', { timeout: 30_000 }, async () => {
    const u = 31;
    const p = await proxy(h);
    const tokens: string[] = [];
    let client: Client | undefined;
    const a = await sdk(h, u, {
      url: p.url,
      ...unpaced,
      // 6 s tokens refreshed 3 s ahead: the bucket is full again (3) when the refresh is due.
      refreshLeadMs: 3000,
      token: async () => {
        const token = await h.token(u, { expiresInSec: tokens.length === 0 ? 6 : 60 });
        tokens.push(token);
        // The refresh's token: three pings take the bucket's three tokens, and the refresh
        // that follows them is refused.
        if (tokens.length === 2) for (let i = 0; i < 3; i++) void client!.ping().catch(() => undefined);
        return token;
      },
    });
    client = a.client;
    const chat = a.client.chat(uniqueChat());
    await chat.ready();
    const link = p.links[0]!;
    await waitFor(() => link.fromGateway.some((f) => f.type === 'refreshed'), 8000, 'refreshed');
    assert.ok(bucketRefusal(link, 'refresh'), 'the refresh was refused by the bucket');
    const refreshes = link.fromClient.filter((f) => f.type === 'refresh');
    assert.equal(refreshes.length, 2, 'sent again');
    assert.deepEqual(refreshes.map((f) => f.token), [tokens[1], tokens[1]], 'with the same token');
    assert.equal(tokens.length, 2, 'the provider was not asked again');
    assert.deepEqual(a.all('error'), []);
    // Past the first token's exp: the registration holds the new one (no token_expired).
    const exp = JSON.parse(Buffer.from(tokens[0]!.split('.')[1]!, 'base64url').toString()) as { exp: number };
    await waitFor(() => Date.now() > exp.exp * 1000 + 500, 8000, 'the first token expired');
    await chat.send(text('still registered'));
    assert.deepEqual(link.fromGateway.filter((f) => f.type === 'unregistered'), []);
    assert.equal(a.all('registered').length, 1);
  });
});

describe('SDK: a chat waiting for a place while an unregister is refused by the bucket (scripted gateway)', () => {
  it('registers once the unregister, sent again, is answered — not on its refusal (which freed no place)', { timeout: 20_000 }, async () => {
    const g = await PlaceGateway.start();
    const client = createClient({ url: g.url, token: 't', WebSocket });
    after(() => client.close());
    const unregistered: unknown[] = [];
    client.on('unregistered', (e) => unregistered.push(e));
    const [c1, c2] = [client.chat(1), client.chat(2)];
    await Promise.all([c1.ready(), c2.ready()]);
    c1.leave(); // its unregister is refused once the third chat waits for its place
    const c3 = client.chat(3);
    assert.equal(await outcome(c3.ready()), 'resolved', 'the third chat registers in the place c1 left');
    assert.deepEqual(unregistered, [], 'it was not dropped bad_request');
    const unregisters = g.received.flatMap((f, i) => (f.type === 'unregister' ? [i] : []));
    assert.equal(unregisters.length, 2, 'the refused unregister was sent again');
    const registers = g.received.flatMap((f, i) => (f.type === 'register' && f.chat_id === 3 ? [i] : []));
    assert.ok(registers.length >= 2, 'the third chat was refused past the limit first');
    assert.ok(registers.slice(0, -1).every((i) => i < unregisters[1]!) && registers.at(-1)! > unregisters[1]!, 'and registered again only after the unregister was answered');
  });
});

type Frame = Record<string, unknown> & { type: string };

/**
 * A scripted gateway that holds at most two chats per connection and refuses the first
 * `unregister` `rate_limited` as its token bucket does — answering it only once a third chat's
 * register was refused past the limit, so that chat is waiting for a place when the refusal comes.
 */
class PlaceGateway {
  readonly received: Frame[] = [];

  private constructor(private readonly server: WebSocketServer) {
    server.on('connection', (ws) => {
      const chats = new Set<string>();
      let refused = false;
      let refusal: string | null = null;
      const send = (f: Frame) => ws.send(JSON.stringify(f));
      ws.on('message', (data) => {
        const f = JSON.parse(String(data)) as Frame;
        this.received.push(f);
        const chat = String(f.chat_id);
        if (f.type === 'register') {
          if (!chats.has(chat) && chats.size >= 2) {
            send({ type: 'error', code: 'bad_request', message: 'a connection may register to at most 2 chats', op: 'register', chat_id: f.chat_id, retryable: false });
            if (refusal !== null) ws.send(refusal);
            refusal = null;
            return;
          }
          chats.add(chat);
          return send({ type: 'registered', chat_id: f.chat_id, user_id: 1, online: [1], seq: 0, epoch: 'e1' });
        }
        if (f.type === 'unregister') {
          if (!refused) {
            refused = true;
            refusal = JSON.stringify({ type: 'error', code: 'rate_limited', message: 'too many requests; slow down', op: 'unregister', chat_id: f.chat_id, retryable: true, retry_after_ms: 1000 });
            return;
          }
          chats.delete(chat);
          return send({ type: 'unregistered', chat_id: f.chat_id });
        }
        if (f.type === 'ping') return send({ type: 'pong' });
      });
    });
  }

  static async start(): Promise<PlaceGateway> {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((resolve) => server.once('listening', () => resolve()));
    after(() => {
      for (const ws of server.clients) ws.terminate();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    return new PlaceGateway(server);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/ws`;
  }
}
