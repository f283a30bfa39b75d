import { WebSocket } from 'ws';
import { createClient } from '../../packages/client/src/index.js';
import { Harness } from '../support/harness.js';

const h = new Harness('memory', { RATE_LIMIT_BURST: '5' });
await h.start();
const g = await h.gateway();
const chats = Array.from({ length: 10 }, (_, i) => 5000 + i);
const a = createClient({ url: g.wsUrl, token: await h.token(1), WebSocket });
const b = createClient({ url: g.wsUrl, token: await h.token(2), WebSocket });
let got = 0;
b.on('message', () => got++);
a.on('state', (e) => console.log('a state', e));
b.on('state', (e) => console.log('b state', e));
a.on('unhandled', (e) => console.log('a unhandled', JSON.stringify(e)));

for (const c of chats) b.chat(c);
const ps = [];
for (let i = 0; i < 20; i++) ps.push(a.chat(chats[i % 10]!).send({ ciphertext: 'eA' }).then(() => 'ok', (e) => e.code));
const t = setTimeout(() => { console.log('TIMEOUT: settled', settled, 'got', got); process.exit(1); }, 20000);
let settled = 0;
ps.forEach((p) => p.then(() => settled++));
const r = await Promise.all(ps);
console.log(r, 'got', got);
clearTimeout(t);
a.close(); b.close(); await h.close();
