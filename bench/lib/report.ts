/**
 * Summaries (min and median of the repeats), ratios to the hand-written `ws` floor measured in
 * the same run, the tables (console and Markdown), and the capacity model's fit and check.
 */
import type { Cell, Metrics } from '../scenarios.js';

export interface CellResult {
  ok: boolean;
  error?: string;
  cell?: Cell;
  load_before: string;
  load_after: string;
  seconds: number;
}

export type Results = Record<string, Record<string, CellResult[]>>;

export interface Summary {
  min: number | null;
  median: number | null;
  n: number;
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function summarize(cells: CellResult[], metric: string): Summary {
  const xs = cells.flatMap((c) => {
    const v = c.cell?.metrics[metric];
    return typeof v === 'number' && Number.isFinite(v) ? [v] : [];
  });
  return { min: xs.length ? Math.min(...xs) : null, median: median(xs), n: xs.length };
}

/** The floor a metric is compared with: the hand-written ws server; for Redis figures, hand-written ws over Redis. */
export function floorOf(metric: string): string {
  return metric.startsWith('redis_') ? 'ws-redis' : 'ws';
}

type Column = [metric: string, label: string, digits: number];

export const COLUMNS: Record<string, Column[]> = {
  idle: [
    ['connect_s', 'connect s', 2],
    ['rss_kib_per_conn', 'RSS KiB/conn', 1],
    ['heap_kib_per_conn', 'heap KiB/conn', 1],
  ],
  fanout: [
    ['deliveries_per_s', 'deliveries/s', 0],
    ['delivered_pct', 'delivered %', 1],
    ['cpu_ms_per_1k', 'server CPU ms / 1k deliveries', 2],
    ['writes_per_1k', 'write syscalls / 1k deliveries', 1],
    ['p50_ms', 'p50 ms', 2],
    ['p99_ms', 'p99 ms', 2],
    ['redis_cpu_ms_per_1k', 'Redis CPU ms / 1k', 2],
    ['redis_cmds_per_msg', 'Redis cmds / msg', 1],
    ['api_cpu_ms_per_1k', 'main-API CPU ms / 1k', 2],
    ['bytes_per_delivery', 'bytes / delivery', 0],
    ['gen_cpu_pct', 'generator CPU %', 0],
    ['gen_loop_p99_ms', 'generator loop delay p99 ms', 1],
  ],
  saturation: [
    ['max_deliveries_per_s', 'max deliveries/s', 0],
    ['max_msgs_per_s', 'messages/s', 0],
    ['p99_at_max_ms', 'p99 ms at max', 1],
    ['cpu_ms_per_1k_at_max', 'server CPU ms / 1k at max', 2],
    ['server_core_pct_at_max', 'server core % at max (of the sending time)', 0],
    ['server_core_busy_pct_at_max', 'server core % incl. other tenants', 0],
    ['generator_core_pct_at_max', 'generator core % at max', 0],
  ],
  bigchat: [
    ['join_s', 'join s', 1],
    ['join_cpu_s', 'join server CPU s', 1],
    ['join_redis_cpu_s', 'join Redis CPU s', 2],
    ['join_redis_cmds', 'join Redis cmds', 0],
    ['deliveries_per_s', 'deliveries/s', 0],
    ['delivered_pct', 'delivered %', 1],
    ['cpu_ms_per_1k', 'server CPU ms / 1k', 2],
    ['p50_ms', 'p50 ms', 1],
    ['p99_ms', 'p99 ms', 1],
    ['redis_cpu_ms_per_1k', 'Redis CPU ms / 1k', 2],
  ],
  manyconns: [
    ['connect_s', 'connect s', 1],
    ['conns_per_s', 'connections/s', 0],
    ['rss_kib_per_conn', 'RSS KiB/conn', 1],
    ['heap_kib_per_conn', 'heap KiB/conn', 1],
    ['rss_mib', 'RSS MiB', 0],
    ['projected_100k_mib', '100k conns MiB', 0],
  ],
  manychats: [
    ['register_s', 'register s', 2],
    ['chats_per_s', 'chats/s', 0],
    ['server_cpu_ms_per_chat', 'server CPU ms / chat', 3],
    ['redis_cmds_per_chat', 'Redis cmds / chat', 1],
    ['redis_cpu_ms', 'Redis CPU ms', 0],
    ['redis_kib_per_chat', 'Redis KiB / chat', 2],
    ['idle_redis_cmds_per_chat_min', 'idle: Redis cmds / chat / min', 2],
    ['idle_redis_cpu_us_per_chat_min', 'idle: Redis CPU µs / chat / min', 1],
    ['idle_server_cpu_us_per_chat_min', 'idle: server CPU µs / chat / min', 1],
  ],
  recovery: [
    ['reconnect_s', 'plain reconnect s', 2],
    ['recover_s', 'reconnect + replay s', 2],
    ['recovered_pct', 'recovered %', 0],
    ['replayed_per_conn', 'replayed / conn', 0],
    ['reconnect_cpu_ms_per_conn', 'plain: server CPU ms / conn', 2],
    ['recover_cpu_ms_per_conn', 'replay: server CPU ms / conn', 2],
    ['cpu_us_per_replayed', 'server CPU µs / replayed frame', 1],
    ['reconnect_writes_per_conn', 'plain: write syscalls / conn', 1],
    ['recover_writes_per_conn', 'replay: write syscalls / conn', 1],
    ['redis_cpu_ms_per_conn', 'replay: Redis CPU ms / conn', 2],
    ['redis_cmds_per_conn', 'replay: Redis cmds / conn', 1],
  ],
  scale: [
    ['instances', 'instances', 0],
    ['msgs_per_s', 'messages/s', 0],
    ['deliveries_per_s', 'deliveries/s', 0],
    ['delivered_pct', 'delivered %', 1],
    ['servers_cpu_s', 'gateways CPU s', 2],
    ['idle_servers_cpu_per_s', 'idle gateways CPU s/s', 3],
    ['redis_cpu_s', 'Redis CPU s', 2],
    ['redis_cmds', 'Redis cmds', 0],
    ['p99_ms', 'p99 ms', 1],
    ['rss_mib_per_instance', 'RSS MiB / instance', 0],
  ],
};

const fmt = (v: number | null, digits: number) => (v === null ? '—' : v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }).replace(/,/g, ' '));

