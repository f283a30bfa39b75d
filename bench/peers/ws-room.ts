/**
 * Peer 1 — the hand-written `ws` room server a team would write in an afternoon, and the floor
 * every other system is compared with. JSON over text frames:
 *   → {"type":"join","room":R,"user":U}        ← {"type":"joined","room":R}
 *   → {"type":"message","room":R,"data":{…}}   ← to every other member: {"type":"message","room":R,"from":U,"data":{…}}
 * The broadcast is JSON-encoded once and `ws.send(string)` is called for each member (ws
 * frames it and writes it per socket). No auth, persistence, presence, history or limits.
 */
import { WebSocketServer, type WebSocket } from 'ws';
import { httpServer, listen, type RoomFrame } from './common.js';

const server = httpServer();
const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false, maxPayload: 65536 });
const rooms = new Map<string, Set<WebSocket>>();

wss.on('connection', (ws) => {
  const joined = new Set<string>();
  let user: string | number = 0;
  ws.on('message', (data: Buffer) => {
    let msg: RoomFrame;
    try {
      msg = JSON.parse(data.toString()) as RoomFrame;
    } catch {
      return;
    }
    const room = String(msg.room);
    if (msg.type === 'join') {
      user = msg.user;
      let members = rooms.get(room);
      if (members === undefined) rooms.set(room, (members = new Set()));
      members.add(ws);
      joined.add(room);
      ws.send(JSON.stringify({ type: 'joined', room: msg.room }));
    } else if (msg.type === 'message' && joined.has(room)) {
      const out = JSON.stringify({ type: 'message', room: msg.room, from: user, data: msg.data });
      for (const peer of rooms.get(room)!) if (peer !== ws) peer.send(out);
    }
  });
  ws.on('error', () => undefined);
  ws.on('close', () => {
    for (const room of joined) {
      const members = rooms.get(room);
      members?.delete(ws);
      if (members?.size === 0) rooms.delete(room);
    }
  });
});

listen(server);
