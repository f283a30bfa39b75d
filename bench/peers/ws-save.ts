/**
 * Peer — the floor (bench/peers/ws-room.ts) plus the one thing a messenger's gateway cannot
 * skip: each message is saved through the main API before it is broadcast (an HTTP POST over
 * undici's keep-alive pool to the same minimal main API the gateway uses), and the sender gets
 * an ack once it is. Nothing else: no auth, validation, ordering, history, presence or limits.
 * The gateway beside it shows what everything else costs; the floor beside it, what the save costs.
 * Same room protocol; the ack carries no `sent_at`, so the generator does not count it as a
 * delivery. Env: MAIN_API_URL.
 */
import { ACK, roomServer, saveMessage } from './common.js';

roomServer({
  broadcast(room, out, from, members) {
    saveMessage(room, out)
      .then((saved) => {
        if (!saved) return;
        for (const peer of members) if (peer !== from) peer.send(out);
        from.send(ACK);
      })
      .catch(() => undefined);
  },
});
