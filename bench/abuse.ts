/**
 * npm run bench:abuse (npx tsx bench/abuse.ts [--redis]) — does an ordinary user stay served
 * while attackers drive every per-connection limit at once?
 *
 * The gateway runs as its own process with its default limits (memory engine; `--redis` or
 * BENCH_ENGINE=redis: a private redis-server). The dev main API and a small HTTP proxy in front
 * of it run in this process; the proxy is the gateway's AUTH_HOST, so it can
 *   - slow down only the attackers' saves (BENCH_SLOW_SAVE_MS, 300): the dev API's faults are
 *     global per op. Slow saves keep the attackers' MAX_PENDING_WRITES queues full and their
 *     MAX_UPSTREAM_PER_CONNECTION calls in flight;
 *   - slow down only the attackers' verifies (BENCH_SLOW_VERIFY_MS, 0): a main API slow to
 *     refuse junk tokens, which with hundreds of junk-token sockets (BENCH_ATTACKERS=300
 *     BENCH_ROLES=junk) tests that unregistered connections cannot take the whole pool;
 *   - count main-API calls in flight per attacker connection (its token or message id names it)
 *     and time the ordinary user's saves (send → main API → ack).
 * Every main-API call also gets a 5 ms delay fault (BENCH_BASE_DELAY_MS) on the dev API: a
 * realistic verify/save (a database round trip), so that an ordinary call queued behind
 * attacker calls shows in the ordinary user's latency; with 0 ms, queueing would be invisible.
 *
 * 1. quiet: one sender and one receiver in chat 1; the sender sends a message every 50 ms for
 *    BENCH_QUIET_MS (5000); ack latency (send → ack) and delivery latency (send → receiver).
 * 2. abuse: the same for BENCH_ABUSE_MS (5000), 1 s after BENCH_ATTACKERS (20) connections
 *    started — in a worker thread, so the loop that times the ordinary user is not the one
 *    blasting — to flood: junk-token registers (a new chat each), register/unregister churn in
 *    chat 1, garbage (bad JSON, binary, unknown types, invalid UTF-8), pings, messages past
 *    MAX_PENDING_WRITES with slow saves (steady ones at the refill rate that are never closed,
 *    and blasting ones), frames just under and over MAX_MESSAGE_BYTES. Closed attackers
 *    reconnect at once. BENCH_ROLES=ping,junk,… runs only those kinds; BENCH_ROLES=deaf adds a
 *    raw-TCP attacker that never reads (so never sees its close frame) and keeps sending.
 * Prints the latency table, attacker stats, main-API calls from attackers, gateway CPU, loop
 * delay and memory (its /metrics), the verdict; merges the run into bench/results/abuse.json.
 *
 * Gateway on core 1, this process and its worker on core 0 when `taskset` exists and there are
 * ≥ 2 cores (redis-server is left to the scheduler). On a shared machine other work lands on
 * those cores too: the result records the load average; compare runs, not single numbers.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as netConnect, type AddressInfo } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { WebSocket } from 'ws';
import { startDevApi, type DevApi } from '../dev-api/app.js';
import { TestClient } from '../tests/support/client.js';
import { GatewayProcess } from '../tests/support/process.js';
import { RedisServer } from '../tests/support/redis.js';

const ENGINE: 'memory' | 'redis' = process.argv.includes('--redis') || process.env.BENCH_ENGINE === 'redis' ? 'redis' : 'memory';
const QUIET_MS = Number(process.env.BENCH_QUIET_MS ?? 5000);
const ABUSE_MS = Number(process.env.BENCH_ABUSE_MS ?? 5000);
/** Attackers start this long before the abuse phase's samples are taken. */
const RAMP_MS = 1000;
const SEND_EVERY_MS = 50;
const ATTACKERS = Number(process.env.BENCH_ATTACKERS ?? 20);
const BASE_DELAY_MS = Number(process.env.BENCH_BASE_DELAY_MS ?? 5);
const SLOW_SAVE_MS = Number(process.env.BENCH_SLOW_SAVE_MS ?? 300);
/** A main API slow to refuse the attackers' junk tokens (a tarpit, or a slow database): their verifies take this long. */
const SLOW_VERIFY_MS = Number(process.env.BENCH_SLOW_VERIFY_MS ?? 0);
/** Gateway defaults the verdict checks against (the bench does not override them). */
const MAX_UPSTREAM_PER_CONNECTION = 4;
const MAX_AUTH_FAILURES = 5;
const MAX_MESSAGE_BYTES = 65536;
const ORDINARY_CHAT = 1;
const SENDER = 1;
const RECEIVER = 2;

type Role = 'junk' | 'churn' | 'garbage' | 'ping' | 'flood-steady' | 'flood-blast' | 'oversize' | 'deaf' | 'anon';
/** 20 slots: mixed so that any prefix (a smaller BENCH_ATTACKERS) still has every kind. */
const ROLE_CYCLE: Role[] = [
  'junk', 'flood-steady', 'churn', 'garbage', 'ping', 'flood-blast', 'oversize', 'junk', 'churn', 'flood-steady',
  'garbage', 'junk', 'flood-blast', 'ping', 'churn', 'flood-steady', 'junk', 'garbage', 'flood-blast', 'oversize',
];
/**
 * BENCH_ROLES=junk,ping keeps only those kinds (to see which one hurts). `deaf` and `anon` are
 * only run when named. `deaf`: a raw-TCP client that never reads, so it never sees the gateway's
 * close frame and keeps sending pings after its 1008. `anon`: registers with junk tokens, four at
 * a time (MAX_UPSTREAM_PER_CONNECTION), the next four once those are answered, reconnecting when
 * closed 4401 — few frames, all of them main-API calls: with BENCH_SLOW_VERIFY_MS and hundreds of
 * them, what unregistered connections can take of the main-API pool.
 */
