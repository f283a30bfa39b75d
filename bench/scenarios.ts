/**
 * The measured scenarios of `npm run bench`. Each cell starts its system fresh, measures one
 * scenario, and stops it. Figures are per cell; bench/run.ts repeats cells and reports min and
 * median, and ratios to the hand-written `ws` floor.
 */
import type { ConnSpec } from './gen/worker.js';
import { GeneratorPool, closeAll, connectAll, runPhase, type Generator, type PhaseResult } from './lib/generators.js';
import { GENERATOR_CORE, SERVER_CORE, coreBusyPct, coreTicks, diffCounts, sleep } from './lib/procs.js';
import { profileWhile, saveProfiles, topFrames } from './lib/profile.js';
import { RunningSystem, SYSTEMS, type SystemDef, type SystemKey } from './lib/systems.js';

export type Metrics = Record<string, number | null>;
export interface Cell {
  metrics: Metrics;
  info: Record<string, unknown>;
}

export interface Ctx {
  pool: GeneratorPool;
  log: (line: string) => void;
  /** `--profile`: sample every server instance's CPU during fan-out's measured window (bench/lib/profile.ts). */
  profile: boolean;
}

export interface Variant {
  /** Row name in the tables. */
  key: string;
  def: SystemDef;
  /** Table label when not the system's own. */
  label?: string;
  instances?: number;
  chatSize?: number;
  /** Two instances: the last member of every chat on instance 1, everyone else (and every sender) on instance 0. */
  relay?: boolean;
  /** Redis is a 3-master Cluster (REDIS_CLUSTER=true, sharded pub/sub). */
  cluster?: boolean;
  /** Gateway settings beside the benchmark's defaults (GATEWAY_ENV). */
  env?: Record<string, string>;
}

export interface Scenario {
  key: string;
  title: string;
  /** Rows, in table order; the first `ws` row is the floor for ratios. */
  variants: (keys: SystemKey[]) => Variant[];
  run(v: Variant, ctx: Ctx): Promise<Cell>;
}

const ALL: SystemKey[] = ['ws', 'ws-preframed', 'socketio', 'ws-redis', 'socketio-redis', 'gateway', 'gateway-redis'];
const pick = (allowed: SystemKey[]) => (keys: SystemKey[]) => allowed.filter((k) => keys.includes(k)).map((k) => ({ key: k, def: SYSTEMS[k] }));

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

async function withSystem<T>(v: Variant, fn: (sys: RunningSystem) => Promise<T>): Promise<T> {
  const sys = await RunningSystem.start(v.def, v.instances, v.cluster ?? false, v.env);
  try {
    return await fn(sys);
  } finally {
    await sys.stop();
  }
}

/** `total` connections in chats of `chatSize` (connection i in chat base + ⌊i/size⌋), spread round-robin over the instances. */
function chatSpecs(sys: RunningSystem, total: number, chatSize: number, base: number, relay = false): ConnSpec[] {
  const url = (i: number) => (relay ? sys.urls[i % chatSize === chatSize - 1 ? 1 : 0]! : sys.urls[i % sys.urls.length]!);
  return range(total).map((i) => ({ url: url(i), user: i + 1, chats: [base + Math.floor(i / chatSize)] }));
}

/** Senders in an order that visits every chat before any chat again: consecutive messages go to different chats. */
function rotatingSenders(total: number, chatSize: number, base: number, perChat = chatSize): Array<[number, number, number]> {
  // (with `relay`, perChat = chatSize − 1 keeps the relay instance's member from sending)
  const chats = Math.ceil(total / chatSize);
  const out: Array<[number, number, number]> = [];
  for (let m = 0; m < Math.min(perChat, chatSize); m++) {
    for (let c = 0; c < chats; c++) {
      const conn = c * chatSize + m;
      if (conn < total) out.push([conn, base + c, Math.min(chatSize, total - c * chatSize)]);
    }
  }
  return out;
}

async function connectOrThrow(gens: Generator[], v: Variant, specs: ConnSpec[], concurrency: number) {
  const c = await connectAll(gens, v.def.protocol, specs, concurrency);
  if (c.failed > 0) throw new Error(`${c.failed} of ${specs.length} connections failed: ${c.firstError}`);
  return c;
}

