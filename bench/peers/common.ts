/** Shared by the comparison peers: an HTTP server on 127.0.0.1 that prints its port once listening. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { WebSocketServer, type WebSocket } from 'ws';

/**
 * Set for the `-save` systems (`ws-save`, `ws-redis-save`): every message is first saved through
 * this main API (a keep-alive pool, as the gateway's), then broadcast, then the sender is acked
 * with a frame that has no `sent_at` (so the generator does not count it as a delivery).
 */
const MAIN_API_URL = process.env.MAIN_API_URL;
const mainApi = MAIN_API_URL === undefined ? null : new Pool(MAIN_API_URL, { connections: 256 });
const SAVE_HEADERS = { 'content-type': 'application/json', authorization: 'Bearer u0' };
const ACK = '{"type":"ack"}';

/** POSTs the message to the main API; resolves whether it was saved (2xx). */
async function saveMessage(api: Pool, room: string, body: string): Promise<boolean> {
  const { statusCode, body: answer } = await api.request({ method: 'POST', path: `/chat/${encodeURIComponent(room)}/messages`, headers: SAVE_HEADERS, body });
  await answer.dump();
  return statusCode < 300;
}

export function httpServer(): Server {
  return createServer((_req, res) => res.writeHead(404).end());
}

export function listen(server: Server): void {
  server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', 2048, () => {
    process.stdout.write(`${JSON.stringify({ msg: 'listening', port: (server.address() as AddressInfo).port })}\n`);
  });
}

/** The client → server frames of the hand-written room protocol. */
export type RoomFrame = { type: 'join'; room: string | number; user: string | number } | { type: 'message'; room: string | number; data: unknown };

/** How a room server variant joins a room and fans a message out; the rest is shared. */
export interface RoomStrategy {
  /** `first`: the room's first local member. Resolves when `joined` may be answered. */
  join?(room: string, first: boolean): Promise<void> | void;
  /** The last local member left. */
  emptied?(room: string): void;
  /** Fans the encoded broadcast out to the room (every member but `from`); a saving peer acks once it settles. */
  broadcast(room: string, out: string, from: WebSocket, members: ReadonlySet<WebSocket>): Promise<unknown> | void;
}

/**
 * The hand-written room server: JSON over text frames, rooms of local sockets, no auth,
 * persistence, presence, history or limits. Variants differ only in their RoomStrategy; with
 * MAIN_API_URL, each also saves every message before broadcasting it and acks it after.
 */
export function roomServer(strategy: RoomStrategy): ReadonlyMap<string, ReadonlySet<WebSocket>> {
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
        const first = members === undefined;
        if (members === undefined) rooms.set(room, (members = new Set()));
        members.add(ws);
        joined.add(room);
        const answer = JSON.stringify({ type: 'joined', room: msg.room });
        void Promise.resolve(strategy.join?.(room, first)).then(() => ws.send(answer));
      } else if (msg.type === 'message' && joined.has(room)) {
        const out = JSON.stringify({ type: 'message', room: msg.room, from: user, data: msg.data });
        const members = rooms.get(room)!;
        if (mainApi === null) {
          void strategy.broadcast(room, out, ws, members);
          return;
        }
        saveMessage(mainApi, room, out)
          .then(async (saved) => {
            if (!saved) return;
            await strategy.broadcast(room, out, ws, members);
            ws.send(ACK);
          })
          .catch(() => undefined);
      }
    });
    ws.on('error', () => undefined);
    ws.on('close', () => {
      for (const room of joined) {
        const members = rooms.get(room);
        members?.delete(ws);
        if (members?.size === 0) {
          rooms.delete(room);
          strategy.emptied?.(room);
        }
      }
    });
  });
  listen(server);
  return rooms;
}