const ROLE_FILTER = process.env.BENCH_ROLES?.split(',').map((r) => r.trim());
const NAMED_ONLY: Role[] = ['deaf', 'anon'];
const ROLES: Role[] = ROLE_FILTER ? [...ROLE_CYCLE.filter((r) => ROLE_FILTER.includes(r)), ...NAMED_ONLY.filter((r) => ROLE_FILTER.includes(r))] : ROLE_CYCLE;
if (ROLES.length === 0) throw new Error(`BENCH_ROLES matches none of ${[...new Set(ROLE_CYCLE), ...NAMED_ONLY].join(', ')}`);
const roleOf = (slot: number): Role => ROLES[slot % ROLES.length]!;
/** Flooders and churners hold real tokens. Flooders share a few users; churners are one user each (so presence flips). */
const userOf = (slot: number): number | null => {
  const role = roleOf(slot);
  if (role === 'churn') return 9100 + slot;
  if (role === 'flood-steady' || role === 'flood-blast') return 9001 + (slot % 2);
  return null;
};
const floodChats = (slot: number): string[] => [0, 1, 2, 3].map((k) => `f${slot}c${k}`);

interface WorkerInput {
  wsUrl: string;
  attackers: number;
  tokens: Record<number, string>;
}

interface RoleStats {
  slots: number;
  connections: number;
  connectFailures: number;
  frames: number;
  bytes: number;
  closes: Record<string, number>;
  errors: Record<string, number>;
  acks: number;
  registered: number;
}

