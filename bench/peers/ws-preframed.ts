/**
 * Peer 2 — peer 1 with each broadcast framed once: the JSON is encoded once, wrapped in a
 * WebSocket text frame once (`ws`'s `Sender.frame`), and the same bytes are written to every
 * member's socket (`ws._socket.write`), as Socket.IO's in-memory adapter does. Same protocol
 * as bench/peers/ws-room.ts.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { httpServer, listen, type RoomFrame } from './common.js';

/** `Sender` is part of ws's public API but missing from @types/ws. */
const { Sender } = createRequire(import.meta.url)('ws') as {
  Sender: { frame(data: Buffer, options: { fin: boolean; opcode: number; mask: boolean; readOnly: boolean; rsv1: boolean }): Buffer[] };
};
const TEXT = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false };

const server = httpServer();
const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false, maxPayload: 65536 });
const rooms = new Map<string, Set<WebSocket>>();

wss.on('connection', (ws) => {
  const joined = new Set<string>();
  const socket = (ws as unknown as { _socket: Socket })._socket;
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
      const frame = Buffer.concat(Sender.frame(Buffer.from(out), TEXT));
      for (const peer of rooms.get(room)!) {
        if (peer !== ws && peer.readyState === WebSocket.OPEN) (peer as unknown as { _socket: Socket })._socket.write(frame);
      }
    }
  });
  socket.on('error', () => undefined);
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