interface Load {
  phase: PhaseResult;
  wallS: number;
  cpu: { servers: number; redis: number; api: number; perInstance: number[]; redisPerNode: number[] };
  /** The server instances' write syscalls. */
  writes: number;
  genCpu: number;
  redisCmds: Record<string, number>;
  /** Whole-core busy % (every process on the machine) of the server and generator cores. */
  busy: { server: number | null; generator: number | null };
}

async function measure(sys: RunningSystem, ctx: Ctx, gens: Generator[], owner: Array<[number, number]>, senders: Array<[number, number, number]>, rate: number, durationMs: number, drainMs: number): Promise<Load> {
  const c0 = sys.cpu();
  const g0 = gens.reduce((s, g) => s + g.cpu(), 0);
  const r0 = sys.redis?.commandStats() ?? {};
  const k0 = coreTicks();
  const t0 = performance.now();
  const phase = await runPhase(gens, owner, senders, rate, durationMs, drainMs);
  const wallS = (performance.now() - t0) / 1000;
  const k1 = coreTicks();
  const c1 = sys.cpu();
  sys.check();
  return {
    phase,
    wallS,
    cpu: {
      servers: c1.servers - c0.servers,
      redis: c1.redis - c0.redis,
      api: c1.api - c0.api,
      perInstance: c1.perInstance.map((x, i) => x - (c0.perInstance[i] ?? 0)),
      redisPerNode: c1.redisPerNode.map((x, i) => x - (c0.redisPerNode[i] ?? 0)),
    },
    writes: c1.writes - c0.writes,
    genCpu: gens.reduce((s, g) => s + g.cpu(), 0) - g0,
    redisCmds: sys.redis ? diffCounts(sys.redis.commandStats(), r0) : {},
    busy: { server: coreBusyPct(k0, k1, SERVER_CORE), generator: coreBusyPct(k0, k1, GENERATOR_CORE) },
  };
}

/**
 * Percentages of a core are taken over the sending time, not the measured window: the window's
 * drain (after the last send) is idle time for a server that keeps up, and counting it made a
 * saturated core read 60–75 % busy.
 */
function loadMetrics(l: Load, durationMs: number, redis: boolean): Metrics {
  const k = l.phase.received / 1000;
  const sendS = durationMs / 1000;
  const overSending = l.wallS / sendS;
  const cmds = Object.values(l.redisCmds).reduce((s, n) => s + n, 0);
  return {
    msgs_per_s: l.phase.sent / (durationMs / 1000),
    deliveries_per_s: l.phase.received / (durationMs / 1000),
    delivered_pct: l.phase.expected === 0 ? null : (100 * l.phase.received) / l.phase.expected,
    cpu_ms_per_1k: k === 0 ? null : (1000 * l.cpu.servers) / k,
    /** Write syscalls per 1,000 deliveries (acks, main-API requests and Redis commands included). */
    writes_per_1k: k === 0 || Number.isNaN(l.writes) ? null : l.writes / k,
    server_cpu_pct: (100 * l.cpu.servers) / sendS,
    p50_ms: l.phase.hist.quantile(0.5),
    p99_ms: l.phase.hist.quantile(0.99),
    max_ms: l.phase.hist.max,
    redis_cpu_ms_per_1k: redis && k > 0 ? (1000 * l.cpu.redis) / k : null,
    redis_cmds_per_msg: redis && l.phase.sent > 0 ? cmds / l.phase.sent : null,
    api_cpu_ms_per_1k: l.cpu.api > 0 && k > 0 ? (1000 * l.cpu.api) / k : null,
    gen_cpu_pct: (100 * l.genCpu) / sendS,
    /** The generators' event-loop delay (the worst generator's): latency the generator adds itself. */
    gen_loop_p99_ms: l.phase.loopP99Ms,
    gen_loop_max_ms: l.phase.loopMaxMs,
    /** The server core: every instance plus Redis. */
    server_core_pct: (100 * (l.cpu.servers + l.cpu.redis)) / sendS,
    /** The generator core: generators plus the main-API stand-in. */
    generator_core_pct: (100 * (l.genCpu + l.cpu.api)) / sendS,
    /** Both cores as /proc/stat saw them: every process, other tenants of the machine included. */
    server_core_busy_pct: l.busy.server === null ? null : l.busy.server * overSending,
    generator_core_busy_pct: l.busy.generator === null ? null : l.busy.generator * overSending,
    lost_connections: l.phase.lost,
    bytes_per_delivery: l.phase.bytes > 0 && l.phase.received > 0 ? l.phase.bytes / l.phase.received : null,
  };
}