/** "min / median ×ratio" (ratio of medians to the floor's; no ratio when there is no floor in this scenario). */
export function cellText(results: Results, scenario: string, variant: string, [metric, , digits]: Column, withRatio: boolean): string {
  const cells = results[scenario]?.[variant] ?? [];
  const s = summarize(cells, metric);
  if (s.n === 0) return cells.some((c) => !c.ok) ? 'failed' : '—';
  const value = s.n === 1 ? fmt(s.median, digits) : `${fmt(s.min, digits)} / ${fmt(s.median, digits)}`;
  if (!withRatio) return value;
  const floor = summarize(results[scenario]?.[floorOf(metric)] ?? [], metric).median;
  if (floor === null || floor === 0 || s.median === null) return value;
  return `${value} ×${(s.median / floor).toFixed(2)}`;
}

export function table(results: Results, scenario: string, labels: Record<string, string>): string[][] {
  const cols = COLUMNS[scenario] ?? [];
  const rows: string[][] = [['system', ...cols.map((c) => c[1])]];
  if (scenario === 'saturation') rows[0]!.push('limit');
  for (const variant of Object.keys(results[scenario] ?? {})) {
    const row = [labels[`${scenario}/${variant}`] ?? variant, ...cols.map((c) => cellText(results, scenario, variant, c, scenario !== 'scale'))];
    if (scenario === 'saturation') {
      row.push(
        [...new Set(results[scenario]![variant]!.map((c) => (c.ok ? String(c.cell?.info.limit ?? '?') : 'failed')))].join('; '),
      );
    }
    rows.push(row);
  }
  return rows;
}

