/**
 * The systems compared by `npm run bench`: this gateway (memory engine, one process; Redis
 * engine, two processes) and what a team would use instead (bench/peers/). Each is started
 * fresh for every measured cell: instances pinned to the server core with the inspector on,
 * plus its Redis (server core) and, for the gateway, the minimal main API (generator core:
 * it stands for another machine).
 */
import type { Protocol } from '../gen/worker.js';
import { ROOT, Redis, RedisCluster, SERVER_CORE, GENERATOR_CORE, cpuSeconds, gcAndMemory, loopDelay, rssBytes, writeSyscalls, sleep, spawnNode, waitInspector, type LoopDelay, type Proc, type RedisDeployment } from './procs.js';

export type SystemKey = 'ws' | 'ws-preframed' | 'ws-save' | 'socketio' | 'ws-redis' | 'ws-redis-save' | 'socketio-redis' | 'gateway' | 'gateway-redis';

export interface SystemDef {
  key: SystemKey;
  label: string;
  protocol: Protocol;
  instances: number;
  redis: boolean;
  gateway: boolean;
  peer?: string;
  /** A peer that saves through the main API: the minimal main API is started for it too (MAIN_API_URL). */
  saves?: boolean;
}

export const SYSTEMS: Record<SystemKey, SystemDef> = {
  ws: { key: 'ws', label: 'hand-written ws (floor)', protocol: 'room', instances: 1, redis: false, gateway: false, peer: 'ws-room.ts' },
  'ws-preframed': { key: 'ws-preframed', label: 'ws, pre-framed broadcast', protocol: 'room', instances: 1, redis: false, gateway: false, peer: 'ws-preframed.ts' },
  'ws-save': { key: 'ws-save', label: 'ws + main-API save and ack', protocol: 'room', instances: 1, redis: false, gateway: false, peer: 'ws-room.ts', saves: true },
  socketio: { key: 'socketio', label: 'Socket.IO 4 (memory adapter)', protocol: 'socketio', instances: 1, redis: false, gateway: false, peer: 'socketio.ts' },
  'ws-redis': { key: 'ws-redis', label: '2× ws + Redis pub/sub', protocol: 'room', instances: 2, redis: true, gateway: false, peer: 'ws-redis.ts' },
  'ws-redis-save': { key: 'ws-redis-save', label: '2× ws + Redis + main-API save and ack', protocol: 'room', instances: 2, redis: true, gateway: false, peer: 'ws-redis.ts', saves: true },
  'socketio-redis': { key: 'socketio-redis', label: '2× Socket.IO + redis-adapter', protocol: 'socketio', instances: 2, redis: true, gateway: false, peer: 'socketio.ts' },
  gateway: { key: 'gateway', label: 'gateway, memory engine', protocol: 'gateway', instances: 1, redis: false, gateway: true },
  'gateway-redis': { key: 'gateway-redis', label: '2× gateway, Redis engine', protocol: 'gateway', instances: 2, redis: true, gateway: true },
};

