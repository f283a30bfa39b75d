/**
 * What the fault tests (tests/sdk/faults.test.ts) and the soak (scripts/soak.ts) share: a
 * backend of real processes that faults can be done to, an app on the SDK that keeps a chat
 * history the way a real one would (live events, plus the main API's history for a `gap`), and
 * the audit of what every app saw against what was sent.
 *
 * No node:test import here: the soak is a plain script.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { WebSocket } from 'ws';
import { startDevApi, type DevApi } from '../../dev-api/app.js';
import { ClientError, createClient, type Ack, type Client, type ChatId, type ClientOptions, type GapEvent } from '../../packages/client/src/index.js';
import { GatewayProcess } from '../support/process.js';
import { RedisServer } from '../support/redis.js';
import { RelayProxy } from './proxy.js';

const run = promisify(execFile);
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** True if `p` settles within `timeoutMs` (rejects if it rejects), false otherwise; leaves no timer behind. */
export async function within(p: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

// --- the backend -------------------------------------------------------------------------------

export type EngineKind = 'memory' | 'redis' | 'cluster';

/** One gateway slot: a stable address (the proxy, as a load balancer backend) and the process behind it. */
export interface Slot {
  proxy: RelayProxy;
  gateway: GatewayProcess | null;
}

export interface BackendOptions {
  engine: EngineKind;
  /** Gateway processes (memory: 1). */
  instances: number;
  /** Extra gateway environment (e.g. RATE_LIMIT_BURST). */
  env?: Record<string, string>;
}

/**
 * The dev main API (in this process, so its stored messages are the "history" an app fetches),
 * Redis (none, one redis-server, or a 3-master Cluster), and gateway processes, each behind a
 * relay proxy. Everything a fault needs: cut links, SIGKILL and restart an instance, restart
 * Redis, make the main API answer 5xx.
 */
export class Backend {
  api!: DevApi;
  redis: RedisServer | null = null;
  readonly nodes: RedisServer[] = [];
  readonly slots: Slot[] = [];
  /** When instances were SIGKILLed (ms since epoch). */
  readonly kills: number[] = [];
  /** Gateway processes ever started, for their output after a failure. */
  readonly processes: GatewayProcess[] = [];

  private constructor(readonly options: BackendOptions) {}

  static async start(options: BackendOptions): Promise<Backend> {
    const b = new Backend(options);
    try {
      await b.init();
    } catch (err) {
      await b.close();
      throw err;
    }
    return b;
  }

  private async init(): Promise<void> {
    this.api = await startDevApi({ port: 0 });
    if (this.options.engine === 'redis') this.redis = await RedisServer.start();
    if (this.options.engine === 'cluster') await this.startCluster();
    const gateways = await Promise.all(Array.from({ length: this.options.instances }, () => this.spawn()));
    for (const gateway of gateways) this.slots.push({ proxy: await RelayProxy.start(gateway.wsUrl), gateway });
  }

  private async startCluster(): Promise<void> {
    for (let i = 0; i < 3; i++) {
      this.nodes.push(await RedisServer.start(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000']));
    }
    await run('redis-cli', ['--cluster', 'create', ...this.nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    await this.clusterOk();
  }

  async clusterOk(timeoutMs = 20_000): Promise<void> {
    const info = (port: number) => run('redis-cli', ['-p', String(port), 'cluster', 'info']).then((r) => r.stdout, () => '');
    await until(async () => (await Promise.all(this.nodes.map((n) => info(n.port)))).every((t) => t.includes('cluster_state:ok')), timeoutMs, 'cluster_state:ok');
  }

  /** The index in `nodes` of the Cluster master that serves `chat` (its keys are tagged `{chat}`). */
  async nodeOf(chat: ChatId): Promise<number> {
    const cli = async (...args: string[]) => (await run('redis-cli', ['-p', String(this.nodes[0]!.port), ...args])).stdout.trim();
    const slot = Number(await cli('cluster', 'keyslot', `{${String(chat)}}`));
    for (const line of (await cli('cluster', 'nodes')).split('\n')) {
      const fields = line.split(' ');
      if (!fields[2]?.includes('master')) continue;
      const port = Number(fields[1]!.split('@')[0]!.split(':')[1]);
      for (const range of fields.slice(8)) {
        const [start, end = start] = range.split('-').map(Number);
        if (slot >= start! && slot <= end!) return this.nodes.findIndex((n) => n.port === port);
      }
    }
    throw new Error(`no master serves slot ${slot}`);
  }

  private env(): Record<string, string> {
    const redis: Record<string, string> =
      this.options.engine === 'redis' ? { REDIS_HOST: this.redis!.url }
      : this.options.engine === 'cluster' ? { REDIS_HOST: this.nodes.map((n) => n.url).join(','), REDIS_CLUSTER: 'true' }
      : {};
    return { APP_PORT: '0', AUTH_HOST: this.api.url, LOG_LEVEL: 'info', PRESENCE_TTL_MS: '3000', ...redis, ...this.options.env };
  }

  /** A new gateway process, listening and ready (/readyz 200). */
  private async spawn(): Promise<GatewayProcess> {
    const gateway = GatewayProcess.spawn(this.env());
    this.processes.push(gateway);
    await gateway.listening(30_000);
    await until(async () => (await fetch(`${gateway.httpUrl}/readyz`).catch(() => null))?.status === 200, 20_000, 'gateway ready');
    return gateway;
  }

  /** The proxies' URLs: the list an SDK client gets, rotated so clients spread over the instances. */
  urls(start = 0): string[] {
    const all = this.slots.map((s) => s.proxy.url);
    return all.map((_, i) => all[(start + i) % all.length]!);
  }

  /** Drops every client link of slot `i` (or of all slots) without a close frame: clients see 1006. */
  cut(i?: number): void {
    for (const [j, slot] of this.slots.entries()) if (i === undefined || i === j) slot.proxy.cut();
  }

  /** SIGKILLs the instance of slot `i`; its clients' links die with it. */
  async kill(i: number): Promise<void> {
    const slot = this.slots[i]!;
    const gateway = slot.gateway;
    if (gateway === null) return;
    slot.gateway = null;
    this.kills.push(Date.now());
    await gateway.stop();
  }

  /** Starts a new instance behind slot `i` (a new process on a new port: the proxy is re-pointed). */
  async restart(i: number): Promise<void> {
    const slot = this.slots[i]!;
    if (slot.gateway !== null) await this.kill(i);
    const gateway = await this.spawn();
    slot.gateway = gateway;
    slot.proxy.target = gateway.wsUrl;
  }

  /** Stops redis-server (SIGKILL: its data is gone) and starts it again on the same port after `downMs`. */
  async restartRedis(downMs: number, node = 0): Promise<void> {
    const server = this.options.engine === 'redis' ? this.redis : this.nodes[node];
    if (!server) throw new Error('no redis to restart');
    await server.stop();
    await sleep(downMs);
    await server.startProcess();
    if (this.options.engine === 'cluster') await this.clusterOk();
  }

  /** The next `times` saves answer 503. */
  apiOutage(times: number): void {
    this.api.addFault({ op: 'save', status: 503, times });
  }

  /** Each live gateway's output (for a failure report). */
  logs(): string {
    return this.processes.map((g, i) => `--- gateway ${i} ---\n${g.output.slice(-4000)}`).join('\n');
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.slots.map((s) => s.proxy.close()));
    await Promise.allSettled(this.processes.map((g) => g.stop()));
    await this.api?.close();
    await this.redis?.close();
    for (const n of this.nodes) await n.close();
  }
}

// --- the app -----------------------------------------------------------------------------------

export interface SentRecord {
  chat: string;
  at: number;
  /** 'acked' (new or duplicate), or the rejection's code. */
  outcome?: string;
  ack?: Ack;
}

interface LiveMessage {
  id: string;
  seq?: number | undefined;
  epoch?: string | undefined;
}

export const content = (text: string) => ({ ciphertext: Buffer.from(text).toString('base64'), nonce: 'bm9uY2U', envelopes: {} });

/**
 * One user's app on the SDK: sends to its chats, keeps each chat's history as an app would —
 * the SDK's `message` events, and for a `gap` the main API's stored messages (the dev API is in
 * this process: its `messages` map is the fetch) — and records everything the audit checks.
 */
export class ChatApp {
  readonly client: Client;
  readonly sent = new Map<string, SentRecord>();
  /** Per chat, the messages the SDK delivered, in order. */
  readonly live = new Map<string, LiveMessage[]>();
  readonly liveIds = new Set<string>();
  /** Ids taken from the main API's history after a gap (and not delivered live before). */
  readonly filled = new Set<string>();
  readonly duplicates: string[] = [];
  /** Own messages the SDK showed to their sender. */
  readonly echoes: string[] = [];
  /** The SDK's gaps, with when they came (ms since epoch). */
  readonly gaps: Array<GapEvent & { at: number }> = [];
  /** Sends not settled yet. */
  pendingSends = 0;
  /** Gap fills (fetches from the main API) started. */
  readonly fills: Array<Promise<void>> = [];
  /** Connections the SDK opened (1 + reconnects). */
  connects = 0;
  readonly startedAt = Date.now();
  private readonly promises: Array<Promise<unknown>> = [];
  private sending = false;
  private loops: Array<Promise<void>> = [];
  private counter = 0;

  constructor(
    readonly user: number,
    readonly chats: ChatId[],
    private readonly token: string,
    url: ClientOptions['url'],
    private readonly api: DevApi,
    options: Partial<ClientOptions> = {},
  ) {
    this.client = createClient({ url, token, WebSocket, reconnect: { minDelayMs: 50, maxDelayMs: 500 }, ...options });
    this.client.on('message', (e) => {
      const id = e.message.id;
      if (this.sent.has(id)) this.echoes.push(id);
      if (this.liveIds.has(id)) return void this.duplicates.push(id);
      this.liveIds.add(id);
      const list = this.live.get(String(e.chatId)) ?? [];
      list.push({ id, seq: e.seq, epoch: e.epoch });
      this.live.set(String(e.chatId), list);
    });
    this.client.on('state', (e) => void (e.state === 'connected' && this.connects++));
    this.client.on('gap', (e) => {
      // What an app does with a gap: fetch the chat's history from the main API.
      this.gaps.push({ ...e, at: Date.now() });
      this.fills.push(this.fill(String(e.chatId)));
    });
    for (const chat of chats) this.client.chat(chat);
  }

  /**
   * Fetches a chat's messages from the main API as an app would (over HTTP, with its token):
   * newest first, a page of up to 1000 at a time, paging back with `before` until a page holds a
   * message the app already had (the gap lies after it) or the history ends. A failed fetch is
   * tried again (at most 50 times, 200 ms apart).
   */
  private async fill(chat: string): Promise<void> {
    let before: string | undefined;
    for (let failures = 0; failures < 50; ) {
      const query = before === undefined ? '' : `&before=${encodeURIComponent(before)}`;
      let page: { messages: Array<{ id: string }>; more: boolean };
      try {
        const res = await fetch(`${this.api.url}/chats/${encodeURIComponent(chat)}/messages?limit=1000${query}`, { headers: { authorization: `Bearer ${this.token}` }, signal: AbortSignal.timeout(10_000) });
        if (res.status === 404 && before !== undefined) {
          before = undefined; // the page's first message was deleted since: start again from the newest
          continue;
        }
        if (!res.ok) throw new Error(`status ${res.status}`);
        page = (await res.json()) as typeof page;
      } catch {
        failures++;
        await sleep(200);
        continue;
      }
      let reached = false;
      for (const m of page.messages) {
        if (this.liveIds.has(m.id)) reached = true;
        else if (!this.sent.has(m.id)) this.filled.add(m.id);
      }
      if (reached || !page.more || page.messages.length === 0) return;
      before = page.messages[0]!.id;
    }
  }

  async ready(timeoutMs = 20_000): Promise<void> {
    const done = await within(Promise.all(this.chats.map((c) => this.client.chat(c).ready())), timeoutMs);
    if (!done) throw new Error(`user ${this.user}: chats not registered within ${timeoutMs} ms`);
  }

  /** Sends one message to `chat` now (not waiting for its ack). */
  send(chat: ChatId): Promise<unknown> {
    const id = `u${this.user}-${String(chat)}-${++this.counter}`;
    const record: SentRecord = { chat: String(chat), at: Date.now() };
    this.sent.set(id, record);
    this.pendingSends++;
    let sent: Promise<Ack>;
    try {
      sent = this.client.chat(chat).send(content(id), { id });
    } catch (err) {
      sent = Promise.reject(err); // the client was closed
    }
    const p = sent
      .then(
        (ack) => {
          record.outcome = 'acked';
          record.ack = ack;
        },
        (err: unknown) => {
          record.outcome = err instanceof ClientError ? err.code : `untyped: ${String(err)}`;
        },
      )
      .finally(() => this.pendingSends--);
    this.promises.push(p);
    return p;
  }

  /**
   * Keeps sending to every chat: about `perSecond` messages a second per chat, without waiting
   * for acks (at most `maxPending` unacked per chat: an app whose user keeps typing while offline).
   */
  startSending(perSecond: number, maxPending = 25): void {
    this.sending = true;
    this.loops = this.chats.map(async (chat) => {
      const pending = new Set<Promise<unknown>>();
      while (this.sending) {
        if (pending.size < maxPending) {
          const p = this.send(chat);
          pending.add(p);
          void p.finally(() => pending.delete(p));
        }
        await sleep((1000 / perSecond) * (0.5 + Math.random()));
      }
    });
  }

  async stopSending(): Promise<void> {
    this.sending = false;
    await Promise.all(this.loops);
  }

  /** Resolves when every send so far has settled; false if some did not within `timeoutMs`. */
  settled(timeoutMs: number): Promise<boolean> {
    return within(Promise.allSettled(this.promises), timeoutMs);
  }

  has(id: string): boolean {
    return this.liveIds.has(id) || this.filled.has(id);
  }

  close(): void {
    this.sending = false;
    this.client.close();
  }
}

// --- the audit ---------------------------------------------------------------------------------

export interface AppReport {
  user: number;
  /** Sends made, and how they settled. */
  sent: number;
  acked: number;
  rejected: Record<string, number>;
  unsettled: number;
  /** Others' acked messages this app should have. */
  expected: number;
  /** …of which it got live or replayed by the SDK. */
  delivered: number;
  /** …of which it took from the main API's history after a gap. */
  filledFromGap: number;
  gaps: number;
  duplicated: number;
  /** Others' acked messages it has in no way (not counting `neverBroadcast`). */
  lost: number;
  lostIds: string[];
  /** For each lost id: its ack, when the main API first got it relative to the kills, who has it. */
  lostDetails: string[];
  /**
   * Others' acked messages it does not have because no gateway ever broadcast them (acked
   * `duplicate` or without a position, received by nobody). The gateway now broadcasts both
   * cases (a resend whose id history lacks; a late publish), so this should stay 0; it is
   * counted apart from `lost` so a regression shows as a gateway fault (docs/client-sdk.md, "Soak").
   */
  neverBroadcast: number;
  neverBroadcastIds: string[];
  echoes: number;
  orderViolations: string[];
  reconnects: number;
}

type Position = { seq: number; epoch: string };

/**
 * Compares what every app has with what the others sent. A message counts as delivered once it
 * is in the app's history: live, or fetched after a gap — but only if that gap covers it (its
 * position, known from an ack or from another app that got it live, lies in the gap's range;
 * or, when no position is known, it was saved before the gap came). So a gap cannot hide a
 * message the SDK lost elsewhere. A lost message is one acked to its sender that an app does
 * not have in either way.
 */
export function audit(apps: ChatApp[], kills: readonly number[] = [], api?: DevApi): AppReport[] {
  const broadcastSomewhere = new Set<string>();
  const positions = new Map<string, Position>();
  for (const app of apps) {
    for (const id of app.liveIds) broadcastSomewhere.add(id);
    for (const list of app.live.values()) for (const m of list) if (m.seq !== undefined && m.epoch !== undefined) positions.set(m.id, { seq: m.seq, epoch: m.epoch });
  }
  for (const app of apps) {
    for (const [id, r] of app.sent) {
      if (r.ack?.seq === undefined || r.ack.epoch === undefined) continue;
      broadcastSomewhere.add(id);
      if (!positions.has(id)) positions.set(id, { seq: r.ack.seq, epoch: r.ack.epoch });
    }
  }
  const savedAt = (id: string): number => {
    const m = api?.messages.get(id);
    return m === undefined ? Infinity : Date.parse(m.saved_at);
  };
  const covered = (app: ChatApp, id: string, chat: string): boolean =>
    app.gaps.some((g) => {
      if (String(g.chatId) !== chat) return false;
      const p = positions.get(id);
      if (p === undefined) return savedAt(id) <= g.at;
      const sameEpoch = g.from.epoch === g.to.epoch;
      if (p.epoch === g.from.epoch) return p.seq > g.from.seq && (!sameEpoch || p.seq <= g.to.seq);
      if (p.epoch === g.to.epoch) return p.seq <= g.to.seq;
      return savedAt(id) <= g.at; // an epoch the client never saw, between the two
    });
  const firstSave = new Map<string, number>();
  for (const r of api?.requests ?? []) {
    const id = (r.body as { id?: unknown } | undefined)?.id;
    if (r.op === 'save' && typeof id === 'string' && !firstSave.has(id)) firstSave.set(id, r.at);
  }
  /**
   * Saved, but never broadcast by any gateway (no app got it, no ack has a position): either its
   * instance was SIGKILLed while it was at the main API (the resend is acked `duplicate`), or the
   * gateway itself says it dropped the broadcast (an ack with `duplicate: false` and no `seq`,
   * after PUBLISH_RETRY_MS of engine failures).
   */
  const neverBroadcast = (id: string, sender: ChatApp): boolean => {
    const r = sender.sent.get(id);
    if (broadcastSomewhere.has(id) || r?.ack === undefined) return false;
    if (!r.ack.duplicate) return r.ack.seq === undefined;
    // `at` is when this process read the request: a save the instance sent just before its
    // SIGKILL can be read a little after it (the dev API shares the event loop with the test).
    const at = firstSave.get(id);
    return at !== undefined && kills.some((k) => at <= k + 3000 && at >= k - 10_000);
  };

  const reports: AppReport[] = [];
  for (const app of apps) {
    const rejected: Record<string, number> = {};
    let acked = 0;
    let unsettled = 0;
    for (const r of app.sent.values()) {
      if (r.outcome === undefined) unsettled++;
      else if (r.outcome === 'acked') acked++;
      else rejected[r.outcome] = (rejected[r.outcome] ?? 0) + 1;
    }
    let expected = 0;
    let delivered = 0;
    let filledFromGap = 0;
    const lostIds: string[] = [];
    const neverIds: string[] = [];
    for (const other of apps) {
      if (other === app) continue;
      for (const [id, r] of other.sent) {
        if (r.outcome !== 'acked' || !app.chats.some((c) => String(c) === r.chat)) continue;
        expected++;
        if (app.liveIds.has(id)) delivered++;
        else if (app.filled.has(id) && covered(app, id, r.chat)) filledFromGap++;
        else if (neverBroadcast(id, other)) neverIds.push(id);
        else lostIds.push(id);
      }
    }
    const details = lostIds.slice(0, 10).map((id) => {
      const sender = apps.find((a) => a.sent.has(id));
      const r = sender?.sent.get(id);
      const at = firstSave.get(id);
      const ack = r?.ack === undefined ? `outcome ${r?.outcome}` : `ack duplicate=${r.ack.duplicate} seq=${r.ack.seq ?? '-'}`;
      const saved = at === undefined ? 'never sent to the main API' : `first sent to the main API at ${at - (apps[0]?.startedAt ?? 0)} ms, kills at ${kills.map((k) => k - (apps[0]?.startedAt ?? 0)).join(',') || '-'} ms`;
      const holders = apps.filter((a) => a.has(id)).map((a) => a.user);
      return `${id}: ${ack}; ${saved}; in the main API: ${api?.messages.has(id) ?? '?'}; held by users [${holders.join(',')}]; gaps of user ${app.user}: ${app.gaps.map((g) => `${g.from.epoch}:${g.from.seq}->${g.to.epoch}:${g.to.seq}@${g.at - (apps[0]?.startedAt ?? 0)}`).join(' ')}`;
    });
    reports.push({
      user: app.user,
      sent: app.sent.size,
      acked,
      rejected,
      unsettled,
      expected,
      delivered,
      filledFromGap,
      gaps: app.gaps.length,
      duplicated: app.duplicates.length,
      lost: lostIds.length,
      lostIds,
      lostDetails: details,
      neverBroadcast: neverIds.length,
      neverBroadcastIds: neverIds,
      echoes: app.echoes.length,
      orderViolations: orderViolations(app, apps),
      reconnects: Math.max(0, app.connects - 1),
    });
  }
  return reports;
}

/**
 * One order per chat: within an epoch an app's seqs only grow, and any two apps have the
 * messages they both got live in the same relative order — those they got at the same position.
 * A message both got at different positions was broadcast twice, in two epochs: its first
 * broadcast reached some apps before its stream was lost (an instance of the memory engine
 * killed, a Redis that lost its data), and a resend was broadcast again in the new epoch
 * (docs/protocol.md): each app keeps it where it first came.
 */
function orderViolations(app: ChatApp, apps: ChatApp[]): string[] {
  const out: string[] = [];
  for (const [chat, list] of app.live) {
    const last = new Map<string, number>();
    for (const m of list) {
      if (m.epoch === undefined || m.seq === undefined) continue;
      const prev = last.get(m.epoch);
      if (prev !== undefined && m.seq <= prev) out.push(`user ${app.user} chat ${chat}: seq ${m.seq} after ${prev} (epoch ${m.epoch})`);
      last.set(m.epoch, m.seq);
    }
    for (const other of apps) {
      if (other === app || other.user < app.user) continue;
      const theirs = other.live.get(chat) ?? [];
      const position = (m: LiveMessage) => `${m.epoch}/${m.seq}`;
      const theirPosition = new Map(theirs.map((m) => [m.id, position(m)]));
      const common = new Set(list.filter((m) => theirPosition.get(m.id) === position(m)).map((m) => m.id));
      const a = list.map((m) => m.id).filter((id) => common.has(id));
      const b = theirs.map((m) => m.id).filter((id) => common.has(id));
      const at = a.findIndex((id, i) => b[i] !== id);
      if (at >= 0) out.push(`users ${app.user}/${other.user} chat ${chat}: order differs at ${at}: ${a.slice(at, at + 3).join(',')} vs ${b.slice(at, at + 3).join(',')}`);
    }
  }
  return out;
}

/** Waits until every app has every message the others got acked (or `timeoutMs`). */
export async function converge(apps: ChatApp[], timeoutMs: number, kills: readonly number[] = [], api?: DevApi): Promise<AppReport[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (audit(apps, kills, api).every((r) => r.lostIds.length === 0) || Date.now() > deadline) break;
    await sleep(100);
  }
  // A quiet moment more, and every gap fill finished: a late duplicate or a late broadcast is
  // then in the report, not after it.
  await Promise.all([sleep(QUIET_MS), ...apps.flatMap((a) => a.fills)]);
  return audit(apps, kills, api);
}
const QUIET_MS = 1000;

export function table(reports: AppReport[]): string {
  const head = ['user', 'reconnects', 'sent', 'acked', 'rejected', 'expected', 'delivered', 'filled(gap)', 'gaps', 'duplicated', 'lost', 'never-broadcast', 'order'];
  const rows = reports.map((r) => [
    r.user,
    r.reconnects,
    r.sent,
    r.acked,
    Object.entries(r.rejected).map(([k, v]) => `${k}:${v}`).join(' ') || '0',
    r.expected,
    r.delivered,
    r.filledFromGap,
    r.gaps,
    r.duplicated,
    r.lost,
    r.neverBroadcast,
    r.orderViolations.length,
  ].map(String));
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  return [line(head), ...rows.map(line)].join('\n');
}
