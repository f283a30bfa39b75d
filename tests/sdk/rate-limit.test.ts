import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { createClient, type Client } from '../../packages/client/src/index.js';
import { waitFor } from '../support/harness.js';

type Frame = Record<string, unknown> & { type: string };

interface Script {
  /** This frame (1-based, per connection) is refused `rate_limited`; frames in the next second are dropped. */
  limitAt?: number;
  /**
   * Or: the first frame this matches is refused `rate_limited`, its answer held back until a
   * frame `limitAnswerOn` matches arrives (so that frame was surely sent after the refused one).
   */
  limitWhen?: (f: Frame) => boolean;
  limitAnswerOn?: (f: Frame) => boolean;
  /**
   * Frames arriving during the pause are not dropped but read once it ends (the real gateway
   * drops only what it read together with the refused frame; what waits in the socket is read later).
   */
  readAfterPause?: boolean;
  /** Frames dropped without any answer. */
  silently?: (f: Frame) => boolean;
  /** Edits, answered in order after `delayMs` each; `refuse` answers the n-th edit read (1-based) with that error code. */
  edits?: { delayMs: number; refuse?: { nth: number; code: string } };
  /** Pongs sent for each ping read (a ping sent twice, both read, is answered twice). */
  pongsPerPing?: number;
}

/**
 * A scripted gateway, to pin down exactly what the SDK does when frames go unanswered. Like the
 * real one over its bucket (src/session/session.ts, `onFrame`/`charge`), it answers frame
 * number `limitAt` `rate_limited` and then drops, unanswered, every frame that arrives within
 * the next second; `silently` drops chosen frames without any answer at all.
 */
class ScriptedGateway {
  readonly received: Frame[] = [];
  readonly dropped: Frame[] = [];
  /** Ciphertexts of the edits applied, in order; and how many edits were read. */
  readonly editsApplied: string[] = [];
  editsRead = 0;
  pongsSent = 0;
  private readonly saved = new Set<string>();
  private readonly seqs = new Map<string, number>();

  private constructor(
    private readonly server: WebSocketServer,
    private readonly script: Script,
  ) {
    server.on('connection', (ws) => {
      let n = 0;
      let pausedUntil = 0;
      let limited = false;
      let heldRefusal: string | null = null;
      let chain = Promise.resolve();
      const handle = (f: Frame) => {
        const chat = f.chat_id as number;
        const id = (f.data as { id?: string } | undefined)?.id;
        if (n === this.script.limitAt || (!limited && this.script.limitWhen?.(f))) {
          limited = true;
          pausedUntil = Date.now() + 1000;
          const refusal = JSON.stringify({ type: 'error', code: 'rate_limited', message: 'too many requests; slow down', op: f.type, ...(id ? { id } : {}), chat_id: chat, retryable: true, retry_after_ms: 1000 });
          if (this.script.limitAnswerOn === undefined) return ws.send(refusal);
          return void (heldRefusal = refusal);
        }
        if (f.type === 'edit_message' && this.script.edits) {
          const { delayMs, refuse } = this.script.edits;
          const nth = ++this.editsRead;
          chain = chain.then(async () => {
            await new Promise((r) => setTimeout(r, delayMs));
            if (refuse?.nth === nth) return ws.send(JSON.stringify({ type: 'error', code: refuse.code, message: 'refused', op: 'edit_message', id, chat_id: chat, retryable: false }));
            this.editsApplied.push((f.data as { ciphertext: string }).ciphertext);
            const seq = (this.seqs.get(String(chat)) ?? 0) + 1;
            this.seqs.set(String(chat), seq);
            ws.send(JSON.stringify({ type: 'ack', op: 'edit_message', id, chat_id: chat, duplicate: false, seq, epoch: 'e1' }));
          });
          return;
        }
        if (f.type === 'register') return ws.send(JSON.stringify({ type: 'registered', chat_id: chat, user_id: 1, online: [1], seq: this.seqs.get(String(chat)) ?? 0, epoch: 'e1' }));
        if (f.type === 'message') {
          const duplicate = this.saved.has(id!);
          this.saved.add(id!);
          const seq = (this.seqs.get(String(chat)) ?? 0) + (duplicate ? 0 : 1);
          this.seqs.set(String(chat), seq);
          return ws.send(JSON.stringify({ type: 'ack', op: 'message', id, chat_id: chat, duplicate, ...(duplicate ? {} : { seq, epoch: 'e1' }) }));
        }
        if (f.type === 'ping') {
          for (let i = 0; i < (this.script.pongsPerPing ?? 1); i++, this.pongsSent++) ws.send('{"type":"pong"}');
          return;
        }
      };
      ws.on('message', (data) => {
        const f = JSON.parse(data.toString()) as Frame;
        this.received.push(f);
        n++;
        if (heldRefusal !== null && this.script.limitAnswerOn?.(f)) {
          ws.send(heldRefusal);
          heldRefusal = null;
        }
        if (this.script.silently?.(f)) return void this.dropped.push(f);
        const paused = pausedUntil - Date.now();
        if (paused > 0 && !this.script.readAfterPause) return void this.dropped.push(f);
        if (paused > 0) return void setTimeout(() => handle(f), paused);
        handle(f);
      });
    });
  }

