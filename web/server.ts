/**
 * The chat page's server (started by `npm run demo` and by tests/browser): bundles web/app.ts
 * with esbuild into memory at start, serves it with index.html and style.css, tells the page
 * where the gateway is (/config.json), and forwards the few main-API routes the page uses
 * (/api/…) to the development main API, so the page is same-origin with its API and the dev API
 * needs no CORS. The WebSocket goes straight from the browser to the gateway.
 */
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { MISDIRECTED, isLoopbackAddress, isLoopbackHostHeader } from '../dev-api/loopback.js';

const WEB_DIR = fileURLToPath(new URL('.', import.meta.url));
const BODY_LIMIT = 64 * 1024;
/** A main-API answer is passed on only up to this size (a chat's history page is far smaller). */
const DEFAULT_ANSWER_LIMIT = 16 * 1024 * 1024;
const API_TIMEOUT_MS = 5000;

/**
 * The main-API routes the page may reach through /api (method, path pattern), matched against
 * the path as it will be requested — after URL normalization (`..`, `\`, `#`, and `%2e` as a dot)
 * — with ids of plain characters only, so no spelling of a path reaches another route. A chat id
 * is any the gateway accepts (`[A-Za-z0-9_.:-]`, 1–64, not only dots), percent-encoded by the
 * page (`:` as `%3A`): checked once decoded, so `%2F` and the like never pass.
 */
const API_ROUTES: ReadonlyArray<[string, RegExp, ((m: RegExpExecArray) => boolean)?]> = [
  ['POST', /^\/dev\/token$/],
  ['PUT', /^\/devices\/[A-Za-z0-9_-]+\/key$/],
  ['GET', /^\/chats\/([A-Za-z0-9_.%-]+)\/(?:devices|messages)$/, (m) => isChatId(m[1]!)],
];

function isChatId(segment: string): boolean {
  let id: string;
  try {
    id = decodeURIComponent(segment);
  } catch {
    return false;
  }
  return /^[A-Za-z0-9_.:-]{1,64}$/.test(id) && !/^\.+$/.test(id);
}

function routeAllowed(method: string, route: string): boolean {
  return API_ROUTES.some(([m, pattern, check]) => {
    if (m !== method) return false;
    const match = pattern.exec(route);
    return match !== null && (check === undefined || check(match));
  });
}

export interface ChatPageOptions {
  /** The gateway's WebSocket URL as the browser reaches it, e.g. ws://localhost:3000/ws. */
  gatewayUrl: string;
  /** The development main API's base URL (server side). */
  apiUrl: string;
  port?: number;
  /**
   * Bind address (default 127.0.0.1: /api mints tokens for anyone). Bound to a loopback address,
   * the server answers 421 unless `Host` is localhost, 127.0.0.1 or [::1] (DNS rebinding).
   */
  host?: string;
  /** The largest main-API answer passed on, in bytes (default 16 MiB); a larger one is 502. */
  answerLimit?: number;
}

