import { existsSync, readFileSync } from 'node:fs';
import { parseEnv } from 'node:util';

/** Every knob of the gateway, validated once at start-up. */
export interface Config {
  appPort: number;
  authHost: string;
  /** null: the embedded in-memory engine (one instance). */
  redis: RedisConfig | null;
  authVerifyPath: string;
  messageSavePath: string;
  messagePath: string;
  upstreamTimeoutMs: number;
  upstreamConnections: number;
  authCacheTtlMs: number;
  maxMessageBytes: number;
  rateLimitPerSec: number;
  rateLimitBurst: number;
  registerTimeoutMs: number;
  maxChatsPerConnection: number;
  /** Connections bound to one user on this instance; 0: no limit. */
  maxConnectionsPerUser: number;
  /** Writes (message, edit, delete) queued or in flight per connection; more get `rate_limited`. */
  maxPendingWrites: number;
  /** Main-API calls in flight per connection; the rest wait their turn in the connection's queue. */
  maxUpstreamPerConnection: number;
  pingIntervalMs: number;
  maxBufferedBytes: number;
  /** As `normalizeOrigin` spells them (what browsers send); null: any origin. */
  allowedOrigins: string[] | null;
  shutdownTimeoutMs: number;
  presenceTtlMs: number;
  /** Presence changes of a chat within this long after an announcement go out together; 0: each at once. */
  presenceBatchMs: number;
  /** Broadcasts kept per chat for recovery (`register` with `since`); 0: no history. */
  historySize: number;
  /** Older history entries are not replayed. */
  historyTtlMs: number;
  /** How long the broadcast of a saved operation is retried while the engine fails. */
  publishRetryMs: number;
  logLevel: string;
  /** The server API's bearer key; null: the server API is off (its routes answer 404). */
  apiKey: string | null;
  /** A separate listener for the server API; null: served on APP_PORT. */
  apiPort: number | null;
}

export interface RedisConfig {
  /** One URL, or the seed nodes of a Cluster. */
  urls: string[];
  cluster: boolean;
}

/** A bad value: the process prints `message` on one line and exits 2. */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    problem: string,
  ) {
    super(`${variable}: ${problem}`);
    this.name = 'ConfigError';
  }
}

export type Env = Record<string, string | undefined>;