interface WorkerReport {
  roles: Record<string, RoleStats>;
  /** [slot, generation, epoch ms when the attacker saw the close]. */
  closeLog: Array<[number, number, number]>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const epochMs = () => performance.timeOrigin + performance.now();

// =============================================================================================
// Attackers (worker thread)
// =============================================================================================

async function attackerMain(input: WorkerInput): Promise<void> {
  let stopping = false;
  const open = new Set<WebSocket>();
  const roles: Record<string, RoleStats> = {};
  const closeLog: Array<[number, number, number]> = [];
  const statsOf = (role: Role): RoleStats =>
    (roles[role] ??= { slots: 0, connections: 0, connectFailures: 0, frames: 0, bytes: 0, closes: {}, errors: {}, acks: 0, registered: 0 });

  parentPort!.on('message', (m: { stop?: boolean }) => {
    if (m.stop) stopping = true;
  });

  const GARBAGE: Array<string | Buffer> = [
    'not json {{{',
    '{"type":"nope"}',
    '{"type":"message","data":42}',
    '[1,2,3]',
    Buffer.alloc(32, 0xab),
    '{"type":"typing","chat_id":1}',
    '{"type":"register","token":"","chat_id":1}',
    `{"type":"${'x'.repeat(200)}"}`,
  ];
  const BIG_JUNK = `{"type":"message","data":{"id":"big","ciphertext":"${'A'.repeat(MAX_MESSAGE_BYTES - 200)}"}}`;
  const OVERSIZED = 'B'.repeat(MAX_MESSAGE_BYTES + 4096);

  async function slotLoop(slot: number): Promise<void> {
    const role = roleOf(slot);
    const stats = statsOf(role);
    stats.slots++;
    if (role === 'deaf') return deafLoop(stats);
    const token = input.tokens[slot];
    for (let gen = 1; !stopping; gen++) {
      let ws: WebSocket;
      try {
        ws = await connect(input.wsUrl);
      } catch {
        stats.connectFailures++;
        await sleep(20);
        continue;
      }
      stats.connections++;
      open.add(ws);
      const registered: string[] = [];
      let answered = 0;
      let onRegistered: (() => void) | null = null;
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (isBinary) return;
        let f: { type?: string; code?: string; chat_id?: unknown };
        try {
          f = JSON.parse(data.toString()) as typeof f;
        } catch {
          return;
        }
        if (f.type === 'error') {
          stats.errors[f.code ?? '?'] = (stats.errors[f.code ?? '?'] ?? 0) + 1;
          answered++;
        }
        else if (f.type === 'ack') stats.acks++;
        else if (f.type === 'registered') {
          stats.registered++;
          registered.push(String(f.chat_id));
          onRegistered?.();
        }
      });
      const closed = new Promise<number>((resolve) => ws.once('close', (code: number) => resolve(code)));
      let isClosed = false;
      void closed.then(() => (isClosed = true));
      const alive = () => !isClosed && !stopping && ws.readyState === WebSocket.OPEN;
      const send = (frame: string | Buffer, binary = typeof frame !== 'string') => {
        ws.send(frame, { binary });
        stats.frames++;
        stats.bytes += frame.length;
      };
      /** Sends `total` frames as fast as the socket takes them. */
      const blast = async (total: number, make: (n: number) => string | Buffer) => {
        for (let n = 0; n < total && alive(); n++) {
          send(make(n));
          if (n % 64 === 63) {
            while (alive() && ws.bufferedAmount > 256 * 1024) await sleep(1);
            await new Promise((r) => setImmediate(r));
          }
        }
      };
      const registerAll = async (chats: string[]) => {
        for (const chat of chats) send(JSON.stringify({ type: 'register', token, chat_id: chat }));
        const until = Date.now() + 3000;
        while (alive() && registered.length < chats.length && Date.now() < until) {
          await new Promise<void>((r) => {
            onRegistered = r;
            setTimeout(r, 50);
          });
        }
        onRegistered = null;
      };

      try {
        switch (role) {
          case 'junk':
            // Junk tokens, a new chat each: every one would be a verify if nothing bounded it.
            await blast(3000, (n) => JSON.stringify({ type: 'register', token: `junk-${slot}-${gen}-${n}`, chat_id: `j${slot}x${n}` }));
            break;
          case 'churn':
            await blast(3000, (n) => JSON.stringify(n % 2 === 0 ? { type: 'register', token, chat_id: ORDINARY_CHAT } : { type: 'unregister', chat_id: ORDINARY_CHAT }));
            break;
          case 'garbage':
            if (gen % 4 === 0) {
              await blast(300, (n) => GARBAGE[n % GARBAGE.length]!);
              if (alive()) send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), false); // invalid UTF-8 text: 1007
            } else {
              await blast(3000, (n) => GARBAGE[n % GARBAGE.length]!);
            }
            break;
          case 'ping':
            await blast(3000, () => '{"type":"ping"}');
            break;
          case 'anon':
            for (let n = 0; alive(); ) {
              const asked = answered + 4;
              for (let k = 0; k < 4; k++, n++) send(JSON.stringify({ type: 'register', token: `junk-${slot}-${gen}-${n}`, chat_id: `j${slot}x${n}` }));
              while (alive() && answered < asked) await sleep(10);
            }
            break;
          case 'oversize':
            // Frames just under the limit (parsed, validated, refused), then one over it: 1009.
            await blast(10, () => BIG_JUNK);
            if (alive()) send(OVERSIZED);
            break;
          case 'flood-blast': {
            const chats = floodChats(slot);
            await registerAll(chats);
            await blast(3000, (n) => JSON.stringify({ type: 'message', chat_id: chats[n % 4], data: { id: `a${slot}g${gen}n${n}`, ciphertext: 'QUJD' } }));
            break;
          }
          case 'flood-steady': {
            // At the refill rate: never closed 1008, keeps its write queue full and its upstream slots busy.
            const chats = floodChats(slot);
            await registerAll(chats);
            for (let n = 0; alive(); n++) {
              send(JSON.stringify({ type: 'message', chat_id: chats[n % 4], data: { id: `a${slot}g${gen}n${n}`, ciphertext: 'QUJD' } }));
              await sleep(50);
            }
            break;
          }
        }
      } catch {
        // a send on a socket that just closed
      }
      const code = await Promise.race([closed, sleep(stopping ? 0 : 2000).then(() => -1)]);
      if (code === -1 || stopping) {
        ws.terminate();
        const key = stopping ? 'bench-stop' : 'still-open-2s';
        stats.closes[key] = (stats.closes[key] ?? 0) + 1;
        await closed;
      } else {
        stats.closes[String(code)] = (stats.closes[String(code)] ?? 0) + 1;
        closeLog.push([slot, gen, epochMs()]);
      }
      open.delete(ws);
    }
  }

  /** Raw TCP: upgrade, then write masked ping frames forever and never read a byte. */
  async function deafLoop(stats: RoleStats): Promise<void> {
    const { hostname, port } = new URL(input.wsUrl);
    // 1000 masked text frames '{"type":"ping"}' (a zero mask key leaves the payload as is).
    const payload = Buffer.from('{"type":"ping"}');
    const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
    const batch = Buffer.concat(Array.from({ length: 1000 }, () => frame));
    while (!stopping) {
      const socket = netConnect(Number(port), hostname);
      socket.on('error', () => undefined);
      const upgraded = await new Promise<boolean>((resolve) => {
        let head = '';
        socket.once('connect', () =>
          socket.write(`GET /ws HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`),
        );
        const onData = (d: Buffer) => {
          head += d.toString('latin1');
          if (!head.includes('\r\n\r\n')) return;
          socket.off('data', onData);
          socket.pause(); // deaf from here on
          resolve(head.startsWith('HTTP/1.1 101'));
        };
        socket.on('data', onData);
        socket.once('close', () => resolve(false));
      });
      if (!upgraded) {
        stats.connectFailures++;
        socket.destroy();
        await sleep(20);
        continue;
      }
      stats.connections++;
      const opened = Date.now();
      let gone = false;
      const closed = new Promise<void>((r) => socket.once('close', () => r(void (gone = true))));
      while (!gone && !stopping) {
        stats.frames += 1000;
        stats.bytes += batch.length;
        if (!socket.write(batch)) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
      }
      const key = stopping ? 'bench-stop' : `dropped-after-${Math.round((Date.now() - opened) / 1000)}s`;
      stats.closes[key] = (stats.closes[key] ?? 0) + 1;
      socket.destroy();
    }
  }

  const loops = Array.from({ length: input.attackers }, (_, slot) => slotLoop(slot));
  while (!stopping) await sleep(20);
  for (const ws of open) ws.terminate();
  await Promise.all(loops);
  parentPort!.postMessage({ roles, closeLog } satisfies WorkerReport);
}

function connect(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', () => reject(new Error('upgrade refused')));
  });
}

// =============================================================================================
// Proxy in front of the dev API: targeted slowness and in-flight accounting
// =============================================================================================

interface ProxyStats {
  /** By `${role}:${op}`: calls received. */
  calls: Record<string, number>;
  attackerInFlight: number;
  attackerInFlightMax: number;
  ordinaryInFlightMax: number;
  /** Max calls in flight at once for one attacker connection (slot:generation). */
  perConnectionInFlightMax: number;
  perConnectionInFlightMaxAt: string;
  /** Attacker saves received, keyed slot:generation → receipt times (epoch ms). */
  saveTimes: Map<string, number[]>;
  /** Junk verify calls per attacker connection. */
  junkVerifies: Map<string, number>;
  /** Ordinary saves by message id: when the proxy received it and answered it (performance.now()). */
  ordinarySaves: Map<string, { in: number; out?: number }>;
}

interface Who {
  kind: 'ordinary' | 'attacker' | 'other';
  role?: Role;
  /** slot:generation when the call names it (junk token, attacker message id). */
  conn?: string;
}