/** A response's body as text, or null past `limit` bytes (read no further: memory stays bounded). */
async function readCapped(response: Response, limit: number): Promise<string | null> {
  if (response.body === null) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return null;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface ChatPage {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Bundles the page's TypeScript (and the client SDK's source) into one ES module, in memory. */
export async function bundleChatPage(): Promise<string> {
  const result = await build({
    entryPoints: [`${WEB_DIR}app.ts`],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    sourcemap: 'inline',
    legalComments: 'none',
    logLevel: 'silent',
  });
  const out = result.outputFiles[0];
  if (!out) throw new Error('esbuild produced no output');
  return out.text;
}

export async function startChatPage(opts: ChatPageOptions): Promise<ChatPage> {
  const [script, html, css] = await Promise.all([bundleChatPage(), readFile(`${WEB_DIR}index.html`, 'utf8'), readFile(`${WEB_DIR}style.css`, 'utf8')]);
  const gateway = new URL(opts.gatewayUrl);
  const apiUrl = opts.apiUrl.replace(/\/+$/, '');
  /** The dev API's origin and the path prefix it may sit under: forwarded paths must stay under it. */
  const apiBase = new URL(apiUrl);
  const prefix = apiBase.pathname.replace(/\/+$/, '');
  const csp = [
    "default-src 'self'",
    `connect-src 'self' ${gateway.protocol}//${gateway.host}`,
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  const config = JSON.stringify({ gatewayUrl: opts.gatewayUrl });

  const assets: Record<string, { type: string; body: string }> = {
    '/': { type: 'text/html; charset=utf-8', body: html },
    '/index.html': { type: 'text/html; charset=utf-8', body: html },
    '/app.js': { type: 'text/javascript; charset=utf-8', body: script },
    '/style.css': { type: 'text/css; charset=utf-8', body: css },
    '/config.json': { type: 'application/json; charset=utf-8', body: config },
  };

  function reply(res: ServerResponse, status: number, type: string, body: string): void {
    res.writeHead(status, {
      'content-type': type,
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'content-security-policy': csp,
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
    });
    res.end(body);
  }

  const json = (res: ServerResponse, status: number, body: unknown) => reply(res, status, 'application/json; charset=utf-8', JSON.stringify(body));

  async function readBody(req: IncomingMessage): Promise<string | null> {
    let size = 0;
    const chunks: Buffer[] = [];
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > BODY_LIMIT) return null;
      chunks.push(chunk);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  /** Forwards an allowed /api call to the dev API: method, path, query, JSON body and token. */
  async function forward(req: IncomingMessage, res: ServerResponse, method: string, path: string, query: string): Promise<void> {
    // Checked on what fetch will request, not on the raw path (fetch normalizes it).
    // The dev API may sit under a path prefix: the route is what follows it, and must stay under it.
    let target: URL;
    try {
      target = new URL(`${apiUrl}${path}${query}`);
    } catch {
      return json(res, 404, { error: `no route for ${method} /api${path}` });
    }
    const route = target.pathname.startsWith(`${prefix}/`) ? target.pathname.slice(prefix.length) : null;
    if (target.origin !== apiBase.origin || route === null || !routeAllowed(method, route)) {
      return json(res, 404, { error: `no route for ${method} /api${path}` });
    }
    const body = method === 'GET' ? '' : await readBody(req);
    if (body === null) return json(res, 413, { error: 'body too large' });
    const headers: Record<string, string> = {};
    if (req.headers.authorization) headers.authorization = req.headers.authorization;
    if (body !== '') headers['content-type'] = 'application/json';
    let upstream: Response;
    try {
      upstream = await fetch(`${target.origin}${target.pathname}${target.search}`, { method, headers, ...(body === '' ? {} : { body }), signal: AbortSignal.timeout(API_TIMEOUT_MS) });
    } catch {
      return json(res, 502, { error: 'the main API is unreachable' });
    }
    const answer = await readCapped(upstream, opts.answerLimit ?? DEFAULT_ANSWER_LIMIT).catch(() => null);
    if (answer === null) return json(res, 502, { error: 'the main API answered too much, or broke off' });
    reply(res, upstream.status, upstream.headers.get('content-type') ?? 'application/json; charset=utf-8', answer);
  }

  const host = opts.host ?? '127.0.0.1';
  /** DNS rebinding (dev-api/loopback.ts): a page under another name must not reach /api. */
  const loopbackOnly = isLoopbackAddress(host);

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (loopbackOnly && !isLoopbackHostHeader(req.headers.host)) return json(res, MISDIRECTED.status, { error: MISDIRECTED.error });
    const method = req.method ?? 'GET';
    const [path = '/', query = ''] = (req.url ?? '/').split(/(?=\?)/);
    if (path.startsWith('/api/')) return forward(req, res, method, path.slice('/api'.length), query);
    const asset = assets[path];
    if (!asset) return json(res, 404, { error: 'not found' });
    if (method !== 'GET' && method !== 'HEAD') return json(res, 405, { error: 'method not allowed' });
    reply(res, 200, asset.type, asset.body);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) json(res, 500, { error: 'internal error' });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shownHost = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${shownHost}:${port}/`,
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
