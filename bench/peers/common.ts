/** Shared by the comparison peers: an HTTP server on 127.0.0.1 that prints its port once listening. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

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
