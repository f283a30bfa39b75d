/**
 * Peer — the floor (bench/peers/ws-room.ts) plus the one thing a messenger's gateway cannot
 * skip: each message is saved through the main API before it is broadcast (an HTTP POST over
 * undici's keep-alive pool to the same minimal main API the gateway uses), and the sender gets
 * an ack once it is. Nothing else: no auth, validation, ordering, history, presence or limits.
 * The gateway beside it shows what everything else costs; the floor beside it, what the save costs.
 * Same room protocol; the ack (`{"type":"ack","id":…}`) carries no `sent_at`, so the generator
 * does not count it as a delivery. Env: MAIN_API_URL.
 */
import { Pool } from 'undici';
import { roomServer } from './common.js';

const api = new Pool(process.env.MAIN_API_URL!, { connections: 256 });
const HEADERS = { 'content-type': 'application/json', authorization: 'Bearer u0' };

roomServer({
  broadcast(room, out, from, members) {
    api
      .request({ method: 'POST', path: `/chat/${encodeURIComponent(room)}/messages`, headers: HEADERS, body: out })
      .then(async ({ statusCode, body }) => {
        await body.dump();
        if (statusCode >= 300) return;
        for (const peer of members) if (peer !== from) peer.send(out);
        from.send('{"type":"ack"}');
      })
      .catch(() => undefined);
  },
});
