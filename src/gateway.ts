import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { API_PREFIX, createServerApi } from './api/server-api.js';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { normalizeOrigin, type Config } from './config/index.js';
import { LogLimiter } from './util/log-limit.js';
import { createEngine, type Engine } from './engine/index.js';
import { createFeatureTable } from './features/index.js';
import { Hub } from './hub/hub.js';
import { createLogger, type Logger } from './log.js';
import { createMetrics, type Metrics } from './metrics/index.js';
import { CLOSE } from './protocol/errors.js';
import { createRequestHandler, refuseUpgrade, serveIgnoringUpgrade } from './server/http.js';
import type { GatewayContext } from './session/context.js';
import { Session } from './session/session.js';
import { createCommandHandler } from './session/commands.js';
import { Deadlines } from './session/deadlines.js';
import { RateLimit } from './session/rate-limit.js';
import type { Registration } from './session/registration.js';
import { SessionSocket } from './session/socket.js';
import { UserConnections } from './session/user-connections.js';
import { createMainApi } from './upstream/client.js';
import { FairScheduler } from './upstream/scheduler.js';

/**
 * The close code `ws` sends for each of its receiver errors (its own table); the rest of them
 * close 1002 (protocol error).
 */
const WS_ERROR_CLOSE: Readonly<Record<string, number>> = {
  WS_ERR_INVALID_UTF8: 1007,
  WS_ERR_TOO_MANY_BUFFERED_PARTS: 1008,
  WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH: 1009,
  WS_ERR_UNSUPPORTED_MESSAGE_LENGTH: 1009,
};

export interface Gateway {
  readonly port: number;
  readonly url: string;
  /** The server API's own listener (API_PORT), when it has one; else it is on `port` (or off). */
  readonly apiPort: number | null;
  readonly metrics: Metrics;
  readonly engine: Engine;
  /** The graceful drain (README: Operations); resolves when everything is closed. Idempotent. */
  shutdown(): Promise<void>;
}

export interface GatewayOptions {
  log?: Logger;
  engine?: Engine;
}

