// A Node app using the SDK, for lifecycle.test.ts: it does one thing that ends the client (or its
// last chat) and must then exit on its own — no timer of the SDK may keep the process alive.
// Usage: node --import tsx tests/sdk/exit-fixture.ts <case> <ws url> <token>
import { WebSocket, WebSocketServer } from 'ws';
import { createClient } from '../../packages/client/src/index.js';

const [what, gatewayUrl, token] = process.argv.slice(2) as [string, string, string];
let url = gatewayUrl;
let server: WebSocketServer | null = null;
if (what === 'leave-with-held-edit') {
  // A stand-in gateway that sends an edit of a message this client never saw: the SDK holds it.
  server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => server!.once('listening', r));
  server.on('connection', (ws) =>
    ws.on('message', () => {
      ws.send(JSON.stringify({ type: 'registered', chat_id: 777001, user_id: 1, online: [1], seq: 0, epoch: 'e' }));
      ws.send(JSON.stringify({ type: 'edit_message', chat_id: 777001, seq: 1, epoch: 'e', data: { id: 'unseen', ciphertext: 'eA', sender_id: 2 } }));
    }),
  );
  url = `ws://127.0.0.1:${(server.address() as { port: number }).port}/ws`;
}
// Long timers everywhere: if any of them is left armed, the process outlives the test's bound.
const hangingProvider = () => new Promise<string>(() => undefined);
const client = createClient({
  url,
  token: what === 'leave-while-the-token-provider-hangs' ? hangingProvider : token,
  WebSocket,
  connectTimeoutMs: 60_000,
  pingIdleMs: 60_000,
  tokenTimeoutMs: 60_000,
  hold: { ms: 60_000 },
});
const chat = client.chat(777001);
switch (what) {
  case 'close-while-connecting':
    client.close();
    break;
  case 'leave-while-connecting':
    chat.leave();
    break;
  case 'close-in-connected-listener':
    client.on('state', (e) => {
      if (e.state === 'connected') client.close();
    });
    break;
  case 'leave-with-held-edit':
    // The edit is held (hold.ms 60 s); then the last chat is left and the stand-in closed.
    await chat.ready();
    await new Promise((r) => setTimeout(r, 100));
    chat.leave();
    server!.close();
    break;
  case 'leave-while-the-token-provider-hangs':
    // Connected, the register waits for a token that never comes (tokenTimeoutMs 60 s); then the chat is left.
    await new Promise<void>((resolve) => client.on('state', (e) => e.state === 'connected' && resolve()));
    await new Promise((r) => setTimeout(r, 100));
    chat.leave();
    break;
  default:
    throw new Error(`unknown case ${what}`);
}
process.stdout.write(`${what}: done\n`);