// --- idle ---------------------------------------------------------------------------------

const IDLE_CONNS = 5000;
const WARM_UP_CONNS = 500;

/**
 * Registers and closes WARM_UP_CONNS connections (in chats no measured connection uses) before
 * the baseline, for every system alike: the code a server compiles on its first connections is
 * paid once per process, not per connection, and must not be counted per connection.
 */
async function warmUp(gens: Generator[], sys: RunningSystem, v: Variant): Promise<void> {
  await connectOrThrow(gens, v, chatSpecs(sys, WARM_UP_CONNS, 10, 9_000_000), 100);
  await sleep(500);
  await closeAll(gens);
  await sleep(1000);
}

/** Memory before and after `n` idle registered connections in chats of 10 (after a warm-up); closes them after. */
async function idleConnections(sys: RunningSystem, v: Variant, gens: Generator[], n: number, concurrency: number, settleMs: number) {
  await warmUp(gens, sys, v);
  const base = await sys.memory();
  const c = await connectOrThrow(gens, v, chatSpecs(sys, n, 10, 1), concurrency);
  await sleep(settleMs);
  sys.check();
  const loaded = await sys.memory();
  await closeAll(gens);
  return { c, base, loaded };
}

export const idle: Scenario = {
  key: 'idle',
  title: `idle: ${IDLE_CONNS} connections in chats of 10`,
  variants: pick(ALL),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const { c, base, loaded } = await idleConnections(sys, v, await ctx.pool.take(1), IDLE_CONNS, 100, 1000);
      return {
        metrics: {
          connect_s: c.ms / 1000,
          rss_kib_per_conn: (loaded.rss - base.rss) / IDLE_CONNS / 1024,
          heap_kib_per_conn: (loaded.heap - base.heap) / IDLE_CONNS / 1024,
          base_rss_mib: base.rss / 2 ** 20,
        },
        info: { base, loaded },
      };
    }),
};

// --- fan-out ------------------------------------------------------------------------------

const FAN_CONNS = 1000;
const FAN_CHAT = Number(process.env.BENCH_FAN_CHAT ?? 50);
const FAN_RATE = Number(process.env.BENCH_FAN_RATE ?? 200);
const FAN_WARM_UP_MS = 10_000;

async function fanoutSetup(sys: RunningSystem, v: Variant, ctx: Ctx, chatSize = FAN_CHAT) {
  const gens = await ctx.pool.take(1);
  const c = await connectOrThrow(gens, v, chatSpecs(sys, FAN_CONNS, chatSize, 1, v.relay), 100);
  const senders = rotatingSenders(FAN_CONNS, chatSize, 1, v.relay ? chatSize - 1 : chatSize);
  // Warm-up (JIT, pools, history keys): not measured. 10 s for every system: after 2 s V8's
  // compiler threads were still busy with the larger servers' code (the gateway's Redis engine
  // measured 25 % lower after a 30 s warm-up), which is start-up cost, not cost per delivery.
  await runPhase(gens, c.owner, senders, FAN_RATE, FAN_WARM_UP_MS, 500);
  return { gens, owner: c.owner, senders, connectMs: c.ms };
}

