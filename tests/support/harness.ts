import { after, before } from 'node:test';
import { Writable } from 'node:stream';
import { startDevApi, type DevApi } from '../../dev-api/app.js';
import { loadConfig } from '../../src/config/index.js';
import { startGateway, type Gateway } from '../../src/gateway.js';
import { createLogger } from '../../src/log.js';
import { TestClient } from './client.js';
import { RedisServer } from './redis.js';

export type EngineMode = 'memory' | 'redis';

/**
 * Engines every capability suite runs against (one instance or many behave the same).
 * TEST_ENGINES=redis (or memory) keeps one: `.ci/run`'s second Node version runs the suites once,
 * with Redis (see there).
 */
export const ENGINE_MODES: readonly EngineMode[] = (() => {
  const wanted = (process.env.TEST_ENGINES ?? 'memory,redis').split(',').map((m) => m.trim()).filter(Boolean);
  const unknown = wanted.filter((m) => m !== 'memory' && m !== 'redis');
  if (unknown.length > 0 || wanted.length === 0) throw new Error(`TEST_ENGINES: memory and/or redis, got ${JSON.stringify(process.env.TEST_ENGINES)}`);
  return wanted as EngineMode[];
})();

let chatSeq = 0;
/** A chat id no other test in this process uses. */
export function uniqueChat(): number {
  return 1_000_000 + process.pid * 1000 + ++chatSeq;
}

export interface Instance {
  gateway: Gateway;
  wsUrl: string;
  logs: string[];
}

/** One dev API, optionally one redis-server, and gateways started on demand. */
export class Harness {
  api!: DevApi;
  redis: RedisServer | null = null;
  readonly instances: Instance[] = [];

  constructor(
    readonly mode: EngineMode,
    private readonly env: Record<string, string> = {},
  ) {}

  async start(): Promise<void> {
    this.api = await startDevApi({ port: 0 });
    if (this.mode === 'redis') this.redis = await RedisServer.start();
  }

  /** Starts a gateway with the harness's env plus `env`. */
  async gateway(env: Record<string, string> = {}): Promise<Instance> {
    const logs: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logs.push(chunk.toString());
        cb();
      },
    });
    const config = loadConfig({
      APP_PORT: '0',
      AUTH_HOST: this.api.url,
      LOG_LEVEL: 'debug',
      PRESENCE_TTL_MS: '3000',
      ...(this.redis ? { REDIS_HOST: this.redis.url } : {}),
      ...this.env,
      ...env,
    });
    const gateway = await startGateway(config, { log: createLogger(config.logLevel, sink) });
    const instance = { gateway, wsUrl: `ws://127.0.0.1:${gateway.port}/ws`, logs };
    this.instances.push(instance);
    if (this.redis) await waitFor(() => gateway.engine.isReady(), 5000, 'engine ready');
    return instance;
  }

  token(user: number | string, opts?: { expiresInSec?: number }): Promise<string> {
    return this.api.mintToken(user, opts);
  }

  /** Connects to instance `i` (default the first). */
  connect(i = 0, options = {}): Promise<TestClient> {
    const inst = this.instances[i];
    if (!inst) throw new Error(`no gateway instance ${i}`);
    return TestClient.connect(inst.wsUrl, options);
  }

  /** A connected client registered to `chat` as `user`. */
  async member(user: number | string, chat: number | string, i = 0): Promise<TestClient> {
    const client = await this.connect(i);
    await client.register(await this.token(user), chat);
    return client;
  }

  /** Users 1 and 2 registered to a fresh chat on instance `i`: the usual sender and receiver. */
  async pair(i = 0): Promise<{ chat: number; a: TestClient; b: TestClient }> {
    const chat = uniqueChat();
    return { chat, a: await this.member(1, chat, i), b: await this.member(2, chat, i) };
  }

  async close(): Promise<void> {
    for (const inst of this.instances.splice(0)) await inst.gateway.shutdown();
    await this.api?.close();
    await this.redis?.close();
  }
}

/** Registers before/after hooks in the current suite: one harness with one gateway. */
export function useHarness(mode: EngineMode, env: Record<string, string> = {}): Harness {
  const h = new Harness(mode, env);
  before(async () => {
    await h.start();
    await h.gateway();
  });
  after(() => h.close());
  return h;
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 3000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Reads one series value from /metrics text. */
export async function metric(inst: Instance, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${inst.gateway.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const [series, value] = line.split(' ');
    if (series === undefined || value === undefined) continue;
    const bare = series.split('{')[0];
    if (bare !== name) continue;
    if (want.every((w) => series.includes(w))) return Number(value);
  }
  return 0;
}