export function markdown(rows: string[][]): string {
  const [head, ...body] = rows;
  return [`| ${head!.join(' | ')} |`, `|${head!.map(() => '---').join('|')}|`, ...body.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export function console2(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
}

// --- capacity model -------------------------------------------------------------------------

const med = (results: Results, scenario: string, variant: string, metric: string) => summarize(results[scenario]?.[variant] ?? [], metric).median;

export interface ModelCheck {
  params: Record<string, number>;
  rows: Array<{ instances: number; chat_size: number; measured: Metrics; predicted: Metrics; fitted_on: boolean; relay: boolean; cluster?: boolean }>;
}

/**
 * The capacity model, checked against the `scale` rows (docs/capacity.md explains it).
 *
 * Gateway CPU over a window of T seconds = i·N·T + p·M + r·(k−1)·M + d·D, with M messages, D
 * deliveries, N instances, k instances a chat spans (with round-robin placement every chat
 * spans every instance): i is what an idle instance with its connections burns per second
 * (measured in each cell), p the cost of a message at its origin instance and d of one delivery
 * — both fitted on the two single-instance rows (chats of 50 and of 10) — and r what one more
 * instance in the chat spends to receive the message from Redis, measured directly on the
 * "relay" row: instance 1 holds one member of each chat and sends nothing, so its own CPU is
 * i·T + r·M + d·M.
 * Redis CPU = B + a·M + b·(k−1)·M and Redis commands = C + c·M + e·(k−1)·M: a, c and the
 * background B, C of a window (presence refresh, sweeps) from the two single-instance rows
 * (same window, different M), b and e from the relay row.
 * Memory per instance = base + conns/N × RSS/conn, both from the idle scenario.
 * The round-robin two- and three-instance rows are out-of-sample checks.
 */
export function modelCheck(results: Results): ModelCheck | null {
  const s = 'scale';
  const rowsKeys = ['gateway-redis ×1, chats of 10', 'gateway-redis ×1', 'gateway-redis ×2, relay', 'gateway-redis ×2', 'gateway-redis ×3'];
  const get = (v: string, m: string) => med(results, s, v, m);
  if (!rowsKeys.every((k) => get(k, 'servers_cpu_s') !== null && get(k, 'instance1_cpu_s') !== undefined)) return null;
  const [c10, n1, relay] = rowsKeys as [string, string, string, string, string];
  if (get(relay, 'instance1_cpu_s') === null) return null;
  const M = (v: string) => get(v, 'sent')!;
  const D = (v: string) => get(v, 'received')!;
  const N = (v: string) => get(v, 'instances')!;
  const T = (v: string) => get(v, 'wall_s')!;
  // Load-driven CPU: measured minus the idle burn of the same cell.
  const cpu = (v: string) => get(v, 'servers_cpu_s')! - get(v, 'idle_servers_cpu_per_s')! * T(v);
  const det = M(n1) * D(c10) - M(c10) * D(n1);
  const p = (cpu(n1) * D(c10) - cpu(c10) * D(n1)) / det;
  const d = (M(n1) * cpu(c10) - M(c10) * cpu(n1)) / det;
  const relayCpu = get(relay, 'instance1_cpu_s')! - get(relay, 'idle_instance1_cpu_per_s')! * T(relay);
  const r = (relayCpu - d * M(relay)) / M(relay);
  // Redis: per message and per window from the two single-instance rows, per extra instance from the relay row.
  const line = (metric: string) => {
    const per = (get(c10, metric)! - get(n1, metric)!) / (M(c10) - M(n1));
    const background = get(n1, metric)! - per * M(n1);
    const extra = (get(relay, metric)! - background - per * M(relay)) / M(relay);
    return { per, background, extra };
  };
  const rc = line('redis_cpu_s');
  const cm = line('redis_cmds');
  const idleRss = med(results, 'idle', 'gateway-redis', 'rss_kib_per_conn');
  const idleBase = med(results, 'idle', 'gateway-redis', 'base_rss_mib');
  const params: Record<string, number> = {
    p_ms_per_msg: 1000 * p,
    d_ms_per_delivery: 1000 * d,
    r_ms_per_msg_per_extra_instance: 1000 * r,
    i_idle_cpu_per_instance: get(n1, 'idle_servers_cpu_per_s')!,
    redis_a_ms_per_msg: 1000 * rc.per,
    redis_b_ms_per_msg_per_extra_instance: 1000 * rc.extra,
    redis_background_cpu_s_per_window: rc.background,
    redis_cmds_per_msg: cm.per,
    redis_cmds_per_msg_per_extra_instance: cm.extra,
    redis_background_cmds_per_window: cm.background,
  };
  if (idleRss !== null) params.rss_kib_per_conn = idleRss;
  if (idleBase !== null) params.base_rss_mib = idleBase / 2; // the idle cell ran two instances
  // The 3-master Cluster row (runs since it was added): the same model, Redis's load spread by
  // chat, so the busiest master carries its share of the chats' keys of the whole.
  const clusterKey = 'gateway-redis ×2, 3-master Cluster';
  const checked = get(clusterKey, 'servers_cpu_s') !== null ? [...rowsKeys, clusterKey] : rowsKeys;
  const rows = checked.map((v) => {
    const k = N(v);
    const m = M(v);
    const redisCpu = rc.background + (rc.per + rc.extra * (k - 1)) * m;
    const share = get(v, 'redis_max_shard_share');
    const predicted: Metrics = {
      servers_cpu_s: get(v, 'idle_servers_cpu_per_s')! * T(v) + p * m + r * (k - 1) * m + d * D(v),
      redis_cpu_s: redisCpu,
      redis_cmds: cm.background + (cm.per + cm.extra * (k - 1)) * m,
      rss_mib_per_instance: idleRss !== null && idleBase !== null ? idleBase / 2 + (1000 / k) * (idleRss / 1024) : null,
      redis_max_shard_cpu_s: share === null ? null : share * redisCpu,
    };
    const measured: Metrics = {
      servers_cpu_s: get(v, 'servers_cpu_s'),
      redis_cpu_s: get(v, 'redis_cpu_s'),
      redis_cmds: get(v, 'redis_cmds'),
      rss_mib_per_instance: get(v, 'rss_mib_per_instance'),
      redis_max_shard_cpu_s: get(v, 'redis_max_shard_cpu_s'),
    };
    return { instances: k, chat_size: get(v, 'chat_size')!, measured, predicted, fitted_on: v === c10 || v === n1 || v === relay, relay: v === relay, cluster: v === clusterKey };
  });
  return { params, rows };
}

export function modelTable(check: ModelCheck): string[][] {
  const rows: string[][] = [['instances', 'chat size', 'gateways CPU s: predicted / measured', 'Redis CPU s', 'busiest Redis shard CPU s', 'Redis cmds', 'RSS MiB / instance', 'role']];
  const pm = (x: Metrics, y: Metrics, k: string, digits: number) => `${fmt(x[k] ?? null, digits)} / ${fmt(y[k] ?? null, digits)}`;
  for (const r of check.rows) {
    rows.push([
      `${r.instances}${r.relay ? ' (relay)' : r.cluster ? ', 3-master Cluster' : ''}`,
      String(r.chat_size),
      pm(r.predicted, r.measured, 'servers_cpu_s', 2),
      pm(r.predicted, r.measured, 'redis_cpu_s', 2),
      r.cluster ? pm(r.predicted, r.measured, 'redis_max_shard_cpu_s', 2) : '—',
      pm(r.predicted, r.measured, 'redis_cmds', 0),
      pm(r.predicted, r.measured, 'rss_mib_per_instance', 0),
      r.fitted_on ? 'fit (CPU, Redis)' : 'check',
    ]);
  }
  return rows;
}

// --- capacity plan ----------------------------------------------------------------------------

export interface CapacityPlan {
  inputs: Record<string, number>;
  outputs: Record<string, number>;
}

/**
 * 1,000,000 connected users, each in one chat of 50, each sending 1 message a minute, on the
 * gateway's Redis engine (docs/capacity.md explains every line). Placement is random (a load
 * balancer without affinity), so a chat spans k(N) = N·(1 − (1 − 1/N)^S) instances.
 */
export function capacityPlan(results: Results, check: ModelCheck, opts = { users: 1_000_000, chatSize: 50, perUserPerMin: 1, connsPerInstance: 19_000, cpuTarget: 0.5, redisTarget: 0.5 }): CapacityPlan | null {
  const P = check.params;
  const bytes = med(results, 'fanout', 'gateway-redis', 'bytes_per_delivery') ?? med(results, 'fanout', 'gateway', 'bytes_per_delivery');
  const rssConn = P.rss_kib_per_conn;
  const base = P.base_rss_mib;
  const refreshCpu = med(results, 'manychats', 'gateway-redis', 'idle_redis_cpu_us_per_chat_min');
  const refreshCmds = med(results, 'manychats', 'gateway-redis', 'idle_redis_cmds_per_chat_min');
  const refreshGw = med(results, 'manychats', 'gateway-redis', 'idle_server_cpu_us_per_chat_min');
  const regRedisCpu = med(results, 'manychats', 'gateway-redis', 'redis_cpu_ms');
  if (bytes === null || rssConn === undefined || base === undefined || refreshCpu === null || refreshCmds === null || refreshGw === null || regRedisCpu === null) return null;
  const U = opts.users;
  const S = opts.chatSize;
  const M = (U * opts.perUserPerMin) / 60;
  const D = M * (S - 1);
  const R = U; // registrations: one chat per user
  const p = P.p_ms_per_msg! / 1000;
  const d = P.d_ms_per_delivery! / 1000;
  const r = P.r_ms_per_msg_per_extra_instance! / 1000;
  const k = (n: number) => n * (1 - (1 - 1 / n) ** S);
  const cpuPerInstance = (n: number) => (M * p + M * (k(n) - 1) * r + D * d + (R * refreshGw) / 60 / 1e6) / n;
  const nFd = Math.ceil(U / opts.connsPerInstance);
  let n = nFd;
  while (cpuPerInstance(n) > opts.cpuTarget && n < 100_000) n++;
  const kN = k(n);
  // The same with chats placed on one instance each (k = 1): what affinity routing would buy.
  const cpuAffinity = (m: number) => (M * p + D * d + (R * refreshGw) / 60 / 1e6) / m;
  let nAffinity = nFd;
  while (cpuAffinity(nAffinity) > opts.cpuTarget && nAffinity < 100_000) nAffinity++;
  const redisCpu = M * (P.redis_a_ms_per_msg! / 1000 + (P.redis_b_ms_per_msg_per_extra_instance! / 1000) * (kN - 1)) + (R * refreshCpu) / 60 / 1e6;
  const shards = Math.max(1, Math.ceil(redisCpu / opts.redisTarget));
  const historyBytes = (U / S) * 100 * (bytes + 64); // HISTORY_SIZE entries per chat, ~64 B stream overhead each
  const presenceBytes = R * (med(results, 'manychats', 'gateway-redis', 'redis_kib_per_chat') ?? 0) * 1024;
  const wire = 4 + 66; // WebSocket header + Ethernet/IP/TCP headers, one segment per frame
  return {
    inputs: { users: U, chat_size: S, msgs_per_user_per_min: opts.perUserPerMin, conns_per_instance_cap: opts.connsPerInstance, cpu_target: opts.cpuTarget, redis_target: opts.redisTarget, p_ms: P.p_ms_per_msg!, d_ms: P.d_ms_per_delivery!, r_ms: P.r_ms_per_msg_per_extra_instance!, rss_kib_per_conn: rssConn, base_rss_mib: base, bytes_per_delivery: bytes, refresh_redis_cpu_us_per_chat_min: refreshCpu, refresh_redis_cmds_per_chat_min: refreshCmds, refresh_gateway_cpu_us_per_chat_min: refreshGw, redis_a_ms: P.redis_a_ms_per_msg!, redis_b_ms: P.redis_b_ms_per_msg_per_extra_instance!, redis_cmds_per_msg: P.redis_cmds_per_msg! },
    outputs: {
      msgs_per_s: M,
      deliveries_per_s: D,
      instances_for_fds: nFd,
      instances: n,
      chat_spans_instances: kN,
      cpu_per_instance: cpuPerInstance(n),
      cores_total: cpuPerInstance(n) * n,
      conns_per_instance: U / n,
      rss_mib_per_instance: base + ((U / n) * rssConn) / 1024,
      rss_gib_total: (n * base + (U * rssConn) / 1024) / 1024,
      redis_cpu_cores: redisCpu,
      redis_shards: shards,
      redis_cmds_per_s: M * P.redis_cmds_per_msg! + (R * refreshCmds) / 60,
      redis_pubsub_deliveries_per_s: M * kN,
      redis_memory_gib: (historyBytes + presenceBytes) / 2 ** 30,
      client_egress_gbit: (D * (bytes + wire) * 8) / 1e9,
      client_ingress_gbit: (M * (bytes + 8 + wire) * 8) / 1e9,
      redis_egress_gbit: (M * kN * (bytes + 80) * 8) / 1e9,
      main_api_saves_per_s: M,
      cores_cross_instance_receive: M * (kN - 1) * r,
      cores_deliveries: D * d,
      cores_origin: M * p,
      cores_presence_refresh: (R * refreshGw) / 60 / 1e6,
      instances_with_chat_affinity: nAffinity,
      redis_cpu_cores_with_chat_affinity: M * (P.redis_a_ms_per_msg! / 1000) + (R * refreshCpu) / 60 / 1e6,
    },
  };
}
