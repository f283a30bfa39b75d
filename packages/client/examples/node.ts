/**
 * Node 20: pass `ws`'s WebSocket in (Node ≥ 22 has a global one). Run against `npm run demo`:
 *   npm run build:client && npx tsx packages/client/examples/node.ts
 * (a demo on other ports: GATEWAY_URL=ws://localhost:<APP_PORT>/ws DEV_API_URL=http://localhost:<DEV_API_PORT>)
 */
import { WebSocket } from 'ws';
import { ClientError, createClient, type Position } from '@message-service/client';

const API = process.env.DEV_API_URL ?? 'http://localhost:8000';
const GATEWAY = process.env.GATEWAY_URL ?? 'ws://localhost:3000/ws';

/** The dev API mints tokens; a real app gets them from its login. Called again after `unauthorized`. */
async function token(): Promise<string> {
  const res = await fetch(`${API}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user_id":1}' });
  return ((await res.json()) as { token: string }).token;
}

/** Where the app resumes from after a restart; a real app keeps it next to its message store. */
let saved: Position | undefined;

const client = createClient({ url: GATEWAY, token, WebSocket });
client.on('state', (e) => console.log('connection:', e.state, e.reason ?? '', e.retryInMs != null ? `(retry in ${e.retryInMs} ms)` : ''));

const chat = client.chat(1, saved ? { since: saved } : {});
chat.on('message', ({ message, seq }) => console.log(`#${seq ?? '-'} ${message.sender_id}: ${message.ciphertext}`));
chat.on('edit', ({ edit }) => console.log(`edited ${edit.id}`));
chat.on('delete', ({ id }) => console.log(`deleted ${id}`));
chat.on('gap', ({ from, reason }) => console.log(`missed what came after #${from.seq} (${reason}): fetch it from the main API`));
chat.on('event', ({ data, seq }) => console.log(`#${seq ?? '-'} system event: ${JSON.stringify(data)}`));
chat.on('unregistered', ({ error, reason }) => console.log(`left chat 1 (${reason ?? error.code}): ${error.message}`));

const { online } = await chat.ready();
console.log('online:', online);

try {
  // The SDK does not encrypt: ciphertext, nonce and envelopes come from the app's crypto.
  const ack = await chat.send({ ciphertext: 'aGVsbG8=', nonce: 'bm9uY2U=', envelopes: {} });
  console.log('saved', ack.id, ack.duplicate ? '(duplicate)' : '');
  await chat.edit(ack.id, { ciphertext: 'aGVsbG8gYWdhaW4=' });
} catch (err) {
  if (err instanceof ClientError) console.error('refused:', err.code, err.message);
  else throw err;
}

saved = chat.position ?? undefined;
client.close();
