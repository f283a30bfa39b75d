/**
 * Processes of the benchmark: every server, Redis, the minimal main API and the load generators
 * run as their own OS process, pinned with `taskset` (when the machine has it) so that the
 * systems under test and the generator do not share a core. CPU comes from /proc/<pid>/stat
 * (utime + stime), RSS from /proc/<pid>/status, the V8 heap from the process itself through the
 * inspector (`--inspect=127.0.0.1:0`: a full GC, then `process.memoryUsage()`), so that servers
 * which expose nothing are measured the same way as the gateway.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { freePort } from '../../tests/support/redis.js';
import { cpus, tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** Where bench/tsconfig.json compiles the gateway, the peers and the generator to. */
const BUILD = join(ROOT, 'bench/.build');

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
/** Pinning needs `taskset` and two cores (0 and 1); otherwise nothing is pinned. */
export const HAS_TASKSET = cpus().length >= 2 && spawnSync('taskset', ['-c', '1', 'true']).status === 0;
/** Core 1 for the systems under test (servers, Redis), core 0 for generators and the main-API stand-in. */
export const SERVER_CORE = '1';
export const GENERATOR_CORE = '0';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export { freePort };

/**
 * `--nice=N` (bench/run.ts): every process of the benchmark runs at that niceness, so that
 * other work on a shared machine disturbs it less (negative values need root). Default 0.
 */
let NICE = 0;
export function setNice(n: number): void {
  NICE = n;
}

/** `[nice -n N] taskset -c core cmd args…`, or just `cmd args…` where taskset is missing. Same pid either way (both exec). */
export function pinned(core: string, cmd: string, args: string[]): [string, string[]] {
  const [c, a]: [string, string[]] = HAS_TASKSET ? ['taskset', ['-c', core, cmd, ...args]] : [cmd, args];
  return NICE !== 0 ? ['nice', ['-n', String(NICE), c, ...a]] : [c, a];
}

export class Proc {
  out = '';
  err = '';
  readonly exited: Promise<void>;
  inspectorUrl: string | null = null;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.stdout?.on('data', (d: Buffer) => {
      this.out += d.toString();
      if (this.out.length > 1_000_000) this.out = this.out.slice(-200_000);
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.err += d.toString();
      const m = /Debugger listening on (ws:\/\/\S+)/.exec(this.err);
      if (m && this.inspectorUrl === null) this.inspectorUrl = m[1]!;
      if (this.err.length > 1_000_000) this.err = this.err.slice(-200_000);
    });
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    // BENCH_LOG_DIR=<dir>: every process's output is also kept there, as <name>.<pid>.log (e.g. with BENCH_NODE_OPTIONS=--trace-gc).
    const logDir = process.env.BENCH_LOG_DIR;
    if (logDir) {
      const log = createWriteStream(join(logDir, `${name.replace(/[^\w.-]/g, '_')}.${child.pid}.log`));
      child.stdout?.pipe(log, { end: false });
      child.stderr?.pipe(log, { end: false });
      child.once('exit', () => setTimeout(() => log.end(), 100));
    }
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Waits until stdout matches `re`; returns the match. */
  async waitFor(re: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const m = re.exec(this.out);
      if (m) return m;
      if (!this.alive) break;
      await sleep(20);
    }
    throw new Error(`${this.name} did not print ${re} (alive=${this.alive}):\n${this.out.slice(-2000)}\n${this.err.slice(-2000)}`);
  }

  async stop(): Promise<void> {
    if (!this.alive) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

let built = false;

/**
 * Compiles src/ and bench/ once per run with `tsc` (bench/tsconfig.json, into bench/.build/), so
 * every process measured runs plain JavaScript like `npm run build` ships — not through tsx,
 * whose keep-names transform wraps every closure the code creates in a call (measured: ~2 % of
 * the gateway's CPU per message) and would charge the benchmark for what no deployment runs.
 */
function buildOnce(): void {
  if (built) return;
  rmSync(BUILD, { recursive: true, force: true });
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'bench/tsconfig.json')], { stdio: 'inherit' });
  if (result.status !== 0) throw new Error('bench: compiling src/ and bench/ failed (npx tsc -p bench/tsconfig.json)');
  built = true;
}