export const fanout: Scenario = {
  key: 'fanout',
  title: `fan-out: ${FAN_CONNS} connections in chats of ${FAN_CHAT}, ${FAN_RATE} messages/s for 15 s`,
  variants: pick([...ALL, 'ws-save', 'ws-redis-save']),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const { gens, owner, senders } = await fanoutSetup(sys, v, ctx);
      const window = () => measure(sys, ctx, gens, owner, senders, FAN_RATE, 15_000, 2000);
      let profile: Record<string, unknown> | null = null;
      let l: Load;
      if (ctx.profile) {
        const p = await profileWhile(sys.instances, window);
        l = p.result;
        const files = saveProfiles(`fanout-${v.key}-${Date.now()}`, p.profiles);
        const tops = p.profiles.map((prof) => topFrames(prof));
        tops.forEach((t, i) => {
          ctx.log(`    profile ${v.key}#${i} (${files[i]}; ${t.busyMs.toFixed(0)} ms busy): ${t.byArea.map((a) => `${a.frame} ${a.pct} %`).join(', ')}`);
          for (const f of t.frames) ctx.log(`      ${String(f.pct).padStart(5)} %  ${f.frame}`);
        });
        profile = { files, tops };
      } else {
        l = await window();
      }
      await closeAll(gens);
      return { metrics: loadMetrics(l, 15_000, sys.redis !== null), info: { redis_commands: l.redisCmds, send_lag_ms: l.phase.sendLagMs, ...(profile ? { profile } : {}) } };
    }),
};

// --- saturation ---------------------------------------------------------------------------

const loopText = (p99: number | null | undefined, max: number | null | undefined) =>
  p99 === null || p99 === undefined ? '–' : `${p99.toFixed(1)}${max === null || max === undefined ? '' : ` / ${max.toFixed(0)}`} ms`;

const RAMP = [200, 400, 800, 1200, 1600, 2400, 3200, 4800, 6400, 9600, 12800];
const STEP_MS = 4000;

export const saturation: Scenario = {
  key: 'saturation',
  title: `saturation: fan-out set-up, rate ramped (${RAMP.join(', ')} messages/s × 49 deliveries, ${STEP_MS / 1000} s steps) until < 95 % delivered or p99 > 100 ms`,
  variants: pick([...ALL, 'ws-save', 'ws-redis-save']),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const { gens, owner, senders } = await fanoutSetup(sys, v, ctx);
      const steps: Array<Metrics & { rate: number }> = [];
      let best: (Metrics & { rate: number }) | null = null;
      let limit = 'ramp ended';
      for (const rate of RAMP) {
        // A step passes if either of two tries passes: a latency spike from another tenant of the
        // machine should not end the ramp, a real limit fails both.
        let m: Metrics & { rate: number; send_lag_ms: number } = { rate, send_lag_ms: 0 };
        let ok = false;
        for (let attempt = 0; attempt < 2 && !ok; attempt++) {
          await sys.loopDelays();
          const l = await measure(sys, ctx, gens, owner, senders, rate, STEP_MS, 1500);
          const loops = await sys.loopDelays();
          m = {
            ...loadMetrics(l, STEP_MS, sys.redis !== null),
            rate,
            send_lag_ms: l.phase.sendLagMs,
            server_loop_p99_ms: loops.server.p99,
            server_loop_max_ms: loops.server.max,
            api_loop_p99_ms: loops.api?.p99 ?? null,
          };
          steps.push(m);
          ctx.log(
            `    ${rate}/s: ${(m.delivered_pct ?? 0).toFixed(1)} % delivered, p99 ${m.p99_ms} ms; server core: ours ${(m.server_core_pct ?? 0).toFixed(0)} %, all ${(m.server_core_busy_pct ?? 0).toFixed(0)} %; generator core: ours ${(m.generator_core_pct ?? 0).toFixed(0)} %, all ${(m.generator_core_busy_pct ?? 0).toFixed(0)} %; event-loop delay p99 / max: server ${loopText(m.server_loop_p99_ms, m.server_loop_max_ms)}, generator ${loopText(m.gen_loop_p99_ms, m.gen_loop_max_ms)}, main API ${loopText(m.api_loop_p99_ms, null)}`,
          );
          ok = (m.delivered_pct ?? 0) >= 95 && (m.p99_ms ?? Infinity) <= 100 && m.lost_connections === 0;
          // An overloaded step leaves a backlog behind; let it drain before trying again.
          if (!ok) await sleep(3000);
        }
        if (!ok) {
          // Whose limit: a process whose event loop was late by half the p99 limit (50 ms) or more
          // at the 99th percentile, or that used ≥ 90 % of its core over the sending time; else a
          // core kept ≥ 95 % busy by other processes too.
          const late = (ms: number | null | undefined) => (ms ?? 0) >= 50;
          const genBound = (m.generator_core_pct ?? 0) >= 90 || m.send_lag_ms > 100 || late(m.gen_loop_p99_ms);
          const serverBound = (m.server_core_pct ?? 0) >= 90 || late(m.server_loop_p99_ms);
          const apiBound = late(m.api_loop_p99_ms);
          const othersBusy = (m.server_core_busy_pct ?? 0) >= 95 || (m.generator_core_busy_pct ?? 0) >= 95;
          const bound = [serverBound && 'server', genBound && 'generator', apiBound && 'main-API stand-in'].filter((x) => x !== false);
          limit = bound.length > 0 ? bound.join(' + ') : othersBusy ? 'machine busy (other tenants)' : 'latency, no process late or busy';
          break;
        }
        best = m;
      }
      await closeAll(gens);
      return {
        metrics: {
          max_msgs_per_s: best?.msgs_per_s ?? null,
          max_deliveries_per_s: best?.deliveries_per_s ?? null,
          p99_at_max_ms: best?.p99_ms ?? null,
          server_cpu_pct_at_max: best?.server_cpu_pct ?? null,
          server_core_pct_at_max: best?.server_core_pct ?? null,
          server_core_busy_pct_at_max: best?.server_core_busy_pct ?? null,
          generator_core_pct_at_max: best?.generator_core_pct ?? null,
          cpu_ms_per_1k_at_max: best?.cpu_ms_per_1k ?? null,
        },
        info: { limit, steps },
      };
    }),
};

