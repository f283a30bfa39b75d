/**
 * Peer 1 — the hand-written `ws` room server a team would write in an afternoon, and the floor
 * every other system is compared with. JSON over text frames:
 *   → {"type":"join","room":R,"user":U}        ← {"type":"joined","room":R}
 *   → {"type":"message","room":R,"data":{…}}   ← to every other member: {"type":"message","room":R,"from":U,"data":{…}}
 * The broadcast is JSON-encoded once and `ws.send(string)` is called for each member (ws
 * frames it and writes it per socket). No auth, persistence, presence, history or limits.
 */
import { roomServer } from './common.js';

roomServer({
  broadcast(_room, out, from, members) {
    for (const peer of members) if (peer !== from) peer.send(out);
  },
});
