import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Registry } from 'prom-client';

/** Plain HTTP endpoints. Errors are `{"error": <code>, "message"}`, the server API's shape. */
export function createRequestHandler(opts: { isReady: () => boolean; describe: () => object; metrics: Registry }) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 404, NOT_FOUND);
    switch (path) {
      case '/healthz':
        return reply(res, 200, { status: 'ok' });
      case '/readyz': {
        const ready = opts.isReady();
        return reply(res, ready ? 200 : 503, { status: ready ? 'ready' : 'unavailable', ...opts.describe() });
      }
      case '/metrics':
        opts.metrics.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': opts.metrics.contentType });
            res.end(text);
          },
          () => reply(res, 500, { error: 'internal', message: 'metrics unavailable' }),
        );
        return;
      case '/ws':
        return reply(res, 426, { error: 'upgrade_required', message: 'WebSocket upgrade required' });
      default:
        return reply(res, 404, NOT_FOUND);
    }
  };
}

const NOT_FOUND = { error: 'not_found', message: 'no such route' };

function reply(res: ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Refuses an upgrade with a plain HTTP answer and drops the socket. */
export function refuseUpgrade(socket: Duplex, status: number, reason: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.once('finish', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(reason)}\r\n\r\n${reason}`);
}