/** Composition root of one gateway instance: config → engine → hub → server. */
export async function startGateway(config: Config, options: GatewayOptions = {}): Promise<Gateway> {
  const log = options.log ?? createLogger(config.logLevel);
  const metrics = createMetrics();
  const engine = options.engine ?? (await createEngine(config, log));
  const hub = new Hub(engine, metrics, log, { publishRetryMs: config.publishRetryMs, lateMaxAgeMs: config.historyTtlMs, maxBufferedBytes: config.maxBufferedBytes, presenceBatchMs: config.presenceBatchMs });
  const api = createMainApi(config, log, metrics);
  const instanceId = randomBytes(6).toString('hex');
  const sessions = new Set<Session>();
  const upgradeLogLimit = new LogLimiter();
  let draining = false;
  /** The drain has reached the engine: its connections end on purpose from here on. */
  let closingEngine = false;
  let connSeq = 0;

  // In-flight work (requests, presence cleanup) that shutdown lets finish.
  let inflight = 0;
  let idleWaiters: Array<() => void> = [];
  const track = <T>(work: Promise<T>): Promise<T> => {
    inflight++;
    const done = () => {
      if (--inflight === 0) {
        const waiters = idleWaiters;
        idleWaiters = [];
        for (const w of waiters) w();
      }
    };
    work.then(done, done);
    return work;
  };
  const idle = () => (inflight === 0 ? Promise.resolve() : new Promise<void>((r) => idleWaiters.push(r)));

  const ctx: GatewayContext = {
    config,
    log,
    metrics,
    api,
    upstreamScheduler: new FairScheduler(config.upstreamConnections, config.upstreamTimeoutMs),
    engine,
    hub,
    features: createFeatureTable(),
    rateLimit: new RateLimit(config.rateLimitPerSec, config.rateLimitBurst),
    deadlines: new Deadlines<Registration>((reg) => reg.credentialsDue()),
    connectionLogLimit: new LogLimiter(),
    debug: log.isLevelEnabled('debug'),
    userConnections: new UserConnections(config.maxConnectionsPerUser),
    isDraining: () => draining,
    track,
  };

  await engine.start(
    hub.engineEvents(
      // At shutdown the engine is closed on purpose: "lost" there would page someone at every deploy.
      (connected) => log.info({ engine: engine.kind, connected }, connected ? 'engine connected' : closingEngine ? 'engine closed' : 'engine connection lost'),
      createCommandHandler({ registry: hub.registry, connections: () => sessions, api, log }),
    ),
  );

  metrics.reportEngineReady(() => engine.isReady());

  const wss = new WebSocketServer({
    WebSocket: SessionSocket,
    noServer: true,
    // The protocol has no subprotocol names: none offered is ever accepted (ws would accept the
    // first), so a later client asking for a version by subprotocol is not told this one speaks it.
    handleProtocols: () => false,
    maxPayload: config.maxMessageBytes,
    perMessageDeflate: false,
    clientTracking: false,
  });

  const isReady = () => !draining && engine.isReady();
  const plain = createRequestHandler({
    isReady,
    describe: () => ({ engine: engine.kind, engine_ready: engine.isReady(), draining }),
    metrics: metrics.registry,
  });
  // The server API (on when API_KEY is set) runs on Fastify: on its own listener with API_PORT,
  // else on this one, which hands it every request under /api/v1 and keeps the rest.
  let handleRequest = plain;
  let server: Server = createServer(plain);
  let serverApi: { app: FastifyInstance; server: Server | null } | null = null;
  if (config.apiKey !== null) {
    const options = { apiKey: config.apiKey, engine, metrics, log, bodyLimit: config.maxMessageBytes, isDraining: () => draining };
    if (config.apiPort === null) {
      const app = await createServerApi({
        ...options,
        serverFactory: (handler) => {
          handleRequest = (req: IncomingMessage, res: ServerResponse) => (isApiPath(req.url) ? handler(req, res) : plain(req, res));
          return (server = createServer(handleRequest));
        },
      });
      serverApi = { app, server: null };
    } else {
      const app = await createServerApi(options);
      serverApi = { app, server: app.server };
    }
  }
  server.keepAliveTimeout = 5_000;

  server.on('upgrade', (req, socket, head) => {
    socket.on('error', destroyOnError);
    if (req.headers.upgrade?.toLowerCase() !== 'websocket') return serveIgnoringUpgrade(req, socket, handleRequest);
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/ws') return refuseUpgrade(socket, 404, 'not_found', 'no such route: WebSocket connections go to /ws');
    // Not ready (draining, or Redis not serving): refused like /readyz says, so a load balancer
    // retries another instance (nginx: proxy_next_upstream http_503) rather than this one
    // answering every register `upstream_unavailable`.
    if (!isReady()) return refuseUpgrade(socket, 503, 'unavailable', 'not ready: draining, or the engine is not serving; connect again (another instance)');
    // Only browsers send Origin (and a non-browser could send any value), so the check guards
    // browsers against foreign pages; native apps and the CLI client send none and are let in.
    // Compared in the spelling ALLOWED_ORIGINS was normalised to; an unparsable Origin matches none.
    const origin = req.headers.origin;
    if (config.allowedOrigins !== null && origin !== undefined && !config.allowedOrigins.includes(normalizeOrigin(origin) ?? '')) {
      // Anyone can send these: one line per 10 s, with a bounded piece of what was sent.
      upgradeLogLimit.log(log, 'info', 'origin', { origin: origin.slice(0, 200) }, 'upgrade refused: origin not allowed');
      return refuseUpgrade(socket, 403, 'forbidden', 'origin not allowed');
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      // ws has its own error handler on the socket from here on.
      socket.off('error', destroyOnError);
      const session = accept(ws);
      // Only at debug: reading remoteAddress makes the socket keep its peer's address as an
      // object for the connection's life (measured: +0.11 KiB of heap per idle connection).
      if (ctx.debug) session.debug('connection opened', { ip: req.socket.remoteAddress, origin: req.headers.origin?.slice(0, 200) });
    });
  });

  function accept(ws: SessionSocket): Session {
    // Array.join makes the id one flat string; a `+` or template of 13+ characters would keep
    // it as a chain of 32-byte V8 rope nodes (ConsString) for the connection's whole life.
    const session = new Session([instanceId, (++connSeq).toString(36)].join('.'), ws, ctx);
    ws.session = session;
    sessions.add(session);
    metrics.connections.inc();
    ws.on('message', onMessage);
    ws.on('error', onError);
    ws.on('close', onClose);
    return session;
  }

  // The same three listeners for every connection (`this`: the socket, which carries its session).
  function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
    SessionSocket.sessionOf(this).onFrame(data as Buffer, isBinary);
  }
  function onError(this: WebSocket, err: Error & { code?: string }): void {
    // ws has already closed the socket with the code that goes with the error.
    if (err.code?.startsWith('WS_ERR_')) metrics.closes.inc({ code: String(WS_ERROR_CLOSE[err.code] ?? 1002) });
    log.debug({ conn: SessionSocket.sessionOf(this).id, code: err.code }, 'websocket error');
  }
  function onClose(this: WebSocket, code: number): void {
    const session = SessionSocket.sessionOf(this);
    session.debug('connection closed', { code });
    sessions.delete(session);
    metrics.connections.dec();
    session.onClosed();
  }

  const heartbeat = setInterval(() => {
    for (const s of sessions) s.heartbeat();
  }, config.pingIntervalMs);
  heartbeat.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.appPort, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  let apiPort: number | null = null;
  if (serverApi?.server) {
    const apiServer = serverApi.server;
    await new Promise<void>((resolve, reject) => {
      apiServer.once('error', reject);
      apiServer.listen(config.apiPort ?? 0, () => {
        apiServer.off('error', reject);
        resolve();
      });
    });
    apiPort = (apiServer.address() as AddressInfo).port;
  }
  log.info({ port, engine: engine.kind, instance: instanceId, server_api: serverApi === null ? 'off' : apiPort === null ? port : apiPort, origins: config.allowedOrigins ?? 'any' }, 'gateway listening');
  if (config.allowedOrigins === null) log.warn('ALLOWED_ORIGINS is unset or empty: a web page from any site may open connections here (with its visitors\' tokens, if it has them); list your app\'s origins');
  if (engine.kind === 'memory') {
    log.info('embedded in-memory engine: one instance only; set REDIS_HOST=redis://host:6379 to run several instances');
  }

  let shuttingDown: Promise<void> | null = null;
  /**
   * Graceful drain. Requests received before the signal get until SHUTDOWN_TIMEOUT_MS to finish with
   * their acks; then clients are closed 1001 and work still queued on them is dropped. A main-API
   * call still running at the deadline is given up to UPSTREAM_TIMEOUT_MS more (its own
   * timeout): if it saves, the message is broadcast (the engine closes last), just not acked.
   * Every step is bounded, so the drain takes at most `drainBoundMs` (SHUTDOWN_TIMEOUT_MS +
   * UPSTREAM_TIMEOUT_MS + 4.25 s).
   */
  async function drainAndClose(): Promise<void> {
    draining = true;
    // Unref'd: a bound that is no longer awaited must not keep the process alive.
    const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)).unref());
    const idleWithin = (ms: number) => Promise.race([idle(), sleep(ms)]);
    log.info({ connections: sessions.size, inflight }, 'draining');
    await idleWithin(config.shutdownTimeoutMs);
    for (const s of [...sessions]) s.close(CLOSE.goingAway, 'server shutting down');
    // Saves at the main API finish and publish; presence leaves run as tracked work too.
    await idleWithin(config.upstreamTimeoutMs + DRAIN.callsGraceMs);
    await sleep(sessions.size === 0 ? 0 : DRAIN.closeGraceMs);
    for (const s of [...sessions]) s.terminate();
    clearInterval(heartbeat);
    ctx.deadlines.close();
    await idleWithin(DRAIN.lastWorkMs);
    // The last steps talk to Redis and the main API, each of which may be stalled (a Redis
    // command waits up to 2 s): bounded together, so the drain's total stays what the docs say.
    // Presence gets most of the budget; the flush that follows it needs a moment too.
    const settleBy = Date.now() + DRAIN.finalStepsMs - 500;
    const finished = await Promise.race([
      (async () => {
        await hub.flushPresence();
        // Leaves that failed in a Redis stall or outage: run again if Redis serves in time.
        if (engine.settlePresence !== undefined) {
          await engine.settlePresence(settleBy);
          await hub.flushPresence();
        }
        await hub.abandonLate();
        await api.close().catch(() => undefined);
        // Last: everything above may still publish or leave presence through it.
        closingEngine = true;
        await engine.close().catch((err: Error) => log.warn({ err: err.message }, 'engine close failed'));
        return true;
      })(),
      sleep(DRAIN.finalStepsMs).then(() => false),
    ]);
    if (!finished) {
      log.warn({ ms: DRAIN.finalStepsMs }, 'shutdown: Redis or the main API did not answer in time; closing anyway');
      hub.abandonLateNow();
    }
    wss.close();
    for (const s of [server, serverApi?.server ?? null]) {
      if (s === null) continue;
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
    await serverApi?.app.close().catch(() => undefined);
    log.info('shutdown complete');
  }

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    apiPort,
    metrics,
    engine,
    shutdown() {
      shuttingDown ??= drainAndClose();
      return shuttingDown;
    },
  };
}