/** A Node process running a TypeScript entry of this repository, compiled (see buildOnce), pinned to `core`, optionally with the inspector on a random port. */
export function spawnNode(name: string, core: string, entry: string, env: Record<string, string>, opts: { inspect?: boolean; ipc?: boolean; nodeArgs?: string[] } = {}): Proc {
  buildOnce();
  const script = join(BUILD, relative(ROOT, entry)).replace(/\.ts$/, '.js');
  // BENCH_NODE_OPTIONS: extra Node flags for every process (given as arguments, so flags NODE_OPTIONS refuses, like --trace-gc, work).
  const extra = (process.env.BENCH_NODE_OPTIONS ?? '').split(/\s+/).filter(Boolean);
  const nodeArgs = [...(opts.inspect ? ['--inspect=127.0.0.1:0'] : []), ...extra, ...(opts.nodeArgs ?? []), script];
  const [cmd, args] = pinned(core, process.execPath, nodeArgs);
  const stdio: StdioOptions = opts.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'];
  const child = spawn(cmd, args, { cwd: ROOT, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }, stdio });
  return new Proc(name, child);
}

export async function waitInspector(p: Proc, timeoutMs = 10_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  while (p.inspectorUrl === null && Date.now() < until) await sleep(20);
  if (p.inspectorUrl === null) throw new Error(`${p.name}: no inspector URL`);
  return p.inspectorUrl;
}

export interface CpuSample {
  /** utime + stime, seconds. */
  cpu: number;
  at: number;
}

export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * Write-family system calls (`write`, `writev`, …) so far, from /proc/<pid>/io; NaN where that is
 * not readable. Exact, unlike CPU time on a shared machine: what pre-framing and write coalescing
 * change shows here first.
 */
export function writeSyscalls(pid: number): number {
  try {
    const m = /syscw:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export interface MemoryUsage {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

/** One DevTools-protocol session to a process's inspector: `call(method, params)` → its result. */
export async function inspect<T>(url: string, use: (call: (method: string, params?: object) => Promise<unknown>) => Promise<T>): Promise<T> {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 30 });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  let id = 0;
  const pending = new Map<number, (v: unknown) => void>();
  ws.on('message', (data: Buffer) => {
    const msg = JSON.parse(data.toString()) as { id?: number; result?: unknown };
    if (msg.id !== undefined) pending.get(msg.id)?.(msg.result);
  });
  const call = (method: string, params: object = {}) =>
    new Promise<unknown>((resolve, reject) => {
      const my = ++id;
      const timer = setTimeout(() => reject(new Error(`inspector ${method} timed out`)), 60_000);
      pending.set(my, (v) => (clearTimeout(timer), resolve(v)));
      ws.send(JSON.stringify({ id: my, method, params }));
    });
  try {
    return await use(call);
  } finally {
    ws.close();
  }
}

/** Full GC in the target process (twice), then its process.memoryUsage(), over the inspector protocol. */
export function gcAndMemory(url: string): Promise<MemoryUsage> {
  return inspect(url, async (call) => {
    await call('HeapProfiler.collectGarbage');
    await call('HeapProfiler.collectGarbage');
    const result = (await call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true })) as { result: { value: string } };
    return JSON.parse(result.result.value) as MemoryUsage;
  });
}

/** Event-loop delay of a process since the previous call, ms (the 5 ms sampling interval not counted). */
export interface LoopDelay {
  p99: number;
  max: number;
}

/**
 * The process's event-loop delay since the previous call (a histogram it keeps from the first
 * call on, sampled every 5 ms), then reset. Through the inspector, so it works alike for the
 * gateway and every peer without code of theirs; the first call only starts the histogram.
 */
export function loopDelay(url: string): Promise<LoopDelay> {
  return inspect(url, async (call) => {
    const expression = `(() => {
      const h = (globalThis.__benchLoopDelay ??= (() => {
        const m = process.getBuiltinModule('node:perf_hooks').monitorEventLoopDelay({ resolution: 5 });
        m.enable();
        return m;
      })());
      const r = JSON.stringify({ p99: h.count > 0 ? h.percentile(99) : 0, max: h.count > 0 ? h.max : 0 });
      h.reset();
      return r;
    })()`;
    const result = (await call('Runtime.evaluate', { expression, returnByValue: true })) as { result: { value: string } };
    const ns = JSON.parse(result.result.value) as LoopDelay;
    const ms = (v: number) => Math.max(0, v / 1e6 - 5);
    return { p99: ms(ns.p99), max: ms(ns.max) };
  });
}

