/**
 * `npm run demo`: the development main API, one gateway and the chat page (web/) in this
 * process, plus a short guide.
 *
 *   DEV_API_PORT    dev API port                  (default 8000)
 *   APP_PORT        gateway port                  (default 3000)
 *   CHAT_PAGE_PORT  chat page port                (default 8080; if taken, the demo runs without the page)
 *   DEV_API_SECRET  the dev tokens' HS256 secret  (default: a random one for this run)
 *   ALLOWED_ORIGINS the gateway's browser origins (default: the chat page's, http://localhost:<port>
 *                   and http://127.0.0.1:<port>; set it empty to allow any)
 *   LOG_LEVEL     gateway log level               (default warn here, so the guide stays readable)
 *   any other gateway variable is honoured, except AUTH_HOST, which points at the dev API.
 *
 * The gateway listens on every interface, so the demo does not use the dev API's published
 * default secret (anyone could sign tokens with it, from the network or from a web page's script)
 * and lets browsers in from the chat page only. The CLI client mints its tokens through the dev
 * API (POST /dev/token on loopback) and sends no Origin, so it needs neither.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { startDevApi, type DevApi } from '../dev-api/app.js';
import { ConfigError, loadConfig, readEnv, type Config } from '../src/config/index.js';
import { startGateway, type Gateway } from '../src/gateway.js';
import { createLogger } from '../src/log.js';
import { startChatPage, type ChatPage } from '../web/server.js';

function fail(message: string, code = 1): never {
  process.stderr.write(`demo: ${message}\n`);
  process.exit(code);
}

function portTaken(err: unknown): boolean {
  return (err as { code?: string }).code === 'EADDRINUSE';
}

const env = readEnv();

const rawApiPort = env.DEV_API_PORT ?? '8000';
const apiPort = Number(rawApiPort);
if (!/^[0-9]+$/.test(rawApiPort) || apiPort > 65535) fail(`DEV_API_PORT must be an integer 0-65535, got "${rawApiPort}"`, 2);
const rawPagePort = env.CHAT_PAGE_PORT ?? '8080';
if (!/^[0-9]+$/.test(rawPagePort) || Number(rawPagePort) > 65535) fail(`CHAT_PAGE_PORT must be an integer 0-65535, got "${rawPagePort}"`, 2);
// The gateway's ALLOWED_ORIGINS name the page's port, so it is known before the gateway starts:
// CHAT_PAGE_PORT=0 takes a free port now.
const pagePort = Number(rawPagePort) === 0 ? await freePort() : Number(rawPagePort);
const pageOrigins = `http://localhost:${pagePort},http://127.0.0.1:${pagePort}`;

/** A port free on 127.0.0.1 right now (the OS picks it). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

let config: Config;
try {
  // Validate before starting anything; AUTH_HOST is fixed below once the dev API's port is known.
  // The server API is on in the demo, with a fresh random key printed below (set API_KEY to
  // choose it): the gateway listens on every interface, so a fixed key would open it to anyone.
  // Browsers only from the chat page (a missing Origin, as from the CLI client, stays allowed).
  config = loadConfig({ LOG_LEVEL: 'warn', API_KEY: `demo-${randomBytes(18).toString('base64url')}`, ALLOWED_ORIGINS: pageOrigins, ...env, AUTH_HOST: `http://127.0.0.1:${apiPort}` });
} catch (err) {
  if (err instanceof ConfigError) fail(`invalid configuration: ${err.message}`, 2);
  throw err;
}
if (env.AUTH_HOST) process.stderr.write(`demo: ignoring AUTH_HOST=${env.AUTH_HOST}; the demo gateway uses its own dev API\n`);

const log = createLogger(config.logLevel);
const verbose = ['info', 'debug', 'trace'].includes(config.logLevel);

let api: DevApi;
try {
  api = await startDevApi({
    port: apiPort,
    // Not the published default: with it, anyone could sign tokens the gateway accepts.
    secret: env.DEV_API_SECRET || randomBytes(32).toString('base64url'),
    ...(verbose ? { log: (line: object) => log.info({ dev_api: line }, 'dev-api request') } : {}),
  });
} catch (err) {
  if (portTaken(err)) fail(`port ${apiPort} (dev API) is taken — is another demo or dev-api running? Try DEV_API_PORT=${apiPort + 1} npm run demo`);
  fail(`cannot start the dev API: ${String(err)}`);
}

// The gateway's port is fixed before the page starts, which names it (APP_PORT=0: a free port now).
const appPort = config.appPort === 0 ? await freePort() : config.appPort;
const ws = `ws://localhost:${appPort}/ws`;

// The chat page is an extra: if it cannot start (its port is taken), the demo runs without it.
let page: ChatPage | null = null;
let pageGuide: string;
try {
  page = await startChatPage({ gatewayUrl: ws, apiUrl: api.url, port: pagePort });
  const pageUrl = `http://localhost:${page.port}/`;
  pageGuide = `Chat in the browser (end-to-end encrypted with WebCrypto; docs/chat-page.md):
  open ${pageUrl}?user=1 and, in another window, ${pageUrl}?user=2
  (or ${pageUrl} and pick a demo user: Alice 1, Bob 2, Carol 3, Dave 4).`;
} catch (err) {
  const why = portTaken(err) ? `port ${pagePort} is taken (try CHAT_PAGE_PORT=${pagePort + 1} npm run demo)` : (err as Error).message;
  pageGuide = `The chat page did not start: ${why}.`;
}
// Without the page, its port's origin is whatever else holds that port: not let in. The list then
// names only the gateway's own origin, which serves no page: no browser connects.
const noBrowser = page === null && env.ALLOWED_ORIGINS === undefined;
if (noBrowser) config = { ...config, allowedOrigins: [`http://localhost:${appPort}`] };

let gateway: Gateway;
try {
  gateway = await startGateway({ ...config, appPort, authHost: api.url }, { log });
} catch (err) {
  await page?.close();
  await api.close();
  if (portTaken(err)) fail(`port ${appPort} (gateway) is taken — is another gateway or demo running? Try APP_PORT=${appPort + 1} npm run demo`);
  fail(`cannot start the gateway: ${(err as Error).message}`);
}

const http = `http://localhost:${gateway.port}`;
const apiUrl = `http://localhost:${api.port}`;
const flags = [gateway.port === 3000 ? '' : ` --url ${ws}`, api.port === 8000 ? '' : ` --api ${apiUrl}`].join('');

process.stdout.write(`
message-service demo is running (engine: ${gateway.engine.kind})

  gateway   ${ws}
  dev API   ${apiUrl}   (stands in for the main API: tokens, saved messages, in memory)
  health    ${http}/healthz
  ready     ${http}/readyz
  metrics   ${http}/metrics
  chat page ${page ? `http://localhost:${page.port}/` : '(not running)'}

${pageGuide}

Or chat as two users: open two more terminals in this directory and run
  npm run client -- --user 1 --chat 1${flags}
  npm run client -- --user 2 --chat 1${flags}
Type a line and press Enter to send it; /help lists the commands (/edit, /delete, /typing, /join, /quit ...).

Mint a token yourself (user 1, one hour) for your own client:
  curl -s -X POST ${apiUrl}/dev/token -H 'content-type: application/json' -d '{"user_id":1}'
then send {"type":"register","token":"<token>","chat_id":1} over ${ws}.
Tokens are signed with ${env.DEV_API_SECRET ? 'your DEV_API_SECRET' : 'a secret made for this run (DEV_API_SECRET chooses one)'}, and ${
  noBrowser
    ? 'no browser may connect\nto the gateway (the chat page is not running; ALLOWED_ORIGINS chooses origins)'
    : config.allowedOrigins === null
      ? 'browsers from any origin\nmay connect to the gateway (ALLOWED_ORIGINS is empty)'
      : `browsers may connect\nto the gateway from ${config.allowedOrigins.join(' and ')} only (ALLOWED_ORIGINS)`
}.

The backend's server API (docs/server-api.md) is on. Its key, for the README's examples:
  export API_KEY=${config.apiKey}
  curl -s -H 'Authorization: Bearer ${config.apiKey}' ${config.apiPort === null ? http : `http://localhost:${gateway.apiPort}`}/api/v1/chats/1/presence
  curl -s -H 'Authorization: Bearer ${config.apiKey}' -H 'content-type: application/json' \\
    -d '{"event":{"kind":"renamed","title":"General"}}' ${config.apiPort === null ? http : `http://localhost:${gateway.apiPort}`}/api/v1/chats/1/publish

Gateway logs follow at LOG_LEVEL=${config.logLevel}${verbose ? '' : ' (LOG_LEVEL=info npm run demo for more)'}. Ctrl-C stops.

`);

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) process.exit(1); // a second signal: out now
    stopping = true;
    process.stderr.write(`demo: ${signal}, shutting down\n`);
    // The gateway first: its in-flight requests still need the dev API.
    Promise.resolve(page?.close())
      .then(() => gateway.shutdown())
      .then(() => api.close())
      .then(
        () => process.exit(0),
        (err: Error) => fail(`shutdown failed: ${err.message}`),
      );
  });
}