/** RFC 3986: "/" then path characters, an optional "?" query; no fragment. */
const URL_PATH = /^\/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*(?:\?(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?$/;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Real environment variables win over the optional `.env` file. */
export function readEnv(env: Env = process.env, dotenvPath = '.env'): Env {
  if (!existsSync(dotenvPath)) return env;
  let text: string;
  let fromFile: Env;
  try {
    text = readFileSync(dotenvPath, 'utf8');
    fromFile = parseEnv(text);
  } catch (err) {
    throw new ConfigError('.env', `cannot be read: ${(err as Error).message}`);
  }
  // parseEnv never refuses anything, and Node versions differ in what they make of a malformed
  // line: Node 20 swallows the lines after an unterminated quote into one odd name, Node 24 skips
  // a line without `=` (an `API_KEY secret` would leave the server API off without a word) and
  // takes an unterminated quote into the value. So every line is checked first, the same on both
  // (a name that is no variable name, `MY-VAR=1`, included). Named by its line number only: the
  // line may hold a password or key.
  const malformed = malformedLine(text);
  if (malformed > 0) throw new ConfigError('.env', `line ${malformed} cannot be parsed: write NAME=value, one per line (quote a value that spans lines)`);
  return { ...fromFile, ...env };
}

/**
 * The number of the first line of a `.env` text that is neither blank, a comment, nor
 * `[export] NAME = value` — a quoted value may span lines, up to the line that closes its quote
 * (nothing but a comment after it) — or a quoted value never closed: one whose next quote is in
 * another assignment (`NOTE='notes` then `REDIS_HOST='redis://…'`) is not closed by it, and
 * would swallow that line; 0 when every line is well formed.
 */
function malformedLine(text: string): number {
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const value = /^(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=\s*(.*)$/.exec(line)?.[1];
    if (value === undefined) return i + 1;
    const quote = value[0];
    if ((quote !== '"' && quote !== "'" && quote !== '`') || value.includes(quote, 1)) continue;
    const closing = lines.findIndex((l, j) => j > i && l.includes(quote));
    const after = closing === -1 ? '' : lines[closing]!.slice(lines[closing]!.indexOf(quote) + 1).trim();
    if (closing === -1 || (after !== '' && !after.startsWith('#'))) return i + 1;
    i = closing;
  }
  return 0;
}

/** The Redis variables the gateway reads; another `REDIS_*` is most likely a misspelt one. */
const REDIS_VARIABLES = ['REDIS_HOST', 'REDIS_CLUSTER'];

/**
 * Set `REDIS_*` variables the gateway does not read (`REDIS_URL`, `REDIS_PORT`, …): worth a
 * warning, since without REDIS_HOST each instance runs alone on the memory engine, ready and
 * healthy, and delivers nothing across instances.
 */
export function unreadRedisVariables(env: Env): string[] {
  return Object.keys(env)
    .filter((name) => /^REDIS_/.test(name) && !REDIS_VARIABLES.includes(name) && (env[name] ?? '').trim() !== '' && !fromKubernetes(name, env[name]!))
    .sort();
}

/**
 * What Kubernetes sets in every pod for a Service named `redis` (REDIS_SERVICE_HOST,
 * REDIS_SERVICE_PORT, REDIS_PORT=tcp://…, REDIS_PORT_6379_TCP…): not the operator's doing.
 */
function fromKubernetes(name: string, value: string): boolean {
  return /^REDIS_SERVICE_/.test(name) || (/^REDIS_PORT/.test(name) && /^(tcp|udp|sctp):\/\//.test(value.trim())) || /^REDIS_PORT_\d+_(TCP|UDP|SCTP)/.test(name);
}

export function loadConfig(env: Env = readEnv()): Config {
  const get = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  const int = (name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = get(name);
    if (raw === undefined) return def;
    const range = max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `between ${min} and ${max}`;
    if (!/^[0-9]+$/.test(raw)) throw new ConfigError(name, `must be an integer ${range}, got "${raw}"`);
    const n = Number(raw);
    // Echoed as written (a huge one would print rounded), with the bound it broke.
    if (n < min) throw new ConfigError(name, `must be ${range}, got ${raw}`);
    if (n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${raw}`);
    return n;
  };
  /** A main-API path: absolute, URL characters only (an optional query), no dot segments. `slots`: its placeholders, each exactly once. */
  const path = (name: string, def: string, slots: readonly string[] = []): string => {
    const v = get(name) ?? def;
    if (!v.startsWith('/')) throw new ConfigError(name, `must start with "/", got "${v}"`);
    let bare = v;
    for (const slot of slots) {
      if (v.split(slot).length !== 2) throw new ConfigError(name, `must contain ${slot} exactly once, got "${v}"`);
      bare = bare.replace(slot, 'x');
    }
    // A space or a brace would be sent as it is (or refused by the HTTP client) on every call: refused here, once.
    if (!URL_PATH.test(bare)) throw new ConfigError(name, `must be a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %XX; an optional ?query; no #), got "${v}"`);
    // A proxy that normalises "/./" or "/../" would call another route than the one configured.
    if (/(^|\/)\.\.?(\/|\?|$)/.test(bare.split('?')[0]!.replace(/%2e/gi, '.'))) throw new ConfigError(name, `must not contain "." or ".." segments, got "${v}"`);
    return v;
  };
  const bool = (name: string, def: boolean): boolean => {
    const raw = get(name);
    if (raw === undefined) return def;
    if (/^(true|1|yes)$/i.test(raw)) return true;
    if (/^(false|0|no)$/i.test(raw)) return false;
    throw new ConfigError(name, `must be true or false, got "${raw}"`);
  };

  const authHost = get('AUTH_HOST') ?? 'http://localhost:8000';
  let authUrl: URL;
  try {
    authUrl = new URL(authHost);
  } catch {
    throw new ConfigError('AUTH_HOST', `must be an http(s) URL, got ${JSON.stringify(redactUrl(authHost))}`);
  }
  if (authUrl.protocol !== 'http:' && authUrl.protocol !== 'https:') {
    throw new ConfigError('AUTH_HOST', `must be an http(s) URL, got ${JSON.stringify(redactUrl(authHost))}`);
  }
  // The gateway calls the main API with each client's token, and `origin` below drops the
  // userinfo: credentials here would be silently ignored, so they are refused (never echoed).
  if (authUrl.username !== '' || authUrl.password !== '') {
    throw new ConfigError('AUTH_HOST', 'must not contain credentials (user:password@); the main API is called with each client\'s token');
  }
  if (authUrl.pathname !== '/' || authUrl.search || authUrl.hash) {
    throw new ConfigError('AUTH_HOST', 'must be a base URL without path, query or fragment (paths are set by *_PATH)');
  }

  const messagePath = path('MESSAGE_PATH', '/chat/{chat_id}/messages/{message_id}', ['{chat_id}', '{message_id}']);

  const logLevel = get('LOG_LEVEL') ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError('LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  }

  const origins = get('ALLOWED_ORIGINS');
  const allowedOrigins = origins === undefined ? null : parseOrigins(origins);

  const cluster = bool('REDIS_CLUSTER', false);
  const redisHost = get('REDIS_HOST');
  const redis = redisHost === undefined ? null : { urls: parseRedisUrls(redisHost, cluster), cluster };
  if (redis === null && cluster) throw new ConfigError('REDIS_CLUSTER', 'is true but REDIS_HOST is unset');

  const apiKey = get('API_KEY') ?? null;
  if (apiKey !== null && !/^[\x21-\x7E]{16,512}$/.test(apiKey)) {
    throw new ConfigError('API_KEY', 'must be 16–512 printable ASCII characters without spaces');
  }
  const apiPortRaw = get('API_PORT');
  if (apiPortRaw !== undefined && apiKey === null) throw new ConfigError('API_PORT', 'is set but API_KEY is unset (the server API is off)');

  const appPort = int('APP_PORT', 3000, 0, 65535);
  const apiPort = apiPortRaw === undefined ? null : int('API_PORT', 0, 0, 65535);
  if (apiPort !== null && apiPort !== 0 && apiPort === appPort) throw new ConfigError('API_PORT', 'must differ from APP_PORT (leave it unset to serve the API on APP_PORT)');

  const maxMessageBytes = int('MAX_MESSAGE_BYTES', 65536, 256, 64 * 1024 * 1024);
  const maxBufferedBytes = int('MAX_BUFFERED_BYTES', 4194304, 1024);
  const minBuffered = minBufferedBytes(maxMessageBytes);
  if (maxBufferedBytes < minBuffered) {
    throw new ConfigError(
      'MAX_BUFFERED_BYTES',
      `must be at least ${BROADCAST_GROWTH} × MAX_MESSAGE_BYTES + ${BROADCAST_OVERHEAD} = ${minBuffered} (the broadcast of one maximal message must fit, and can be ~3.4 times its frame), got ${maxBufferedBytes}`,
    );
  }

  const ms = (name: string, def: number, min = 1) => int(name, def, min, 24 * 3600 * 1000);
  return {
    appPort,
    authHost: authUrl.origin,
    redis,
    authVerifyPath: path('AUTH_VERIFY_PATH', '/auth/verify'),
    messageSavePath: path('MESSAGE_SAVE_PATH', '/chat/massage'),
    messagePath,
    upstreamTimeoutMs: ms('UPSTREAM_TIMEOUT_MS', 5000),
    upstreamConnections: int('UPSTREAM_CONNECTIONS', 64, 1, 10_000),
    authCacheTtlMs: ms('AUTH_CACHE_TTL_MS', 30000, 0),
    maxMessageBytes,
    rateLimitPerSec: int('RATE_LIMIT_PER_SEC', 20, 1, 1_000_000),
    rateLimitBurst: int('RATE_LIMIT_BURST', 50, 1, 1_000_000),
    registerTimeoutMs: ms('REGISTER_TIMEOUT_MS', 10000),
    maxChatsPerConnection: int('MAX_CHATS_PER_CONNECTION', 100, 1, 100_000),
    maxConnectionsPerUser: int('MAX_CONNECTIONS_PER_USER', 100, 0, 1_000_000),
    maxPendingWrites: int('MAX_PENDING_WRITES', 16, 1, 10_000),
    maxUpstreamPerConnection: int('MAX_UPSTREAM_PER_CONNECTION', 4, 1, 1000),
    pingIntervalMs: ms('PING_INTERVAL_MS', 25000, 10),
    maxBufferedBytes,
    allowedOrigins,
    shutdownTimeoutMs: ms('SHUTDOWN_TIMEOUT_MS', 10000, 0),
    presenceTtlMs: ms('PRESENCE_TTL_MS', 60000, 300),
    presenceBatchMs: int('PRESENCE_BATCH_MS', 200, 0, 10_000),
    historySize: int('HISTORY_SIZE', 100, 0, 10_000),
    historyTtlMs: ms('HISTORY_TTL_MS', 300000, 1000),
    publishRetryMs: ms('PUBLISH_RETRY_MS', 10000, 0),
    logLevel,
    apiKey,
    apiPort,
  };
}

function parseRedisUrls(value: string, cluster: boolean): string[] {
  const parts = value.split(',').map((p) => p.trim()).filter(Boolean);
  if (parts.length === 0) throw new ConfigError('REDIS_HOST', 'is empty');
  if (parts.length > 1 && !cluster) {
    throw new ConfigError('REDIS_HOST', 'lists several hosts; set REDIS_CLUSTER=true for a Cluster');
  }
  return parts.map((part) => {
    const withScheme = /^[a-z]+:\/\//i.test(part) ? part : `redis://${part}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw new ConfigError('REDIS_HOST', `${JSON.stringify(redactUrl(part))} is not a Redis URL or host:port`);
    }
    if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
      throw new ConfigError('REDIS_HOST', `scheme must be redis:// or rediss://, got "${url.protocol}"`);
    }
    if (!url.hostname) throw new ConfigError('REDIS_HOST', 'has no host');
    // Keys would be split by a database number (`/1`, `?db=2`) but pub/sub channels are global
    // to the server: deployments "separated" that way see each other's broadcasts and server-API
    // commands. So nothing after host:port is accepted; each deployment needs its own Redis.
    if ((url.pathname !== '' && url.pathname !== '/') || /[?#]/.test(url.href)) {
      throw new ConfigError(
        'REDIS_HOST',
        `${JSON.stringify(redactUrl(part))} has a database number, path, query or fragment; give redis[s]://[user:password@]host:port only (pub/sub ignores database numbers: a deployment needs a Redis of its own, not a database of a shared one)`,
      );
    }
    return url.toString();
  });
}

/**
 * A URL safe to log: everything between `://` (or the start, without a scheme) and the last `@`
 * — user and password, whatever they contain — is replaced by `***`. The last `@`, because a
 * password may hold `@` (a URL parser takes the last one as the end of the credentials); one in
 * a path or query hides the host too, which errs on the safe side.
 */
export function redactUrl(url: string): string {
  const at = url.lastIndexOf('@');
  if (at === -1) return url;
  const scheme = url.indexOf('://');
  const start = scheme !== -1 && scheme < at ? scheme + 3 : 0;
  return `${url.slice(0, start)}***${url.slice(at)}`;
}

/**
 * How much larger than the client's frame its broadcast can be, at worst: the gateway
 * re-serialises the message's JSON (a number such as `1e15`, 4 bytes, becomes its 16 digits, so
 * a `data` holding an array of them grows 3.4 times — 4.4 with `1e20` before whole numbers past
 * 2^53 − 1 were refused, and the margin stays; strings never grow) and adds fields
 * (`chat_id` twice, `sender_id`, defaults, `created_at`, `seq`, `epoch`, the frame header: under
 * 200 bytes with 64-character ids). Server-API events grow the same way from their body.
 */
const BROADCAST_GROWTH = 5;
const BROADCAST_OVERHEAD = 1024;

/**
 * The smallest MAX_BUFFERED_BYTES that holds the broadcast of one maximal message; with less,
 * that one message would close every receiver 1013 as a slow consumer.
 */
function minBufferedBytes(maxMessageBytes: number): number {
  return BROADCAST_GROWTH * maxMessageBytes + BROADCAST_OVERHEAD;
}

/**
 * `value` as an origin, serialised as browsers send it in `Origin` (lower-case scheme and host,
 * punycode, no default port): `https://Chat.Example.com:443` → `https://chat.example.com`.
 * null unless it is an http(s) origin and nothing more — not a path, query, fragment,
 * credentials, a `*` wildcard, `null` or anything unparsable; a trailing `/` is allowed. Used for
 * ALLOWED_ORIGINS and for the `Origin` header of each upgrade, so both are compared in one spelling.
 */
export function normalizeOrigin(value: string): string | null {
  if (!/^https?:\/\/[^/?#@\\\s*]+\/?$/i.test(value)) return null;
  try {
    return new URL(value).origin;
  } catch {
    return null;
  }
}

function parseOrigins(value: string): string[] {
  const origins: string[] = [];
  for (const entry of value.split(',').map((o) => o.trim()).filter(Boolean)) {
    const origin = normalizeOrigin(entry);
    if (origin === null) {
      const why =
        entry.includes('*') ? ': wildcards are not supported; list each origin, or leave ALLOWED_ORIGINS unset to allow any'
        : entry === 'null' ? ' (any sandboxed or file:// page sends Origin: null)'
        : ' like https://chat.example.com (scheme, host, optional port; no path, query or credentials)';
      throw new ConfigError('ALLOWED_ORIGINS', `${JSON.stringify(redactUrl(entry))} is not an http(s) origin${why}`);
    }
    if (!origins.includes(origin)) origins.push(origin);
  }
  if (origins.length === 0) {
    throw new ConfigError('ALLOWED_ORIGINS', 'lists no origin, which would refuse every browser; leave it unset to allow any origin');
  }
  return origins;
}