/** Gateway settings for the benchmark: limits out of the way, everything else default. */
export const GATEWAY_ENV = {
  APP_PORT: '0',
  LOG_LEVEL: 'info',
  RATE_LIMIT_PER_SEC: '1000000',
  RATE_LIMIT_BURST: '1000000',
  MAX_PENDING_WRITES: '10000',
  UPSTREAM_CONNECTIONS: '256',
  // BENCH_GATEWAY_ENV='HISTORY_SIZE=0 …': more variables for every gateway instance (experiments).
  ...Object.fromEntries((process.env.BENCH_GATEWAY_ENV ?? '').split(/\s+/).filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
};

/** Every system started and not yet stopped, so an interrupted run can stop them (bench/run.ts). */
export const RUNNING = new Set<RunningSystem>();

export class RunningSystem {
  private constructor(
    readonly def: SystemDef,
    readonly instances: Proc[],
    readonly urls: string[],
    readonly redis: RedisDeployment | null,
    readonly api: Proc | null,
  ) {}

  /** `cluster`: the Redis is a 3-master Cluster (the gateway with REDIS_CLUSTER=true); `gatewayEnv` adds to GATEWAY_ENV. */
  static async start(def: SystemDef, instanceCount = def.instances, cluster = false, gatewayEnv: Record<string, string> = {}): Promise<RunningSystem> {
    const redis = !def.redis ? null : cluster ? await RedisCluster.start(3) : await Redis.start();
    let api: Proc | null = null;
    const instances: Proc[] = [];
    const urls: string[] = [];
    try {
      let apiUrl = '';
      if (def.gateway || def.saves) {
        api = spawnNode('mini-api', GENERATOR_CORE, `${ROOT}/bench/peers/mini-api.ts`, { PORT: '0' }, { inspect: true });
        apiUrl = `http://127.0.0.1:${(await api.waitFor(/"msg":"listening","port":(\d+)/))[1]}`;
        await waitInspector(api);
      }
      for (let i = 0; i < instanceCount; i++) {
        if (def.gateway) {
          const env: Record<string, string> = { ...GATEWAY_ENV, AUTH_HOST: apiUrl, ...(redis ? { REDIS_HOST: redis.url } : {}), ...(cluster ? { REDIS_CLUSTER: 'true' } : {}), ...gatewayEnv };
          const p = spawnNode(`${def.key}#${i}`, SERVER_CORE, `${ROOT}/src/main.ts`, env, { inspect: true });
          instances.push(p);
          const port = Number((await p.waitFor(/"port":(\d+)[^\n]*"msg":"gateway listening"/))[1]);
          for (let k = 0; k < 200; k++) {
            const res = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null);
            if (res?.status === 200) break;
            await sleep(50);
          }
          urls.push(`ws://127.0.0.1:${port}/ws`);
        } else {
          const env: Record<string, string> = { PORT: '0', ...(redis ? { REDIS_URL: redis.url } : {}), ...(api ? { MAIN_API_URL: apiUrl } : {}) };
          const p = spawnNode(`${def.key}#${i}`, SERVER_CORE, `${ROOT}/bench/peers/${def.peer!}`, env, { inspect: true });
          instances.push(p);
          const port = Number((await p.waitFor(/"msg":"listening","port":(\d+)/))[1]);
          urls.push(def.protocol === 'socketio' ? `http://127.0.0.1:${port}` : `ws://127.0.0.1:${port}`);
        }
        await waitInspector(instances[i]!);
      }
    } catch (err) {
      for (const p of instances) await p.stop();
      await api?.stop();
      await redis?.close();
      throw err;
    }
    const sys = new RunningSystem(def, instances, urls, redis, api);
    RUNNING.add(sys);
    await sleep(300);
    return sys;
  }

  /** CPU seconds so far: the instances summed, Redis and the main API beside; and the instances' write syscalls. */
  cpu(): { servers: number; redis: number; api: number; perInstance: number[]; redisPerNode: number[]; writes: number } {
    const perInstance = this.instances.map((p) => cpuSeconds(p.pid));
    const redisPerNode = this.redis ? this.redis.pids.map(cpuSeconds) : [];
    return {
      writes: this.instances.reduce((s, p) => s + writeSyscalls(p.pid), 0),
      perInstance,
      servers: perInstance.reduce((s, x) => s + x, 0),
      redis: redisPerNode.reduce((s, x) => s + x, 0),
      redisPerNode,
      api: this.api ? cpuSeconds(this.api.pid) : 0,
    };
  }

  /** Event-loop delay since the previous call: the worst server instance's, and the main-API stand-in's. */
  async loopDelays(): Promise<{ server: LoopDelay; api: LoopDelay | null }> {
    const servers = await Promise.all(this.instances.map((p) => loopDelay(p.inspectorUrl!)));
    const server = servers.reduce((a, b) => (b.p99 > a.p99 ? b : a));
    return { server, api: this.api ? await loopDelay(this.api.inspectorUrl!) : null };
  }

  /** After a full GC in every instance: RSS and heap, summed and per instance. */
  async memory(): Promise<{ rss: number; heap: number; perInstance: Array<{ rss: number; heap: number }> }> {
    const perInstance: Array<{ rss: number; heap: number }> = [];
    for (const p of this.instances) {
      const m = await gcAndMemory(p.inspectorUrl!);
      perInstance.push({ rss: rssBytes(p.pid), heap: m.heapUsed });
    }
    return { rss: perInstance.reduce((s, x) => s + x.rss, 0), heap: perInstance.reduce((s, x) => s + x.heap, 0), perInstance };
  }

  /** Any instance gone? (a crash must fail the cell, not be measured as zero CPU) */
  check(): void {
    for (const p of this.instances) if (!p.alive) throw new Error(`${p.name} exited:\n${p.out.slice(-1500)}\n${p.err.slice(-1500)}`);
  }

  async stop(): Promise<void> {
    RUNNING.delete(this);
    for (const p of this.instances) await p.stop();
    await this.api?.stop();
    await this.redis?.close();
  }
}