/** A private redis-server, pinned beside the servers under test. */
export class Redis {
  private constructor(
    readonly proc: Proc,
    readonly port: number,
    private readonly dir: string,
  ) {}

  static async start(core = SERVER_CORE, extraArgs: string[] = []): Promise<Redis> {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
    const [cmd, args] = pinned(core, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--maxclients', '1000', ...extraArgs]);
    const proc = new Proc('redis', spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    await proc.waitFor(/Ready to accept connections/, 10_000);
    return new Redis(proc, port, dir);
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get pids(): number[] {
    return [this.proc.pid];
  }

  get nodes(): Redis[] {
    return [this];
  }

  cli(...args: string[]): string {
    return spawnSync('redis-cli', ['-p', String(this.port), ...args], { encoding: 'utf8' }).stdout;
  }

  /**
   * INFO commandstats as {command: calls}, without the benchmark's own INFO calls. Commands run
   * inside a Lua script are counted too (an EVALSHA and each command it runs).
   */
  commandStats(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const line of this.cli('INFO', 'commandstats').split('\n')) {
      const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim());
      if (m && m[1] !== 'info') out[m[1]!] = Number(m[2]);
    }
    return out;
  }

  usedMemory(): number {
    const m = /used_memory:(\d+)/.exec(this.cli('INFO', 'memory'));
    return m ? Number(m[1]) : 0;
  }

  async close(): Promise<void> {
    await this.proc.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** What the benchmark needs of a Redis: one server, or a Cluster of several masters. */
export type RedisDeployment = Redis | RedisCluster;

/** A Redis Cluster of `n` masters (no replicas), every node pinned beside the servers under test. */
export class RedisCluster {
  private constructor(readonly nodes: Redis[]) {}

  static async start(n = 3, core = SERVER_CORE): Promise<RedisCluster> {
    const nodes: Redis[] = [];
    try {
      for (let i = 0; i < n; i++) nodes.push(await Redis.start(core, ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '5000']));
      const created = spawnSync('redis-cli', ['--cluster', 'create', ...nodes.map((x) => `127.0.0.1:${x.port}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8' });
      if (created.status !== 0) throw new Error(`redis-cli --cluster create: ${created.stderr || created.stdout}`);
      for (let k = 0; k < 300 && !nodes.every((x) => x.cli('CLUSTER', 'INFO').includes('cluster_state:ok')); k++) await sleep(50);
      return new RedisCluster(nodes);
    } catch (err) {
      for (const x of nodes) await x.close();
      throw err;
    }
  }

  /** The seeds, as REDIS_HOST takes them with REDIS_CLUSTER=true. */
  get url(): string {
    return this.nodes.map((x) => x.url).join(',');
  }

  get pids(): number[] {
    return this.nodes.map((x) => x.proc.pid);
  }

  /** Summed over the masters. */
  commandStats(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const x of this.nodes) for (const [k, v] of Object.entries(x.commandStats())) out[k] = (out[k] ?? 0) + v;
    return out;
  }

  usedMemory(): number {
    return this.nodes.reduce((sum, x) => sum + x.usedMemory(), 0);
  }

  async close(): Promise<void> {
    for (const x of this.nodes) await x.close();
  }
}

export function diffCounts(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (d > 0) out[k] = d;
  }
  return out;
}

/** Busy (non-idle, non-iowait) jiffies per core, from /proc/stat: what every process on the machine used. */
export function coreTicks(): Array<{ busy: number; total: number }> {
  try {
    return readFileSync('/proc/stat', 'utf8')
      .split('\n')
      .filter((l) => /^cpu\d+ /.test(l))
      .map((l) => {
        const v = l.trim().split(/\s+/).slice(1).map(Number);
        const total = v.reduce((s, x) => s + x, 0);
        return { busy: total - (v[3] ?? 0) - (v[4] ?? 0), total };
      });
  } catch {
    return [];
  }
}

/** Percent busy of `core` between two coreTicks() samples (every process, ours and other tenants'). */
export function coreBusyPct(before: Array<{ busy: number; total: number }>, after: Array<{ busy: number; total: number }>, core: string): number | null {
  const i = Number(core);
  const a = after[i];
  const b = before[i];
  if (!a || !b || a.total === b.total) return null;
  return (100 * (a.busy - b.busy)) / (a.total - b.total);
}

export function loadAverage(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  } catch {
    return '?';
  }
}
