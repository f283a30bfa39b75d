/**
 * Peer 1 — the hand-written `ws` room server a team would write in an afternoon, and the floor
 * every other system is compared with. JSON over text frames:
 *   → {"type":"join","room":R,"user":U}        ← {"type":"joined","room":R}
 *   → {"type":"message","room":R,"data":{…}}   ← to every other member: {"type":"message","room":R,"from":U,"data":{…}}
 * The broadcast is JSON-encoded once and `ws.send(string)` is called for each member (ws
 * frames it and writes it per socket). No auth, persistence, presence, history or limits.
 * With MAIN_API_URL it is the `ws-save` system: the floor plus the one thing a messenger's gateway
 * cannot skip — each message saved through the main API before it is broadcast, and acked
 * (bench/peers/common.ts) — so that the gateway beside it shows what everything else costs.
 */
import { roomServer } from './common.js';

roomServer({
  broadcast(_room, out, from, members) {
    for (const peer of members) if (peer !== from) peer.send(out);
  },
});
