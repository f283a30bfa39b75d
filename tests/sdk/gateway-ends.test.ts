import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import { WebSocket, WebSocketServer, type WebSocket as ServerSocket } from 'ws';
import { createClient } from '../../packages/client/src/index.js';

/**
 * What the SDK does when the gateway itself ends a registration, told apart from the answers to
 * its own requests, against scripted gateways that make the rare interleavings happen every time.
 */

type Frame = Record<string, unknown> & { type: string };
/** Called for each connection, with its number and a way to set what handles its frames. */
type OnConnection = (ws: ServerSocket, connection: number, onFrame: (handler: (frame: Frame) => void) => void) => void;

/** A WebSocket server that hands each connection, with the frames it receives, to `onConnection`. */
class ScriptedGateway {
  readonly received: Array<Frame & { at: number; connection: number }> = [];
  private connections = 0;

  private constructor(private readonly server: WebSocketServer, onConnection: OnConnection) {
    server.on('connection', (ws) => {
      const connection = this.connections++;
      let handler: (frame: Frame) => void = () => {};
      ws.on('message', (data) => {
        const frame = JSON.parse(String(data)) as Frame;
        this.received.push({ ...frame, at: Date.now(), connection });
        if (frame.type === 'ping') return ws.send(JSON.stringify({ type: 'pong' }));
        handler(frame);
      });
      onConnection(ws, connection, (f) => (handler = f));
    });
  }

  static async start(onConnection: OnConnection): Promise<ScriptedGateway> {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((resolve) => server.once('listening', () => resolve()));
    after(() => {
      for (const ws of server.clients) ws.terminate();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    return new ScriptedGateway(server, onConnection);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/ws`;
  }

  registers(chat: number): Array<Frame & { at: number; connection: number }> {
    return this.received.filter((f) => f.type === 'register' && f.chat_id === chat);
  }
}

const send = (ws: ServerSocket, frame: Frame) => ws.send(JSON.stringify(frame));
const registered = (chat: unknown) => ({ type: 'registered', chat_id: chat, user_id: 1, online: [1], seq: 0, epoch: 'e1' });

describe('SDK: a registration the gateway ends for good frees its place', () => {
  it('a chat waiting for a place (refused past MAX_CHATS_PER_CONNECTION while a leave is under way) registers as soon as the gateway revokes the chat being left, not after its backoff', { timeout: 20_000 }, async () => {
    let revokedAt = 0;
    // At most two chats per connection; the `unregister` of the chat being left is never
    // answered: the gateway revokes that chat instead, 200 ms after refusing the third.
    const g = await ScriptedGateway.start((ws, _connection, onFrame) => {
      const chats = new Set<unknown>();
      onFrame((f) => {
        if (f.type !== 'register') return;
        if (!chats.has(f.chat_id) && chats.size >= 2) {
          send(ws, { type: 'error', code: 'bad_request', message: 'a connection may register to at most 2 chats', op: 'register', chat_id: f.chat_id, retryable: false });
          if (revokedAt === 0) {
            setTimeout(() => {
              revokedAt = Date.now();
              chats.delete(1);
              send(ws, { type: 'unregistered', chat_id: 1, reason: 'revoked' });
            }, 200);
          }
          return;
        }
        chats.add(f.chat_id);
        send(ws, registered(f.chat_id));
      });
    });
    // Backoff of up to 10 s: a register retried by its backoff is unlikely to come within 300 ms of the revoke.
    const client = createClient({ url: g.url, token: 't', WebSocket, reconnect: { minDelayMs: 10_000, maxDelayMs: 10_000 } });
    after(() => client.close());
    const [c1, c2] = [client.chat(1), client.chat(2)];
    await Promise.all([c1.ready(), c2.ready()]);
    c1.leave();
    const c3 = client.chat(3);
    await c3.ready();
    const registers = g.registers(3);
    assert.ok(registers.length >= 2, 'the third chat was refused past the limit first');
    assert.ok(revokedAt > 0, 'the gateway revoked the chat being left');
    const last = registers.at(-1)!;
    assert.ok(last.at >= revokedAt && last.at - revokedAt < 300, `registered again right after the revoke (${last.at - revokedAt} ms after it)`);
  });
});

describe('SDK: a token expiry while a register is out, then a new connection', () => {
  it('a refusal on the next connection is a refusal (the provider is asked for a new token), not taken for the expiry\'s echo', { timeout: 20_000 }, async () => {
    const tokens: string[] = [];
    const g = await ScriptedGateway.start((ws, connection, onFrame) => {
      let refused = false;
      onFrame((f) => {
        if (f.type !== 'register') return;
        if (connection === 0) {
          // The register is left unanswered: the registration it renews expires meanwhile
          // (the SDK registers again); then the connection is lost before any answer.
          send(ws, { type: 'unregistered', chat_id: f.chat_id, reason: 'token_expired' });
          setTimeout(() => ws.terminate(), 300);
          return;
        }
        if (!refused) {
          refused = true;
          return send(ws, { type: 'error', code: 'unauthorized', message: 'token refused', op: 'register', chat_id: f.chat_id, retryable: false });
        }
        send(ws, registered(f.chat_id));
      });
    });
    const client = createClient({
      url: g.url,
      token: () => {
        tokens.push(`t${tokens.length + 1}`);
        return tokens.at(-1)!;
      },
      WebSocket,
      reconnect: { minDelayMs: 20, maxDelayMs: 50 },
    });
    after(() => client.close());
    await client.chat(1).ready();
    const later = g.registers(1).filter((f) => f.connection > 0);
    assert.ok(later.length >= 2, 'refused, then registered');
    assert.deepEqual(later.map((f) => f.token), [later[0]!.token, tokens.at(-1)], 'the register after the refusal carries a token the provider gave after it');
    assert.notEqual(later[1]!.token, later[0]!.token, 'not the refused token sent again');
  });
});
