/**
 * The smallest main API the gateway can run against, for benchmarks only: it accepts
 * everything at once. A token is a plain string `u<id>`; verify answers {"user_id": <id>} from
 * it (read from the Authorization header the gateway always sends), a save answers 201 {},
 * edit/delete 200 {}. No JWT, no storage, no membership: the gateway's own cost is what the
 * benchmark measures, not the dev API's (`dev-api/` signs and checks JWTs and stores messages).
 *
 * Prints {"msg":"listening","port":N} on stdout. Env: PORT (default 0 = any).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const OK_EMPTY = Buffer.from('{}');
const JSON_HEADERS = { 'content-type': 'application/json' };

const server = createServer((req, res) => {
  // The body must be consumed for the keep-alive socket to be reused; it is not needed.
  req.resume();
  req.once('end', () => {
    const url = req.url ?? '';
    if (req.method === 'POST' && url === '/auth/verify') {
      const m = /^Bearer u(\d+)$/.exec(req.headers.authorization ?? '');
      if (m === null) {
        res.writeHead(401, JSON_HEADERS).end('{"error":"token must be u<id>"}');
        return;
      }
      res.writeHead(200, JSON_HEADERS).end(`{"user_id":${m[1]}}`);
    } else if (req.method === 'POST') {
      res.writeHead(201, JSON_HEADERS).end(OK_EMPTY);
    } else {
      res.writeHead(200, JSON_HEADERS).end(OK_EMPTY);
    }
  });
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 121_000;
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ msg: 'listening', port: (server.address() as AddressInfo).port })}\n`);
});
