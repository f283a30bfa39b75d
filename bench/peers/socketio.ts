/**
 * Peer 3 (and 5 with REDIS_URL set) — Socket.IO 4, websocket transport only, default settings
 * otherwise. In-memory adapter; with REDIS_URL, `@socket.io/redis-adapter` (ioredis pub and sub
 * clients) so several instances share rooms.
 *   emit('join', room, user, ack)  → socket.join(room), ack()
 *   emit('message', {room, data})  → socket.to(room).emit('message', {room, from, data})
 * Socket.IO encodes a room broadcast once and, on the websocket transport, frames it once too
 * (`wsPreEncodedFrame`).
 */
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import { Server } from 'socket.io';
import { httpServer, listen } from './common.js';

const server = httpServer();
const io = new Server(server, { transports: ['websocket'], serveClient: false, perMessageDeflate: false, maxHttpBufferSize: 65536 });

const redisUrl = process.env.REDIS_URL;
if (redisUrl !== undefined && redisUrl !== '') {
  io.adapter(createAdapter(new Redis(redisUrl, { protocol: 2 }), new Redis(redisUrl, { protocol: 2 })));
}

io.on('connection', (socket) => {
  socket.on('join', (room: string, user: string | number, ack?: () => void) => {
    void Promise.resolve(socket.join(String(room))).then(() => {
      socket.data.user = user;
      ack?.();
    });
  });
  socket.on('message', (msg: { room: string; data: unknown }) => {
    const room = String(msg.room);
    if (!socket.rooms.has(room)) return;
    socket.to(room).emit('message', { room: msg.room, from: socket.data.user as unknown, data: msg.data });
  });
});

listen(server);