// --- big chat -----------------------------------------------------------------------------

const BIG = 2000;
const BIG_RATE = 10;

export const bigchat: Scenario = {
  key: 'bigchat',
  title: `big chat: one chat of ${BIG} members, ${BIG_RATE} messages/s for 10 s`,
  variants: pick(ALL),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const gens = await ctx.pool.take(1);
      const c0 = sys.cpu();
      const r0 = sys.redis?.commandStats() ?? {};
      const c = await connectOrThrow(gens, v, chatSpecs(sys, BIG, BIG, 1), 100);
      const c1 = sys.cpu();
      const joinCmds = sys.redis ? diffCounts(sys.redis.commandStats(), r0) : {};
      const senders = rotatingSenders(BIG, BIG, 1, 20);
      await runPhase(gens, c.owner, senders, BIG_RATE, 1000, 500);
      const l = await measure(sys, ctx, gens, c.owner, senders, BIG_RATE, 10_000, 2000);
      await closeAll(gens);
      const joinRedis: Metrics = {
        join_redis_cpu_s: sys.redis ? c1.redis - c0.redis : null,
        join_redis_cmds: sys.redis ? Object.values(joinCmds).reduce((a, n) => a + n, 0) : null,
      };
      return {
        metrics: { join_s: c.ms / 1000, join_cpu_s: c1.servers - c0.servers, ...joinRedis, ...loadMetrics(l, 10_000, sys.redis !== null) },
        info: { redis_commands: l.redisCmds, join_redis_commands: joinCmds },
      };
    }),
};

// --- many connections ---------------------------------------------------------------------

const MANY = 19_000;
const MANY_GENERATORS = 4;

export const manyconns: Scenario = {
  key: 'manyconns',
  title: `many connections: ${MANY} idle registered connections (chats of 10) on one instance, ${MANY_GENERATORS} generator processes`,
  variants: pick(['ws', 'ws-preframed', 'socketio', 'gateway']),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const { c, base, loaded } = await idleConnections(sys, v, await ctx.pool.take(MANY_GENERATORS), MANY, 50, 2000);
      const perConn = (loaded.rss - base.rss) / MANY;
      const processes = Math.ceil(100_000 / MANY);
      return {
        metrics: {
          connect_s: c.ms / 1000,
          conns_per_s: MANY / (c.ms / 1000),
          rss_kib_per_conn: perConn / 1024,
          heap_kib_per_conn: (loaded.heap - base.heap) / MANY / 1024,
          rss_mib: loaded.rss / 2 ** 20,
          projected_100k_mib: (100_000 * perConn + processes * base.rss) / 2 ** 20,
        },
        info: { base, loaded, processes_for_100k: processes },
      };
    }),
};

