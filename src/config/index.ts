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
  /** Writes (message, edit, delete) queued or in flight per connection; more get `rate_limited`. */
  maxPendingWrites: number;
  /** Main-API calls in flight per connection; the rest wait their turn in the connection's queue. */
  maxUpstreamPerConnection: number;
  pingIntervalMs: number;
  maxBufferedBytes: number;
  /** null: any origin. */
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

type Env = Record<string, string | undefined>;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Real environment variables win over the optional `.env` file. */
export function readEnv(env: Env = process.env, dotenvPath = '.env'): Env {
  if (!existsSync(dotenvPath)) return env;
  let fromFile: Env;
  try {
    fromFile = parseEnv(readFileSync(dotenvPath, 'utf8'));
  } catch (err) {
    throw new ConfigError('.env', `cannot be read: ${(err as Error).message}`);
  }
  return { ...fromFile, ...env };
}

export function loadConfig(env: Env = readEnv()): Config {
  const get = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  const int = (name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = get(name);
    if (raw === undefined) return def;
    if (!/^[0-9]+$/.test(raw)) throw new ConfigError(name, `must be an integer, got "${raw}"`);
    const n = Number(raw);
    if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
    return n;
  };
  const path = (name: string, def: string): string => {
    const v = get(name) ?? def;
    if (!v.startsWith('/')) throw new ConfigError(name, `must start with "/", got "${v}"`);
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
    throw new ConfigError('AUTH_HOST', `must be an http(s) URL, got "${authHost}"`);
  }
  if (authUrl.protocol !== 'http:' && authUrl.protocol !== 'https:') {
    throw new ConfigError('AUTH_HOST', `must be an http(s) URL, got "${authHost}"`);
  }
  if (authUrl.pathname !== '/' || authUrl.search || authUrl.hash) {
    throw new ConfigError('AUTH_HOST', 'must be a base URL without path, query or fragment (paths are set by *_PATH)');
  }

  const messagePath = path('MESSAGE_PATH', '/chat/{chat_id}/messages/{message_id}');
  if (!messagePath.includes('{chat_id}') || !messagePath.includes('{message_id}')) {
    throw new ConfigError('MESSAGE_PATH', 'must contain {chat_id} and {message_id}');
  }

  const logLevel = get('LOG_LEVEL') ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError('LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  }

  const origins = get('ALLOWED_ORIGINS');
  const allowedOrigins = origins === undefined ? null : origins.split(',').map((o) => o.trim()).filter(Boolean);
  if (allowedOrigins !== null) {
    for (const o of allowedOrigins) {
      if (o !== 'null' && !/^https?:\/\/[^/\s]+$/.test(o)) {
        throw new ConfigError('ALLOWED_ORIGINS', `"${o}" is not an origin like https://chat.example.com`);
      }
    }
  }

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
    maxMessageBytes: int('MAX_MESSAGE_BYTES', 65536, 256, 64 * 1024 * 1024),
    rateLimitPerSec: int('RATE_LIMIT_PER_SEC', 20, 1, 1_000_000),
    rateLimitBurst: int('RATE_LIMIT_BURST', 50, 1, 1_000_000),
    registerTimeoutMs: ms('REGISTER_TIMEOUT_MS', 10000),
    maxChatsPerConnection: int('MAX_CHATS_PER_CONNECTION', 100, 1, 100_000),
    maxPendingWrites: int('MAX_PENDING_WRITES', 16, 1, 10_000),
    maxUpstreamPerConnection: int('MAX_UPSTREAM_PER_CONNECTION', 4, 1, 1000),
    pingIntervalMs: ms('PING_INTERVAL_MS', 25000, 10),
    maxBufferedBytes: int('MAX_BUFFERED_BYTES', 4194304, 1024),
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
      throw new ConfigError('REDIS_HOST', `"${redactUrl(part)}" is not a Redis URL or host:port`);
    }
    if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
      throw new ConfigError('REDIS_HOST', `scheme must be redis:// or rediss://, got "${url.protocol}"`);
    }
    if (!url.hostname) throw new ConfigError('REDIS_HOST', 'has no host');
    return url.toString();
  });
}

/** A URL safe to log: the password is replaced. */
export function redactUrl(url: string): string {
  return url.replace(/(\/\/[^:/@]*:)[^@]*@/, '$1***@');
}
