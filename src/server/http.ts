import { STATUS_CODES, ServerResponse, type IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
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

/**
 * Refuses an upgrade with an HTTP answer in the endpoints' error shape (`{"error", "message"}`)
 * and drops the socket.
 */
export function refuseUpgrade(socket: Duplex, status: number, error: string, message: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const text = JSON.stringify({ error, message });
  socket.once('finish', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`);
}

/**
 * Serves a request that asked to upgrade to something other than WebSocket (`Upgrade: h2c` from
 * `curl --http2`, some probes and proxies) as the plain request it also is: a server may ignore
 * an Upgrade header (RFC 9110, 7.8). Node hands every such request to the upgrade handler, with
 * its parser gone, so only a request without a body can be answered this way; one with a body
 * is refused 400.
 */
export function serveIgnoringUpgrade(req: IncomingMessage, socket: Duplex, handle: (req: IncomingMessage, res: ServerResponse) => void): void {
  const bodiless = (req.method === 'GET' || req.method === 'HEAD') && req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined;
  if (!bodiless || !(socket instanceof Socket)) {
    return refuseUpgrade(socket, 400, 'bad_request', `Upgrade: ${String(req.headers.upgrade).slice(0, 40)} is not supported here; send the request without it`);
  }
  const res = new ServerResponse(req);
  res.shouldKeepAlive = false;
  res.assignSocket(socket);
  res.once('finish', () => {
    res.detachSocket(socket);
    socket.end();
  });
  handle(req, res);
}