// --- many chats ---------------------------------------------------------------------------

const MC_CONNS = 1000;
const MC_PER_CONN = 10;
const IDLE_WINDOW_MS = 21_000;

export const manychats: Scenario = {
  key: 'manychats',
  title: `many chats: ${MC_CONNS * MC_PER_CONN} distinct chats (${MC_CONNS} connections × ${MC_PER_CONN}) registered on one instance`,
  variants: (keys) =>
    pick(['ws', 'ws-redis', 'socketio-redis', 'gateway-redis'])(keys).map((v) => ({ ...v, instances: 1, label: v.def.instances > 1 ? `${v.def.label.replace(/^2× /, '')}, one instance` : v.def.label })),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const gens = await ctx.pool.take(1);
      const specs: ConnSpec[] = range(MC_CONNS).map((i) => ({ url: sys.urls[0]!, user: i + 1, chats: range(MC_PER_CONN).map((j) => 1 + i * MC_PER_CONN + j) }));
      const r0 = sys.redis?.commandStats() ?? {};
      const m0 = sys.redis?.usedMemory() ?? 0;
      const c0 = sys.cpu();
      const c = await connectOrThrow(gens, v, specs, 100);
      await sleep(500);
      const c1 = sys.cpu();
      const cmds = sys.redis ? diffCounts(sys.redis.commandStats(), r0) : {};
      const total = Object.values(cmds).reduce((s, n) => s + n, 0);
      const chats = MC_CONNS * MC_PER_CONN;
      const metrics: Metrics = {
        register_s: c.ms / 1000,
        chats_per_s: chats / (c.ms / 1000),
        server_cpu_ms_per_chat: (1000 * (c1.servers - c0.servers)) / chats,
        redis_cmds_per_chat: sys.redis ? total / chats : null,
        redis_cpu_ms: sys.redis ? 1000 * (c1.redis - c0.redis) : null,
        redis_kib_per_chat: sys.redis ? (sys.redis.usedMemory() - m0) / chats / 1024 : null,
      };
      if (sys.redis) {
        // Registered and idle for 21 s: periodic work (the gateway refreshes each presence entry
        // every PRESENCE_TTL_MS / 3 = 20 s). Reported per registration per minute.
        const q0 = sys.redis.commandStats();
        const w0 = sys.cpu();
        const t0 = performance.now();
        await sleep(IDLE_WINDOW_MS);
        const perMin = 60 / ((performance.now() - t0) / 1000) / chats;
        const w1 = sys.cpu();
        const idleCmds = diffCounts(sys.redis.commandStats(), q0);
        metrics.idle_redis_cmds_per_chat_min = Object.values(idleCmds).reduce((a, n) => a + n, 0) * perMin;
        metrics.idle_redis_cpu_us_per_chat_min = 1e6 * (w1.redis - w0.redis) * perMin;
        metrics.idle_server_cpu_us_per_chat_min = 1e6 * (w1.servers - w0.servers) * perMin;
        sys.check();
        await closeAll(gens);
        return { metrics, info: { redis_commands: cmds, idle_redis_commands: idleCmds } };
      }
      await closeAll(gens);
      return { metrics, info: { redis_commands: cmds } };
    }),
};

// --- recovery -----------------------------------------------------------------------------

const REC_CONNS = 1000;
const REC_CHAT = 50;
/** Broadcasts each chat gets before the reconnect: HISTORY_SIZE's default, so all are replayable. */
const REC_PER_CHAT = 100;
const REC_RATE = 400;

