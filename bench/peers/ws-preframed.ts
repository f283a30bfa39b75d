/**
 * Peer 2 — peer 1 with each broadcast framed once: the JSON is encoded once, wrapped in a
 * WebSocket text frame once (`ws`'s `Sender.frame`), and the same bytes are written to every
 * member's socket (`ws._socket.write`), as Socket.IO's in-memory adapter does. Same protocol
 * as bench/peers/ws-room.ts.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { WebSocket } from 'ws';
import { roomServer } from './common.js';

/** `Sender` is part of ws's public API but missing from @types/ws. */
const { Sender } = createRequire(import.meta.url)('ws') as {
  Sender: { frame(data: Buffer, options: { fin: boolean; opcode: number; mask: boolean; readOnly: boolean; rsv1: boolean }): Buffer[] };
};
const TEXT = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false };

roomServer({
  broadcast(_room, out, from, members) {
    const frame = Buffer.concat(Sender.frame(Buffer.from(out), TEXT));
    for (const peer of members) {
      if (peer !== from && peer.readyState === WebSocket.OPEN) (peer as unknown as { _socket: Socket })._socket.write(frame);
    }
  },
});
