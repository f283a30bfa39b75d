/**
 * Peer 4 — the hand-written `ws` room server of peer 1, run as several instances joined by
 * Redis pub/sub (ioredis): an instance SUBSCRIBEs `room:<R>` when the room gets its first local
 * member (UNSUBSCRIBE when it loses its last), a message is PUBLISHed once as
 * `<instance>:<conn>\n<frame>`, and every instance sends the frame to its local members except
 * the sender. Same protocol as bench/peers/ws-room.ts. Env: REDIS_URL; MAIN_API_URL for the
 * `ws-redis-save` system (save, publish, ack: bench/peers/common.ts).
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { WebSocket } from 'ws';
import { roomServer } from './common.js';

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const pub = new Redis(url, { protocol: 2 });
const sub = new Redis(url, { protocol: 2 });
const instance = randomBytes(4).toString('hex');
const ids = new WeakMap<WebSocket, string>();
let seq = 0;

const rooms = roomServer({
  async join(room, first) {
    if (first) await sub.subscribe(`room:${room}`);
  },
  emptied(room) {
    void sub.unsubscribe(`room:${room}`);
  },
  broadcast(room, out, from) {
    return pub.publish(`room:${room}`, `${idOf(from)}\n${out}`);
  },
});

sub.on('message', (channel: string, message: string) => {
  const members = rooms.get(channel.slice(5));
  if (members === undefined) return;
  const nl = message.indexOf('\n');
  const sender = message.slice(0, nl);
  const frame = message.slice(nl + 1);
  for (const ws of members) if (idOf(ws) !== sender) ws.send(frame);
});

/** A connection's id across instances, given on first use. */
function idOf(ws: WebSocket): string {
  let id = ids.get(ws);
  if (id === undefined) ids.set(ws, (id = `${instance}:${(++seq).toString(36)}`));
  return id;
}