async function startProxy(target: string, tokenOwner: Map<string, Who>): Promise<{ url: string; stats: ProxyStats; close: () => Promise<void> }> {
  const agent = new Agent({ keepAlive: true, maxSockets: 512 });
  const stats: ProxyStats = {
    calls: {},
    attackerInFlight: 0,
    attackerInFlightMax: 0,
    ordinaryInFlightMax: 0,
    perConnectionInFlightMax: 0,
    perConnectionInFlightMaxAt: '',
    saveTimes: new Map(),
    junkVerifies: new Map(),
    ordinarySaves: new Map(),
  };
  let ordinaryInFlight = 0;
  const perConn = new Map<string, number>();

  const classify = (op: string, req: IncomingMessage, body: Buffer): Who => {
    let parsed: Record<string, unknown> = {};
    try {
      parsed = JSON.parse(body.toString()) as Record<string, unknown>;
    } catch {
      // no body (delete) or not JSON
    }
    const bearer = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    const token = op === 'verify' && typeof parsed.token === 'string' ? parsed.token : bearer;
    const junk = /^junk-(\d+)-(\d+)-\d+$/.exec(token);
    if (junk) return { kind: 'attacker', role: 'junk', conn: `${junk[1]}:${junk[2]}` };
    const owner = tokenOwner.get(token) ?? { kind: 'other' };
    const id = typeof parsed.id === 'string' ? /^a(\d+)g(\d+)n\d+$/.exec(parsed.id) : null;
    return id && owner.kind === 'attacker' ? { ...owner, conn: `${id[1]}:${id[2]}` } : owner;
  };

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = (req.url ?? '/').split('?')[0]!;
      const op = path === '/auth/verify' ? 'verify' : path === '/chat/massage' ? 'save' : req.method === 'PATCH' ? 'edit' : req.method === 'DELETE' ? 'delete' : 'other';
      const who = classify(op, req, body);
      const ordinarySave = who.kind === 'ordinary' && op === 'save' ? { in: performance.now() } as { in: number; out?: number } : null;
      if (ordinarySave) {
        const id = (JSON.parse(body.toString()) as { id?: string }).id;
        if (id) stats.ordinarySaves.set(id, ordinarySave);
      }
      const label = `${who.kind === 'attacker' ? who.role : who.kind}:${op}`;
      stats.calls[label] = (stats.calls[label] ?? 0) + 1;
      if (who.role === 'junk' && who.conn) stats.junkVerifies.set(who.conn, (stats.junkVerifies.get(who.conn) ?? 0) + 1);
      if (who.kind === 'attacker' && op === 'save' && who.conn) {
        const list = stats.saveTimes.get(who.conn) ?? [];
        list.push(epochMs());
        stats.saveTimes.set(who.conn, list);
      }

      // In flight from now until the answer is sent or the gateway gives up.
      if (who.kind === 'attacker') {
        stats.attackerInFlightMax = Math.max(stats.attackerInFlightMax, ++stats.attackerInFlight);
        if (who.conn) {
          const n = (perConn.get(who.conn) ?? 0) + 1;
          perConn.set(who.conn, n);
          if (n > stats.perConnectionInFlightMax) {
            stats.perConnectionInFlightMax = n;
            stats.perConnectionInFlightMaxAt = `${who.role} ${who.conn}`;
          }
        }
      } else if (who.kind === 'ordinary') {
        stats.ordinaryInFlightMax = Math.max(stats.ordinaryInFlightMax, ++ordinaryInFlight);
      }
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        if (ordinarySave) ordinarySave.out = performance.now();
        if (who.kind === 'attacker') {
          stats.attackerInFlight--;
          if (who.conn) {
            const n = perConn.get(who.conn)! - 1;
            if (n === 0) perConn.delete(who.conn);
            else perConn.set(who.conn, n);
          }
        } else if (who.kind === 'ordinary') ordinaryInFlight--;
      };
      res.on('close', finish);

      const forward = () => {
        if (res.destroyed) return finish();
        const up = request(`${target}${req.url ?? '/'}`, { method: req.method, headers: req.headers, agent }, (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        });
        up.on('error', () => {
          if (!res.headersSent) res.writeHead(502);
          res.end();
        });
        up.end(body);
      };
      if (who.kind === 'attacker' && op === 'save' && SLOW_SAVE_MS > 0) setTimeout(forward, SLOW_SAVE_MS);
      else if (who.kind === 'attacker' && op === 'verify' && SLOW_VERIFY_MS > 0) setTimeout(forward, SLOW_VERIFY_MS);
      else forward();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      agent.destroy();
    },
  };
}

// =============================================================================================
// The ordinary user and measurement (main thread)
// =============================================================================================

interface Sample {
  sentAt: number;
  ackMs?: number;
  deliveryMs?: number;
  /** The error code when the gateway refused the message instead of acking it. */
  refused?: string;
}

interface PhaseResult {
  phase: string;
  samples: number;
  /** Neither ack nor error within 5 s after the phase. */
  lost_acks: number;
  /** Acked but never delivered to the receiver. */
  lost_deliveries: number;
  errors: Record<string, number>;
  ack_ms: Dist;
  delivery_ms: Dist;
  /** Where an ack's time went: send → the gateway's save reaches the main API; the save; its answer → ack. */
  to_main_api_ms: Dist;
  main_api_ms: Dist;
  main_api_to_ack_ms: Dist;
  presence_frames_to_receiver: number;
  generator_loop_delay_p99_ms: number;
}

interface Dist {
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

function dist(values: number[]): Dist {
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number) => (s.length === 0 ? NaN : Number(s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!.toFixed(2)));
  return { p50: at(50), p95: at(95), p99: at(99), max: at(100) };
}

