import { after } from 'node:test';
import { WebSocket } from 'ws';
import { createClient, type Client, type ClientEvents, type ClientOptions } from '../../packages/client/src/index.js';
import { uniqueChat, waitFor, type Harness } from '../support/harness.js';
import { RelayProxy } from './proxy.js';

type EventName = keyof ClientEvents;

/** An SDK client (Node 20: `ws` passed in) that records every event it emits. */
export class Recorded {
  readonly events: Array<{ type: EventName; event: unknown }> = [];

  constructor(readonly client: Client) {
    const names: EventName[] = ['state', 'registered', 'unregistered', 'message', 'edit', 'delete', 'event', 'presence', 'typing', 'gap', 'sent', 'failed', 'unhandled', 'error'];
    for (const type of names) client.on(type, (event) => this.events.push({ type, event }));
  }

  all<K extends EventName>(type: K, match: (e: ClientEvents[K]) => boolean = () => true): Array<ClientEvents[K]> {
    return this.events.filter((e) => e.type === type).map((e) => e.event as ClientEvents[K]).filter(match);
  }

  /** Waits until an event of `type` matching has been emitted (at any time so far) and returns the first. */
  async next<K extends EventName>(type: K, match: (e: ClientEvents[K]) => boolean = () => true, timeoutMs = 5000): Promise<ClientEvents[K]> {
    await waitFor(() => this.all(type, match).length > 0, timeoutMs, `SDK event ${type}; got ${JSON.stringify(this.events.slice(-6))}`);
    return this.all(type, match)[0]!;
  }

  /** Ids of the messages delivered, in order. */
  messageIds(): string[] {
    return this.all('message').map((e) => e.message.id);
  }

  /** The state changes, e.g. ['connecting', 'connected', 'disconnected', …]. */
  states(): string[] {
    return this.all('state').map((e) => e.state);
  }
}

const clients: Client[] = [];
after(() => {
  for (const c of clients.splice(0)) c.close();
});

/** A recorded SDK client for `user`, to `url` (default the harness's first instance). Closed after the suite. */
export async function sdk(h: Harness, user: number | string, options: Partial<ClientOptions> = {}): Promise<Recorded> {
  const client = createClient({ url: h.instances[0]!.wsUrl, token: await h.token(user), WebSocket, ...options });
  clients.push(client);
  return new Recorded(client);
}

/** Users 1 (`a`) and 2 (`b`) with handles on a fresh chat; not awaited ready (each test picks the order). */
export async function sdkPair(h: Harness) {
  const chatId = uniqueChat();
  const a = await sdk(h, 1);
  const b = await sdk(h, 2);
  return { chatId, a, b, chatA: a.client.chat(chatId), chatB: b.client.chat(chatId) };
}

/** A relay proxy in front of instance `i`, closed after the suite. */
export async function proxy(h: Harness, i = 0): Promise<RelayProxy> {
  const p = await RelayProxy.start(h.instances[i]!.wsUrl);
  after(() => p.close());
  return p;
}

/** Reconnect quickly: for tests that cut links. */
export const fast = { reconnect: { minDelayMs: 50, maxDelayMs: 200 } };

/**
 * Users 1 (`a`) and 2 (`b`) ready in a fresh chat; the one named by `cut` connects through a
 * relay proxy `p` (with fast reconnects), so the test can cut its link.
 */
export async function cuttablePair(h: Harness, cut: 'a' | 'b') {
  const chatId = uniqueChat();
  const p = await proxy(h);
  const via = { url: p.url, ...fast };
  const a = await sdk(h, 1, cut === 'a' ? via : {});
  const b = await sdk(h, 2, cut === 'b' ? via : {});
  const chatA = a.client.chat(chatId);
  await chatA.ready();
  await b.client.chat(chatId).ready();
  return { chatId, p, a, b, chatA };
}

export const text = (s: string) => ({ ciphertext: Buffer.from(s).toString('base64'), nonce: 'bm9uY2U', envelopes: {} });