export const recovery: Scenario = {
  key: 'recovery',
  title: `recovery: ${REC_CONNS} connections in chats of ${REC_CHAT} reconnect at once, each resuming ${REC_PER_CHAT} broadcasts behind (against a plain reconnect)`,
  variants: pick(['gateway', 'gateway-redis']),
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const gens = await ctx.pool.take(1);
      const specs = chatSpecs(sys, REC_CONNS, REC_CHAT, 1);
      const c = await connectOrThrow(gens, v, specs, 100);
      // Exactly REC_PER_CHAT broadcasts per chat: the senders rotate over the chats.
      const total = (REC_CONNS / REC_CHAT) * REC_PER_CHAT;
      const sent = await runPhase(gens, c.owner, rotatingSenders(REC_CONNS, REC_CHAT, 1), REC_RATE, (total / REC_RATE) * 1000, 1000);
      if (sent.sent !== total || sent.received !== sent.expected) throw new Error(`recovery set-up: ${sent.sent} of ${total} sent, ${sent.received} of ${sent.expected} delivered`);
      /** Closes every connection, waits for the gateway to settle, reconnects them all and measures it. */
      const reconnect = async (resume: boolean) => {
        await closeAll(gens);
        await sleep(1500);
        const c0 = sys.cpu();
        const r0 = sys.redis?.commandStats() ?? {};
        const r = await connectOrThrow(gens, v, specs.map((s) => ({ ...s, resume })), 100);
        const c1 = sys.cpu();
        const cmds = sys.redis ? Object.values(diffCounts(sys.redis.commandStats(), r0)).reduce((a, n) => a + n, 0) : 0;
        return { s: r.ms / 1000, cpu: c1.servers - c0.servers, writes: c1.writes - c0.writes, redis: c1.redis - c0.redis, cmds, replayed: r.replayed, recovered: r.recovered };
      };
      const plain = await reconnect(false);
      const resumed = await reconnect(true);
      sys.check();
      // Every connection must have been replayed all of its chat's broadcasts, or the figures are of something else.
      if (resumed.replayed !== REC_CONNS * REC_PER_CHAT || resumed.recovered !== REC_CONNS) {
        throw new Error(`recovery: ${resumed.recovered} of ${REC_CONNS} recovered, ${resumed.replayed} of ${REC_CONNS * REC_PER_CHAT} frames replayed (HISTORY_SIZE below ${REC_PER_CHAT}?)`);
      }
      await closeAll(gens);
      return {
        metrics: {
          reconnect_s: plain.s,
          recover_s: resumed.s,
          recovered_pct: (100 * resumed.recovered) / REC_CONNS,
          replayed_per_conn: resumed.replayed / REC_CONNS,
          reconnect_cpu_ms_per_conn: (1000 * plain.cpu) / REC_CONNS,
          recover_cpu_ms_per_conn: (1000 * resumed.cpu) / REC_CONNS,
          cpu_us_per_replayed: resumed.replayed > 0 ? (1e6 * (resumed.cpu - plain.cpu)) / resumed.replayed : null,
          reconnect_writes_per_conn: Number.isNaN(plain.writes) ? null : plain.writes / REC_CONNS,
          recover_writes_per_conn: Number.isNaN(resumed.writes) ? null : resumed.writes / REC_CONNS,
          redis_cpu_ms_per_conn: sys.redis ? (1000 * resumed.redis) / REC_CONNS : null,
          redis_cmds_per_conn: sys.redis ? resumed.cmds / REC_CONNS : null,
        },
        info: { plain, resumed },
      };
    }),
};

// --- scale: the capacity model's check ----------------------------------------------------

const SCALE_MS = 10_000;
/**
 * The presence refresh runs every PRESENCE_TTL_MS / 3 (20 s by default): with a 12 s window it
 * fell inside some cells and not others (1,000 registrations' worth of commands in one cell,
 * none in the next), which the fit took for per-message or per-instance cost. Here it runs every
 * 200 s, outside every window; its cost is measured on its own (`manychats`, terms f, g, h).
 */
const SCALE_ENV = { PRESENCE_TTL_MS: '600000' };