class Ordinary {
  private samples = new Map<string, Sample>();
  private errors: Record<string, number> = {};
  private presence = 0;

  constructor(
    readonly sender: TestClient,
    readonly receiver: TestClient,
    private readonly saves: ProxyStats['ordinarySaves'],
  ) {
    sender.ws.on('message', (data: Buffer) => {
      const f = JSON.parse(data.toString()) as { type: string; id?: string; code?: string; message?: string };
      if (f.type === 'ack' && f.id) {
        const s = this.samples.get(f.id);
        if (s && s.ackMs === undefined) s.ackMs = performance.now() - s.sentAt;
      } else if (f.type === 'error') {
        // Which limit said rate_limited: the token bucket or MAX_PENDING_WRITES.
        const code = f.code === 'rate_limited' ? `rate_limited/${/writes/.test(f.message ?? '') ? 'pending' : 'bucket'}` : (f.code ?? '?');
        this.errors[code] = (this.errors[code] ?? 0) + 1;
        const s = f.id === undefined ? undefined : this.samples.get(f.id);
        if (s) s.refused = code;
      }
    });
    receiver.ws.on('message', (data: Buffer) => {
      const f = JSON.parse(data.toString()) as { type: string; data?: { id?: string } };
      if (f.type === 'message' && f.data?.id) {
        const s = this.samples.get(f.data.id);
        if (s && s.deliveryMs === undefined) s.deliveryMs = performance.now() - s.sentAt;
      } else if (f.type === 'presence') this.presence++;
    });
  }

  async run(phase: string, ms: number): Promise<PhaseResult> {
    this.samples.clear();
    this.errors = {};
    this.presence = 0;
    const lag = monitorEventLoopDelay({ resolution: 5 });
    lag.enable();
    const start = performance.now();
    for (let i = 0; performance.now() - start < ms; i++) {
      const id = `${phase}-${i}`;
      if (this.sender.isOpen) {
        this.samples.set(id, { sentAt: performance.now() });
        this.sender.send({ type: 'message', data: { id, ciphertext: Buffer.from(`hello ${i}`).toString('base64') } });
      }
      const next = start + (i + 1) * SEND_EVERY_MS;
      await sleep(Math.max(0, next - performance.now()));
    }
    // Grace for the last answers.
    const until = performance.now() + 5000;
    const complete = () => [...this.samples.values()].every((s) => s.refused !== undefined || (s.ackMs !== undefined && s.deliveryMs !== undefined));
    while (!complete() && performance.now() < until) await sleep(20);
    lag.disable();
    const all = [...this.samples.values()];
    const split = [...this.samples].flatMap(([id, s]) => {
      const at = this.saves.get(id);
      return at?.out === undefined || s.ackMs === undefined ? [] : [{ to: at.in - s.sentAt, api: at.out - at.in, back: s.sentAt + s.ackMs - at.out }];
    });
    return {
      phase,
      samples: all.length,
      lost_acks: all.filter((s) => s.ackMs === undefined && s.refused === undefined).length,
      lost_deliveries: all.filter((s) => s.ackMs !== undefined && s.deliveryMs === undefined).length,
      errors: { ...this.errors },
      ack_ms: dist(all.flatMap((s) => (s.ackMs === undefined ? [] : [s.ackMs]))),
      delivery_ms: dist(all.flatMap((s) => (s.deliveryMs === undefined ? [] : [s.deliveryMs]))),
      to_main_api_ms: dist(split.map((x) => x.to)),
      main_api_ms: dist(split.map((x) => x.api)),
      main_api_to_ack_ms: dist(split.map((x) => x.back)),
      presence_frames_to_receiver: this.presence,
      generator_loop_delay_p99_ms: Number((lag.percentile(99) / 1e6).toFixed(2)),
    };
  }
}

type Series = Array<{ labels: Record<string, string>; value: number }>;

async function scrape(gw: GatewayProcess): Promise<Map<string, Series>> {
  const text = await (await fetch(`${gw.httpUrl}/metrics`)).text();
  const out = new Map<string, Series>();
  for (const line of text.split('\n')) {
    const m = /^(message_service_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-z_]+)="([^"]*)"/g)) labels[l[1]!] = l[2]!;
    const list = out.get(m[1]!) ?? [];
    list.push({ labels, value: Number(m[3]) });
    out.set(m[1]!, list);
  }
  return out;
}

const total = (s: Map<string, Series>, name: string, filter: (l: Record<string, string>) => boolean = () => true) =>
  (s.get(name) ?? []).filter((x) => filter(x.labels)).reduce((a, x) => a + x.value, 0);

function byLabel(s: Map<string, Series>, name: string, label: string, filter: (l: Record<string, string>) => boolean = () => true): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of s.get(name) ?? []) if (filter(x.labels)) out[x.labels[label] ?? '?'] = (out[x.labels[label] ?? '?'] ?? 0) + x.value;
  return out;
}

const diff = (after: Record<string, number>, before: Record<string, number>) =>
  Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => v !== 0));

const mib = (bytes: number) => Number((bytes / 1024 / 1024).toFixed(1));

/** OS thread ids of this process (Linux); empty elsewhere. */
function threadIds(): string[] {
  try {
    return readdirSync('/proc/self/task');
  } catch {
    return [];
  }
}

