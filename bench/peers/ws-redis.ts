/**
 * Peer 4 — the hand-written `ws` room server of peer 1, run as several instances joined by
 * Redis pub/sub (ioredis): an instance SUBSCRIBEs `room:<R>` when the room gets its first local
 * member (UNSUBSCRIBE when it loses its last), a message is PUBLISHed once as
 * `<instance>:<conn>\n<frame>`, and every instance sends the frame to its local members except
 * the sender. Same protocol as bench/peers/ws-room.ts. Env: REDIS_URL.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { WebSocketServer, type WebSocket } from 'ws';
import { httpServer, listen, type RoomFrame } from './common.js';

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const pub = new Redis(url);
const sub = new Redis(url);
const instance = randomBytes(4).toString('hex');
const rooms = new Map<string, Set<WebSocket>>();
const ids = new WeakMap<WebSocket, string>();
let seq = 0;

sub.on('message', (channel: string, message: string) => {
  const members = rooms.get(channel.slice(5));
  if (members === undefined) return;
  const nl = message.indexOf('\n');
  const sender = message.slice(0, nl);
  const frame = message.slice(nl + 1);
  for (const ws of members) if (ids.get(ws) !== sender) ws.send(frame);
});

const server = httpServer();
const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false, maxPayload: 65536 });

wss.on('connection', (ws) => {
  const id = `${instance}:${(++seq).toString(36)}`;
  ids.set(ws, id);
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
      const first = members === undefined;
      if (members === undefined) rooms.set(room, (members = new Set()));
      members.add(ws);
      joined.add(room);
      const answer = JSON.stringify({ type: 'joined', room: msg.room });
      if (first) void sub.subscribe(`room:${room}`).then(() => ws.send(answer));
      else ws.send(answer);
    } else if (msg.type === 'message' && joined.has(room)) {
      const out = JSON.stringify({ type: 'message', room: msg.room, from: user, data: msg.data });
      void pub.publish(`room:${room}`, `${id}\n${out}`);
    }
  });
  ws.on('error', () => undefined);
  ws.on('close', () => {
    for (const room of joined) {
      const members = rooms.get(room);
      members?.delete(ws);
      if (members?.size === 0) {
        rooms.delete(room);
        void sub.unsubscribe(`room:${room}`);
      }
    }
  });
});

listen(server);