export const scale: Scenario = {
  key: 'scale',
  title: `scale check: gateway Redis engine on 1, 2, 3 instances, fan-out load (${FAN_CONNS} connections, ${FAN_RATE} messages/s, chats of ${FAN_CHAT}; one row chats of 10 at ${FAN_RATE * 5}/s; one row "relay": instance 1 holds only the last member of each chat)`,
  variants: (keys) =>
    keys.includes('gateway-redis')
      ? [
          { key: 'gateway-redis ×1, chats of 10', def: SYSTEMS['gateway-redis'], instances: 1, chatSize: 10, env: SCALE_ENV },
          { key: 'gateway-redis ×1', def: SYSTEMS['gateway-redis'], instances: 1, env: SCALE_ENV },
          { key: 'gateway-redis ×2, relay', def: SYSTEMS['gateway-redis'], instances: 2, relay: true, env: SCALE_ENV },
          { key: 'gateway-redis ×2', def: SYSTEMS['gateway-redis'], instances: 2, env: SCALE_ENV },
          { key: 'gateway-redis ×3', def: SYSTEMS['gateway-redis'], instances: 3, env: SCALE_ENV },
          { key: 'gateway-redis ×2, 3-master Cluster', def: SYSTEMS['gateway-redis'], instances: 2, cluster: true, env: SCALE_ENV },
          // The same relay with the hand-written servers: what receiving a message from Redis and
          // writing it to one socket costs without the gateway (is r the gateway's, or the floor's?).
          ...(keys.includes('ws-redis') ? [{ key: 'ws-redis ×2, relay', def: SYSTEMS['ws-redis'], instances: 2, relay: true }] : []),
        ]
      : [],
  run: (v, ctx) =>
    withSystem(v, async (sys) => {
      const chatSize = v.chatSize ?? FAN_CHAT;
      const rate = (FAN_RATE * FAN_CHAT) / chatSize;
      const { gens, owner, senders } = await fanoutSetup(sys, v, ctx, chatSize);
      // What the instances and Redis burn with every connection registered and no traffic.
      await sleep(1000);
      const i0 = sys.cpu();
      const it0 = performance.now();
      await sleep(4000);
      const i1 = sys.cpu();
      const idleS = (performance.now() - it0) / 1000;
      const l = await measure(sys, ctx, gens, owner, senders, rate, SCALE_MS, 2000);
      const mem = await sys.memory();
      await closeAll(gens);
      const cmds = Object.values(l.redisCmds).reduce((s, n) => s + n, 0);
      // A Cluster: each master's share of the chats (every chat has the same keys, so its keys
      // tell), its CPU and its commands — the model spreads Redis load by chat.
      const nodes = sys.redis?.nodes ?? [];
      const keys = v.cluster ? nodes.map((n) => Number(n.cli('DBSIZE').trim()) || 0) : [];
      const keyTotal = keys.reduce((a, b) => a + b, 0);
      const shards = v.cluster ? { share: keys.map((k) => (keyTotal > 0 ? k / keyTotal : 0)), cpu_s: l.cpu.redisPerNode } : null;
      return {
        metrics: {
          instances: sys.instances.length,
          chat_size: chatSize,
          msgs_per_s: l.phase.sent / (SCALE_MS / 1000),
          deliveries_per_s: l.phase.received / (SCALE_MS / 1000),
          delivered_pct: l.phase.expected === 0 ? null : (100 * l.phase.received) / l.phase.expected,
          servers_cpu_s: l.cpu.servers,
          idle_servers_cpu_per_s: (i1.servers - i0.servers) / idleS,
          idle_redis_cpu_per_s: (i1.redis - i0.redis) / idleS,
          /** Instance 1 alone: with `relay`, the instance that only receives (one member per chat). */
          instance1_cpu_s: l.cpu.perInstance[1] ?? null,
          idle_instance1_cpu_per_s: i1.perInstance[1] !== undefined ? (i1.perInstance[1] - (i0.perInstance[1] ?? 0)) / idleS : null,
          redis_cpu_s: l.cpu.redis,
          wall_s: l.wallS,
          sent: l.phase.sent,
          received: l.phase.received,
          redis_cmds: cmds,
          bytes_per_delivery: l.phase.bytes > 0 && l.phase.received > 0 ? l.phase.bytes / l.phase.received : null,
          p99_ms: l.phase.hist.quantile(0.99),
          rss_mib_per_instance: mem.rss / sys.instances.length / 2 ** 20,
          redis_shards: nodes.length,
          ...(shards ? { redis_max_shard_share: Math.max(...shards.share), redis_max_shard_cpu_s: Math.max(...shards.cpu_s) } : {}),
        },
        info: { redis_commands: l.redisCmds, per_instance: mem.perInstance, ...(shards ? { shards } : {}) },
      };
    }),
};

export const SCENARIOS: Scenario[] = [idle, fanout, saturation, bigchat, manyconns, manychats, recovery, scale];