function renice(tid: string): boolean {
  try {
    execFileSync('renice', ['-n', '19', '-p', tid], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function pin(pid: number, core: number): boolean {
  try {
    execFileSync('taskset', ['-a', '-p', '-c', String(core), String(pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function main(): Promise<void> {
  const started = performance.now();
  const canPin = cpus().length >= 2 && (() => {
    try {
      execFileSync('sh', ['-c', 'command -v taskset'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  if (canPin) pin(process.pid, 0);

  const api: DevApi = await startDevApi({ port: 0 });
  if (BASE_DELAY_MS > 0) api.addFault({ op: 'any', delayMs: BASE_DELAY_MS });
  const tokens: Record<number, string> = {};
  const owners = new Map<string, Who>();
  const senderToken = await api.mintToken(SENDER);
  const receiverToken = await api.mintToken(RECEIVER);
  owners.set(senderToken, { kind: 'ordinary' });
  owners.set(receiverToken, { kind: 'ordinary' });
  for (let slot = 0; slot < ATTACKERS; slot++) {
    const user = userOf(slot);
    if (user === null) continue;
    const token = await api.mintToken(user);
    tokens[slot] = token;
    owners.set(token, { kind: 'attacker', role: roleOf(slot) });
  }
  const proxy = await startProxy(api.url, owners);
  const redis = ENGINE === 'redis' ? await RedisServer.start() : null;
  const gw = GatewayProcess.spawn({
    APP_PORT: '0',
    AUTH_HOST: proxy.url,
    LOG_LEVEL: 'info', // the default; 'gateway listening' is logged at info
    ...(redis ? { REDIS_HOST: redis.url } : {}),
  });
  // redis-server stays unpinned: on core 0 the attackers starve it (the engine then flaps), on core 1 it takes the gateway's core.
  const pinned = canPin && pin(gw.proc.pid!, 1);
  let worker: Worker | null = null;
  try {
    await gw.listening();
    for (let i = 0; i < 100 && (await fetch(`${gw.httpUrl}/readyz`)).status !== 200; i++) await sleep(50);
    console.log(`engine=${ENGINE} attackers=${ATTACKERS} base delay=${BASE_DELAY_MS} ms, attacker saves +${SLOW_SAVE_MS} ms, attacker verifies +${SLOW_VERIFY_MS} ms, ${pinned ? 'gateway on core 1, generator on core 0' : 'not pinned'}`);

    const sender = await TestClient.connect(gw.wsUrl);
    const receiver = await TestClient.connect(gw.wsUrl);
    await receiver.register(receiverToken, ORDINARY_CHAT);
    await sender.register(senderToken, ORDINARY_CHAT);
    const ordinary = new Ordinary(sender, receiver, proxy.stats.ordinarySaves);
    // Warm-up (JIT, pools), not measured.
    await ordinary.run('warmup', 1000);

    const m0 = await scrape(gw);
    const quiet = await ordinary.run('quiet', QUIET_MS);
    const m1 = await scrape(gw);
    const requestsBefore = api.requests.length;

    // Abuse.
    const attackStart = epochMs();
    const tsxApi = import.meta.resolve('tsx/esm/api');
    const threadsBefore = new Set(threadIds());
    worker = new Worker(`import(${JSON.stringify(tsxApi)}).then(({ tsImport }) => tsImport(${JSON.stringify(import.meta.url)}, ${JSON.stringify(import.meta.url)}))`, {
      eval: true,
      workerData: { wsUrl: gw.wsUrl, attackers: ATTACKERS, tokens } satisfies WorkerInput,
    });
    const report = new Promise<WorkerReport>((resolve, reject) => {
      worker!.once('message', resolve);
      worker!.once('error', reject);
    });
    // The attackers share core 0 with the main API stand-in and the ordinary client: at the
    // lowest priority they load the gateway without starving what measures it.
    await sleep(200);
    const niced = threadIds().filter((t) => !threadsBefore.has(t)).filter((t) => renice(t));
    console.log(`attacker threads at nice 19: ${niced.length}`);
    const peak = { rss: 0, heap: 0, connections: 0, lagMax: 0 };
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        try {
          const s = await scrape(gw);
          peak.rss = Math.max(peak.rss, total(s, 'message_service_process_resident_memory_bytes'));
          peak.heap = Math.max(peak.heap, total(s, 'message_service_nodejs_heap_size_used_bytes'));
          peak.connections = Math.max(peak.connections, total(s, 'message_service_connections'));
          peak.lagMax = Math.max(peak.lagMax, total(s, 'message_service_nodejs_eventloop_lag_max_seconds'));
        } catch {
          // a scrape that lost the race with load: the next one counts
        }
        await sleep(250);
      }
    })();
    await sleep(RAMP_MS);
    const abuse = await ordinary.run('abuse', ABUSE_MS);
    const attackSeconds = (epochMs() - attackStart) / 1000;
    worker.postMessage({ stop: true });
    const attack = await report;
    await worker.terminate();
    worker = null;
    sampling = false;
    await sampler;
    const m2 = await scrape(gw);
    await sleep(2000);
    const m3 = await scrape(gw);
    const ordinaryOpen = sender.isOpen && receiver.isOpen;

    // Main-API calls from attackers, as the dev API recorded them.
    const attackerTokens = new Set(Object.values(tokens));
    const isAttacker = (r: DevApi['requests'][number]) => {
      const body = (r.body ?? {}) as { token?: unknown };
      const token = r.op === 'verify' && typeof body.token === 'string' ? body.token : (r.headers.authorization ?? '').replace(/^Bearer /, '');
      return token.startsWith('junk-') || attackerTokens.has(token);
    };
    const during = api.requests.slice(requestsBefore);
    const attackerCalls: Record<string, number> = {};
    for (const r of during) if (isAttacker(r)) attackerCalls[r.op] = (attackerCalls[r.op] ?? 0) + 1;

    // Saves that reached the main API after their connection had closed (queued work must be dropped).
    const closedAt = new Map(attack.closeLog.map(([slot, gen, at]) => [`${slot}:${gen}`, at]));
    let lateSaves = 0;
    let lateSavesMaxPerConn = 0;
    for (const [conn, times] of proxy.stats.saveTimes) {
      const at = closedAt.get(conn);
      if (at === undefined) continue;
      const late = times.filter((t) => t > at + 20).length;
      lateSaves += late;
      lateSavesMaxPerConn = Math.max(lateSavesMaxPerConn, late);
    }
    const junkCounts = [...proxy.stats.junkVerifies.values()];
    const junkConnections = attack.roles.junk?.connections ?? 0;
    const attackerConnections = Object.values(attack.roles).reduce((a, r) => a + r.connections, 0);
    const attackerFrames = Object.values(attack.roles).reduce((a, r) => a + r.frames, 0);

    const memory = {
      before: { rss_mib: mib(total(m0, 'message_service_process_resident_memory_bytes')), heap_mib: mib(total(m0, 'message_service_nodejs_heap_size_used_bytes')) },
      after_quiet: { rss_mib: mib(total(m1, 'message_service_process_resident_memory_bytes')), heap_mib: mib(total(m1, 'message_service_nodejs_heap_size_used_bytes')) },
      peak_abuse: { rss_mib: mib(peak.rss), heap_mib: mib(peak.heap) },
      after_abuse: { rss_mib: mib(total(m2, 'message_service_process_resident_memory_bytes')), heap_mib: mib(total(m2, 'message_service_nodejs_heap_size_used_bytes')) },
      after_2s: { rss_mib: mib(total(m3, 'message_service_process_resident_memory_bytes')), heap_mib: mib(total(m3, 'message_service_nodejs_heap_size_used_bytes')) },
    };
    const gatewayCpuAbuse = total(m2, 'message_service_process_cpu_seconds_total') - total(m1, 'message_service_process_cpu_seconds_total');
    const gateway = {
      cpu_seconds_abuse: Number(gatewayCpuAbuse.toFixed(2)),
      peak_connections: peak.connections,
      // prom-client resets its loop-delay histogram at every scrape: quiet = over the quiet phase, abuse = over the 250 ms samples.
      loop_delay_max_quiet_ms: Number((total(m1, 'message_service_nodejs_eventloop_lag_max_seconds') * 1000).toFixed(1)),
      loop_delay_max_abuse_ms: Number((peak.lagMax * 1000).toFixed(1)),
      connections_after_2s: total(m3, 'message_service_connections'),
      registrations_after_2s: total(m3, 'message_service_registrations'),
      closes_by_code: diff(byLabel(m2, 'message_service_connection_closes_total', 'code'), byLabel(m1, 'message_service_connection_closes_total', 'code')),
      rejected_by_code: diff(byLabel(m2, 'message_service_ops_total', 'result', (l) => l.result !== 'ok'), byLabel(m1, 'message_service_ops_total', 'result', (l) => l.result !== 'ok')),
      upstream_calls_by_op: diff(byLabel(m2, 'message_service_upstream_request_duration_seconds_count', 'op'), byLabel(m1, 'message_service_upstream_request_duration_seconds_count', 'op')),
      ordinary_quiet_upstream_calls: diff(byLabel(m1, 'message_service_upstream_request_duration_seconds_count', 'op'), byLabel(m0, 'message_service_upstream_request_duration_seconds_count', 'op')),
    };
    const upstream = {
      attacker_calls_at_main_api: attackerCalls,
      attack_seconds: Number(attackSeconds.toFixed(1)),
      attacker_calls_per_second: Number((Object.values(attackerCalls).reduce((a, b) => a + b, 0) / attackSeconds).toFixed(1)),
      attacker_connections: attackerConnections,
      junk_connections: junkConnections,
      junk_verifies_per_connection_max: junkCounts.length ? Math.max(...junkCounts) : 0,
      junk_verifies_per_connection_mean: junkCounts.length ? Number((junkCounts.reduce((a, b) => a + b, 0) / Math.max(1, junkConnections)).toFixed(2)) : 0,
      in_flight_per_attacker_connection_max: proxy.stats.perConnectionInFlightMax,
      in_flight_per_attacker_connection_max_at: proxy.stats.perConnectionInFlightMaxAt,
      attacker_in_flight_max: proxy.stats.attackerInFlightMax,
      ordinary_in_flight_max: proxy.stats.ordinaryInFlightMax,
      saves_after_close: lateSaves,
      saves_after_close_max_per_connection: lateSavesMaxPerConn,
      proxy_calls: proxy.stats.calls,
    };

    // ---- print ----
    const row = (r: PhaseResult) => ({
      phase: r.phase,
      samples: r.samples,
      lost: r.lost_acks + r.lost_deliveries,
      refused: Object.entries(r.errors).map(([k, v]) => `${k}:${v}`).join(' ') || '-',
      'ack p50': r.ack_ms.p50,
      'ack p95': r.ack_ms.p95,
      'ack p99': r.ack_ms.p99,
      'ack max': r.ack_ms.max,
      'dlv p50': r.delivery_ms.p50,
      'dlv p99': r.delivery_ms.p99,
      presence: r.presence_frames_to_receiver,
      '→api p99': r.to_main_api_ms.p99,
      'api p99': r.main_api_ms.p99,
      'api→ack p99': r.main_api_to_ack_ms.p99,
      'gen lag p99': r.generator_loop_delay_p99_ms,
    });
    console.log(
      `\nOrdinary user, ms (${1000 / SEND_EVERY_MS} msg/s). refused: error answers instead of acks (not in the percentiles); ` +
        `→api / api / api→ack: send → save reaches the main API / the save / its answer → ack; gen lag: this process's event-loop delay`,
    );
    console.table([row(quiet), row(abuse)]);
    console.log(`Attackers (${ATTACKERS} slots, ${attackerFrames} frames, ${attackerConnections} connections in ${attackSeconds.toFixed(1)} s)`);
    console.table(
      Object.fromEntries(
        Object.entries(attack.roles).map(([role, r]) => [
          role,
          {
            slots: r.slots,
            conns: r.connections,
            frames: r.frames,
            MiB: mib(r.bytes),
            acks: r.acks,
            closes: Object.entries(r.closes).map(([k, v]) => `${k}:${v}`).join(' '),
            errors: Object.entries(r.errors).map(([k, v]) => `${k}:${v}`).join(' '),
          },
        ]),
      ),
    );
    console.log('Main API, calls from attackers during abuse:', JSON.stringify(attackerCalls), `(${upstream.attacker_calls_per_second}/s)`);
    console.log(
      `  junk verifies per connection max ${upstream.junk_verifies_per_connection_max} mean ${upstream.junk_verifies_per_connection_mean}; ` +
        `in flight per attacker connection max ${upstream.in_flight_per_attacker_connection_max} (${upstream.in_flight_per_attacker_connection_max_at}); ` +
        `attackers in flight max ${upstream.attacker_in_flight_max}; saves after close ${lateSaves}`,
    );
    console.log('Gateway:', JSON.stringify(gateway));
    console.table(memory);

    const ratio = abuse.ack_ms.p99 / quiet.ack_ms.p99;
    const checks = {
      ack_p99_within_2x: ratio <= 2,
      ordinary_not_refused_or_lost: abuse.lost_acks + abuse.lost_deliveries === 0 && Object.keys(abuse.errors).length === 0 && ordinaryOpen,
      upstream_per_connection_bounded: proxy.stats.perConnectionInFlightMax <= MAX_UPSTREAM_PER_CONNECTION,
      // The fifth refusal closes 4401; by then up to MAX_UPSTREAM more verifies may have been started.
      junk_verifies_bounded: upstream.junk_verifies_per_connection_max <= MAX_AUTH_FAILURES + MAX_UPSTREAM_PER_CONNECTION,
      queued_writes_dropped_on_close: lateSaves === 0,
      // Heap/RSS move with GC timing (no forced GC in the gateway): the check is that no attacker state is left.
      attacker_state_released: gateway.connections_after_2s === 2 && gateway.registrations_after_2s === 2,
    };
    console.log(
      `\nVerdict: ordinary ack p99 under abuse ${abuse.ack_ms.p99} ms vs quiet ${quiet.ack_ms.p99} ms = ${ratio.toFixed(2)}× ` +
        `(${ratio <= 2 ? 'within' : 'NOT within'} 2×); delivery p99 ${abuse.delivery_ms.p99} vs ${quiet.delivery_ms.p99} ms.`,
    );
    const callsTotal = Object.values(attackerCalls).reduce((a, b) => a + b, 0);
    console.log(
      `Main API from attackers: ${callsTotal} calls (${JSON.stringify(attackerCalls)}) in ${attackSeconds.toFixed(1)} s over ${attackerConnections} connections; ` +
        `per connection at most ${proxy.stats.perConnectionInFlightMax} in flight (limit ${MAX_UPSTREAM_PER_CONNECTION}), ` +
        `at most ${upstream.junk_verifies_per_connection_max} junk verifies (${MAX_AUTH_FAILURES} refusals + ${MAX_UPSTREAM_PER_CONNECTION} in flight), ${lateSaves} saves after close: ` +
        `${checks.upstream_per_connection_bounded && checks.junk_verifies_bounded && checks.queued_writes_dropped_on_close ? 'bounded per connection' : 'NOT bounded'}; ` +
        `the total grows with reconnects; attackers held up to ${proxy.stats.attackerInFlightMax} of the gateway's 64 upstream connections at once.`,
    );
    for (const [k, v] of Object.entries(checks)) console.log(`  ${v ? 'ok  ' : 'FAIL'} ${k}`);

    const file = new URL('./results/abuse.json', import.meta.url);
    const previous = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { results?: Record<string, unknown> }) : {};
    const result = {
      date: new Date().toISOString(),
      node: process.version,
      pinned,
      /** 1-minute load average of the machine at the end: other work on a shared machine skews everything. */
      load_average_1m: Number(loadavg()[0]!.toFixed(2)),
      engine: ENGINE,
      settings: { attackers: ATTACKERS, roles: process.env.BENCH_ROLES ?? 'all', quiet_ms: QUIET_MS, abuse_ms: ABUSE_MS, send_every_ms: SEND_EVERY_MS, base_delay_ms: BASE_DELAY_MS, attacker_save_delay_ms: SLOW_SAVE_MS, attacker_verify_delay_ms: SLOW_VERIFY_MS },
      phases: [quiet, abuse],
      ack_p99_ratio: Number(ratio.toFixed(2)),
      checks,
      attackers: attack.roles,
      upstream,
      gateway,
      memory,
      seconds: Number(((performance.now() - started) / 1000).toFixed(1)),
    };
    // One entry per engine for the default scenario; variants (BENCH_ROLES, BENCH_ATTACKERS) get their own key.
    const key = `${ENGINE}${process.env.BENCH_ROLES ? `+${process.env.BENCH_ROLES}` : ''}${ATTACKERS !== 20 ? `x${ATTACKERS}` : ''}`;
    writeFileSync(file, `${JSON.stringify({ results: { ...(previous.results ?? {}), [key]: result } }, null, 2)}\n`);
    console.log(`written to bench/results/abuse.json (${key}); ${result.seconds} s; machine load average ${result.load_average_1m}`);
    sender.close();
    receiver.close();
  } finally {
    await worker?.terminate();
    await gw.stop();
    await proxy.close();
    await api.close();
    await redis?.close();
  }
}

if (isMainThread) {
  await main();
  process.exit(0);
} else {
  await attackerMain(workerData as WorkerInput);
}