/** The bounded steps of `drainAndClose` after its two configured ones, in order. */
const DRAIN = {
  /** Beyond UPSTREAM_TIMEOUT_MS, for calls that just finished to publish and ack. */
  callsGraceMs: 1000,
  /** Between closing clients 1001 and terminating those still open. */
  closeGraceMs: 250,
  /** For work of terminated connections to settle. */
  lastWorkMs: 500,
  /** The last steps (presence flush, late broadcasts, closing the pool and the engine), together. */
  finalStepsMs: 2500,
} as const;

/**
 * The longest a drain takes: the steps of `drainAndClose`, each bounded. `run.ts` exits the
 * process at this bound (plus a margin) whatever is still running; docs: README "Operations".
 */
export function drainBoundMs(config: Pick<Config, 'shutdownTimeoutMs' | 'upstreamTimeoutMs'>): number {
  return config.shutdownTimeoutMs + config.upstreamTimeoutMs + DRAIN.callsGraceMs + DRAIN.closeGraceMs + DRAIN.lastWorkMs + DRAIN.finalStepsMs;
}

function destroyOnError(this: import('node:stream').Duplex): void {
  this.destroy();
}

const isApiPath = (url: string | undefined) => url !== undefined && (url === API_PREFIX || url.startsWith(`${API_PREFIX}/`) || url.startsWith(`${API_PREFIX}?`));