  static async start(script: Script): Promise<ScriptedGateway> {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((resolve) => server.once('listening', () => resolve()));
    const g = new ScriptedGateway(server, script);
    after(() => {
      for (const ws of server.clients) ws.terminate();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    return g;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/ws`;
  }

  sent(type: string, id?: string): Frame[] {
    return this.received.filter((f) => f.type === type && (id === undefined || (f.data as { id?: string } | undefined)?.id === id));
  }
}

const clients: Client[] = [];
after(() => clients.forEach((c) => c.close()));

describe('SDK: requests the gateway never answers', () => {
  it('after rate_limited, what was sent after the refused frame and dropped unread is resent with the same ids once the gateway reads again', async () => {
    // Frame 2 (the second register) is refused; the third register and the first write, sent
    // before the refusal arrives, are dropped unanswered.
    const g = await ScriptedGateway.start({ limitAt: 2 });
    const unhandled: unknown[] = [];
    const client = createClient({ url: g.url, token: 't', WebSocket, reconnect: { minDelayMs: 50, maxDelayMs: 200 } });
    clients.push(client);
    client.on('unhandled', (f) => unhandled.push(f));
    const chats = [1, 2, 3].map((id) => client.chat(id));
    const ids = ['a1', 'b1', 'c1', 'a2', 'b2', 'c2'];
    const acks = await Promise.all(ids.map((id, i) => chats[i % 3]!.send({ ciphertext: 'eA' }, { id })));
    assert.deepEqual(acks.map((a) => a.id), ids, 'every write acked');
    assert.ok(g.dropped.length >= 1, 'the scripted gateway dropped frames unread');
    for (const f of g.dropped) {
      const id = (f.data as { id?: string } | undefined)?.id;
      const again = f.type === 'register' ? g.sent('register').filter((r) => r.chat_id === f.chat_id) : g.sent(f.type, id);
      assert.ok(again.length >= 2, `${f.type} ${id ?? String(f.chat_id)} was sent again`);
    }
    const messages = g.sent('message');
    assert.deepEqual([...new Set(messages.map((f) => (f.data as { id: string }).id))].sort(), [...ids].sort(), 'resends use the same ids');
    assert.deepEqual(unhandled, [], 'no answer left unmatched');
    assert.equal(client.state, 'connected');
  });

  it('a request left unanswered without any refusal is resent after requestTimeoutMs', async () => {
    const g: ScriptedGateway = await ScriptedGateway.start({ silently: (f) => f.type === 'message' && g.sent('message').length === 1 });
    const client = createClient({ url: g.url, token: 't', WebSocket, requestTimeoutMs: 400 });
    clients.push(client);
    const chat = client.chat(1);
    const ack = await chat.send({ ciphertext: 'eA' }, { id: 'lost-once' });
    assert.equal(ack.duplicate, false);
    assert.equal(g.sent('message', 'lost-once').length, 2, 'sent twice: the first went unanswered');
    await waitFor(() => client.state === 'connected');
  });

  it('a register left unanswered is resent after requestTimeoutMs', async () => {
    const g: ScriptedGateway = await ScriptedGateway.start({ silently: (f) => f.type === 'register' && g.sent('register').length <= 2 });
    const client = createClient({ url: g.url, token: 't', WebSocket, requestTimeoutMs: 300 });
    clients.push(client);
    await client.chat(1).ready();
    assert.equal(g.sent('register').length, 3, 'two went unanswered, the third was answered');
  });

  it('a ping refused by the bucket, or dropped unread, is resent after the pause: ping() still resolves', async () => {
    const g = await ScriptedGateway.start({ limitAt: 2 });
    const client = createClient({ url: g.url, token: 't', WebSocket });
    clients.push(client);
    await client.chat(1).ready();
    const states: string[] = [];
    client.on('state', ({ state }) => states.push(state));
    // Frame 2 is refused: the first ping; the second is sent before that answer and dropped.
    const first = client.ping();
    const second = client.ping();
    // The connection stayed up: a refused ping is no sign of a drop (it rejected `disconnected`).
    assert.equal(typeof (await first), 'number', 'the refused one was resent and answered');
    assert.ok((await first) >= 900, 'after the gateway\'s one-second pause');
    assert.equal(typeof (await second), 'number', 'the dropped one was resent and answered');
    assert.equal(g.sent('ping').length, 4);
    assert.equal(client.state, 'connected');
    assert.deepEqual(states, [], 'no state change');
  });

  it("a write resent after a pause that the gateway had read after all is answered twice; the second answer never settles the next edit of the same message", async () => {
    // The refusal of the ping comes after edit A was sent (it waits for A to arrive): the SDK
    // resends it after the pause, but the gateway read it after its pause too (it was waiting in
    // the socket, not dropped) and answers both sends. Edit B is refused 403: it must reject.
    const g = await ScriptedGateway.start({ limitWhen: (f) => f.type === 'ping', limitAnswerOn: (f) => f.type === 'edit_message', readAfterPause: true, edits: { delayMs: 200, refuse: { nth: 3, code: 'forbidden' } } });
    const unhandled: unknown[] = [];
    const client = createClient({ url: g.url, token: 't', WebSocket });
    clients.push(client);
    client.on('unhandled', (f) => unhandled.push(f));
    const chat = client.chat(1);
    await chat.send({ ciphertext: 'djA' }, { id: 'm' });
    void client.ping().catch(() => undefined);
    const a = chat.edit('m', { ciphertext: 'QQ' });
    const b = chat.edit('m', { ciphertext: 'Qg' });
    assert.equal((await a).duplicate, false);
    await assert.rejects(b, { code: 'forbidden' }, "B is the third edit the gateway read: its refusal is B's answer");
    assert.deepEqual(g.editsApplied, ['QQ', 'QQ'], 'A was read twice (the send after the refused frame and its resend), B refused');
    assert.deepEqual(unhandled, []);
  });

  it('a pong that finds no ping waiting (a ping resent after a pause and read twice) is no news to the app', async () => {
    const g = await ScriptedGateway.start({ pongsPerPing: 2 });
    const unhandled: unknown[] = [];
    const client = createClient({ url: g.url, token: 't', WebSocket });
    clients.push(client);
    client.on('unhandled', (f) => unhandled.push(f));
    await client.chat(1).send({ ciphertext: 'djA' }, { id: 'm' });
    await client.ping();
    await client.ping();
    await client.chat(1).send({ ciphertext: 'djE' }, { id: 'n' });
    assert.equal(g.pongsSent, 4);
    assert.deepEqual(unhandled, []);
  });

  it('a write resent after a pause whose first send was dropped: the next edit of the same message still goes out (once the dropped send is overdue)', async () => {
    const g = await ScriptedGateway.start({ limitWhen: (f) => f.type === 'ping', limitAnswerOn: (f) => f.type === 'edit_message', edits: { delayMs: 50 } });
    const client = createClient({ url: g.url, token: 't', WebSocket, requestTimeoutMs: 1500 });
    clients.push(client);
    const chat = client.chat(1);
    await chat.send({ ciphertext: 'djA' }, { id: 'm' });
    void client.ping().catch(() => undefined);
    const a = chat.edit('m', { ciphertext: 'QQ' });
    const b = chat.edit('m', { ciphertext: 'Qg' });
    const acks = await Promise.all([a, b]);
    assert.deepEqual(acks.map((x) => x.seq), [2, 3]);
    assert.deepEqual(g.editsApplied, ['QQ', 'Qg']);
    assert.equal(g.dropped.filter((f) => f.type === 'edit_message').length, 1, "A's first send was dropped unread");
  });
});
