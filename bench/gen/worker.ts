/**
 * Load generator process, driven by bench/run.ts over IPC. One adapter per protocol:
 *   gateway  — this gateway's protocol (register with token `u<id>`, `message`, acks ignored);
 *   room     — the hand-written room protocol of bench/peers/ws-*.ts;
 *   socketio — Socket.IO 4 (socket.io-client, websocket transport only).
 * Every adapter sends the same `data` object (bench/lib/payload.ts) with its send time in
 * `sent_at`, and every receiver records receipt − sent_at. ws frames are not JSON-parsed on
 * receipt (the timestamp is read from the bytes); Socket.IO's client parses every packet itself.
 *
 * Commands (from the parent): connect, run, close, exit; each answered with the same `id`.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { io, type Socket } from 'socket.io-client';
import { WebSocket } from 'ws';
import { Histogram, messageData, now, readSentAt, type MessageData } from '../lib/payload.js';

export type Protocol = 'gateway' | 'room' | 'socketio';

export interface ConnSpec {
  url: string;
  user: number;
  chats: number[];
  /**
   * Gateway only: register with `since: {seq: 0, epoch}`, the epoch this generator's earlier
   * `registered` answer for the chat gave, so everything the chat's history holds is replayed.
   */
  resume?: boolean;
}

export type Command =
  | { id: number; type: 'connect'; protocol: Protocol; conns: ConnSpec[]; localAddress?: string; concurrency: number }
  | { id: number; type: 'run'; startAt: number; durationMs: number; rate: number; senders: Array<[conn: number, chat: number, members: number]>; drainMs: number }
  | { id: number; type: 'close' }
  | { id: number; type: 'exit' };

export interface ConnectReply {
  ok: number;
  failed: number;
  firstError: string | null;
  ms: number;
  /** Broadcasts received before the connection's last `registered` / `joined` (a replay). */
  replayed: number;
  /** `registered` answers that said `"recovered":true`. */
  recovered: number;
}

export interface RunReply {
  sent: number;
  expected: number;
  received: number;
  /** Payload bytes of the received broadcasts (ws adapters only; 0 for Socket.IO). */
  bytes: number;
  hist: ReturnType<Histogram['toJSON']>;
  /** Connections that closed without being asked to during the run. */
  lost: number;
  /** Largest lag of the send loop behind its schedule, ms (a busy generator shows here). */
  sendLagMs: number;
  /**
   * This generator's event-loop delay over the run (sending and draining), ms: a frame that
   * arrives while the loop is busy waits that long before its latency is taken, so a p99 of
   * the loop delay near the measured p99 says the generator, not the server, made the latency.
   */
  loopP99Ms: number;
  loopMaxMs: number;
}

interface Conn {
  send(chat: number, data: MessageData): void;
  close(): Promise<void>;
  readonly open: boolean;
}

const WORKER = process.env.WORKER_ID ?? '0';
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let conns: Conn[] = [];
let lost = 0;
/** Each chat's epoch, from the `registered` answers this generator got (gateway only). */
const epochs = new Map<number, string>();
let replayed = 0;
let recovered = 0;
let phase: { from: number; to: number; hist: Histogram; received: number; bytes: number } | null = null;

/** `bytes`: the frame's payload length where the adapter sees it (ws), else 0. */
function deliver(sentAt: number, bytes: number): void {
  const p = phase;
  if (p === null || !(sentAt >= p.from && sentAt <= p.to)) return;
  p.hist.record(now() - sentAt);
  p.received++;
  p.bytes += bytes;
}

const REGISTERED = Buffer.from('"type":"registered"');
const RECOVERED = Buffer.from('"recovered":true');
const ERROR = Buffer.from('"type":"error"');
const JOINED = Buffer.from('"type":"joined"');

/** A ws connection (gateway or room protocol): `hello` frames are sent on open, `done` frames counted back. */
function connectWs(spec: ConnSpec, localAddress: string | undefined, hello: (chat: number) => string, done: Buffer, sendFrame: (chat: number, data: MessageData) => string): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(spec.url, { perMessageDeflate: false, handshakeTimeout: 60_000, ...(localAddress ? { localAddress } : {}) });
    let pending = spec.chats.length;
    let closing = false;
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error('no answer to join/register within 60 s')), 60_000);
    const conn: Conn = {
      send: (chat, data) => ws.send(sendFrame(chat, data)),
      close: () =>
        new Promise<void>((r) => {
          closing = true;
          if (ws.readyState === WebSocket.CLOSED) return r();
          ws.once('close', () => r());
          ws.close();
          setTimeout(() => (ws.terminate(), r()), 3000).unref();
        }),
      get open() {
        return ws.readyState === WebSocket.OPEN;
      },
    };
    ws.on('open', () => {
      for (const chat of spec.chats) ws.send(hello(chat));
    });
    ws.on('message', (data: Buffer) => {
      const t = readSentAt(data);
      if (t === t) {
        // not NaN
        if (pending > 0) replayed++;
        return deliver(t, data.length);
      }
      if (pending > 0) {
        if (data.indexOf(done) >= 0) {
          if (done === REGISTERED) noteRegistered(data);
          if (--pending === 0 && !settled) {
            settled = true;
            clearTimeout(timer);
            resolve(conn);
          }
        } else if (data.indexOf(ERROR) >= 0) fail(new Error(data.toString().slice(0, 300)));
      }
    });
    ws.on('error', (err) => fail(err));
    ws.on('close', () => {
      if (settled && !closing) lost++;
      fail(new Error('closed before joining'));
    });
  });
}

/** Keeps the chat's epoch; counts a recovery. Parsed only at registration, never per delivery. */
function noteRegistered(data: Buffer): void {
  if (data.indexOf(RECOVERED) >= 0) recovered++;
  const f = JSON.parse(data.toString()) as { chat_id?: number; epoch?: string };
  if (typeof f.chat_id === 'number' && typeof f.epoch === 'string') epochs.set(f.chat_id, f.epoch);
}

function connectGateway(spec: ConnSpec, localAddress: string | undefined): Promise<Conn> {
  const since = (chat: number) => (spec.resume === true && epochs.has(chat) ? { since: { seq: 0, epoch: epochs.get(chat) } } : {});
  return connectWs(
    spec,
    localAddress,
    (chat) => JSON.stringify({ type: 'register', token: `u${spec.user}`, chat_id: chat, ...since(chat) }),
    REGISTERED,
    (chat, data) => `{"type":"message","chat_id":${chat},"data":${JSON.stringify(data)}}`,
  );
}

function connectRoom(spec: ConnSpec, localAddress: string | undefined): Promise<Conn> {
  return connectWs(
    spec,
    localAddress,
    (chat) => JSON.stringify({ type: 'join', room: chat, user: spec.user }),
    JOINED,
    (chat, data) => `{"type":"message","room":${chat},"data":${JSON.stringify(data)}}`,
  );
}

function connectSocketIo(spec: ConnSpec, localAddress: string | undefined): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const socket: Socket = io(spec.url, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      timeout: 60_000,
      perMessageDeflate: false,
      ...(localAddress ? { localAddress } : {}),
    } as unknown as Parameters<typeof io>[1]);
    let closing = false;
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      socket.disconnect();
      reject(err);
    };
    const conn: Conn = {
      send: (chat, data) => void socket.emit('message', { room: String(chat), data }),
      close: () =>
        new Promise<void>((r) => {
          closing = true;
          socket.disconnect();
          r();
        }),
      get open() {
        return socket.connected;
      },
    };
    socket.on('message', (msg: { data?: { sent_at?: number } }) => {
      const t = msg.data?.sent_at;
      if (typeof t === 'number') deliver(t, 0);
    });
    socket.on('connect_error', (err) => fail(err));
    socket.on('disconnect', () => {
      if (settled && !closing) lost++;
      fail(new Error('disconnected before joining'));
    });
    socket.on('connect', () => {
      Promise.all(spec.chats.map((chat) => socket.timeout(60_000).emitWithAck('join', String(chat), spec.user))).then(
        () => {
          if (settled) return;
          settled = true;
          resolve(conn);
        },
        (err: Error) => fail(err),
      );
    });
  });
}

const CONNECTORS: Record<Protocol, (spec: ConnSpec, localAddress: string | undefined) => Promise<Conn>> = {
  gateway: connectGateway,
  room: connectRoom,
  socketio: connectSocketIo,
};

async function connect(cmd: Extract<Command, { type: 'connect' }>): Promise<ConnectReply> {
  const started = performance.now();
  const connector = CONNECTORS[cmd.protocol];
  const out: Conn[] = new Array<Conn>(cmd.conns.length);
  // Epochs are kept only for a reconnect that resumes; a fresh set of connections starts clean.
  if (!cmd.conns.some((c) => c.resume === true)) epochs.clear();
  replayed = 0;
  recovered = 0;
  let next = 0;
  let failed = 0;
  let firstError: string | null = null;
  const lane = async () => {
    while (next < cmd.conns.length) {
      const i = next++;
      try {
        out[i] = await connector(cmd.conns[i]!, cmd.localAddress);
      } catch (err) {
        failed++;
        firstError ??= (err as Error).message;
        out[i] = { send: () => undefined, close: async () => undefined, open: false };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(cmd.concurrency, cmd.conns.length) }, lane));
  conns = out;
  lost = 0;
  return { ok: cmd.conns.length - failed, failed, firstError, ms: performance.now() - started, replayed, recovered };
}

let msgSeq = 0;

async function run(cmd: Extract<Command, { type: 'run' }>): Promise<RunReply> {
  const to = cmd.startAt + cmd.durationMs;
  phase = { from: cmd.startAt, to, hist: new Histogram(), received: 0, bytes: 0 };
  const lostBefore = lost;
  while (now() < cmd.startAt) await sleep(Math.min(5, cmd.startAt - now()));
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  let sent = 0;
  let expected = 0;
  let k = 0;
  let maxLag = 0;
  const senders = cmd.senders;
  if (senders.length > 0 && cmd.rate > 0) {
    const interval = 1000 / cmd.rate;
    for (;;) {
      const t = now();
      if (t >= to) break;
      const due = Math.min(Math.floor((t - cmd.startAt) / interval) + 1, Math.ceil(cmd.durationMs / interval));
      if (due - sent > 1) maxLag = Math.max(maxLag, (due - sent - 1) * interval);
      while (sent < due) {
        const [ci, chat, members] = senders[k++ % senders.length]!;
        const conn = conns[ci]!;
        sent++;
        if (!conn.open) continue;
        conn.send(chat, messageData(`g${WORKER}-${++msgSeq}`, now()));
        expected += members - 1;
      }
      await sleep(1);
    }
  } else {
    await sleep(Math.max(0, to - now()));
  }
  await sleep(cmd.drainMs);
  loop.disable();
  const p = phase;
  phase = null;
  // The histogram is in ns and includes the 1 ms sampling interval itself.
  const loopMs = (ns: number) => Math.max(0, ns / 1e6 - 1);
  return {
    sent,
    expected,
    received: p.received,
    bytes: p.bytes,
    hist: p.hist.toJSON(),
    lost: lost - lostBefore,
    sendLagMs: maxLag,
    loopP99Ms: loopMs(loop.percentile(99)),
    loopMaxMs: loopMs(loop.max),
  };
}

async function closeAll(): Promise<void> {
  const all = conns;
  conns = [];
  for (let i = 0; i < all.length; i += 500) await Promise.all(all.slice(i, i + 500).map((c) => c.close()));
}

process.on('message', (raw) => {
  const cmd = raw as Command;
  const reply = (body: object) => process.send?.({ id: cmd.id, ...body });
  const task: Promise<object> =
    cmd.type === 'connect' ? connect(cmd) : cmd.type === 'run' ? run(cmd) : cmd.type === 'close' ? closeAll().then(() => ({})) : Promise.resolve({});
  task.then(
    (body) => {
      reply(body);
      if (cmd.type === 'exit') setTimeout(() => process.exit(0), 10);
    },
    (err: Error) => reply({ error: err.stack ?? err.message }),
  );
});
process.on('disconnect', () => process.exit(0));
process.stdout.write('{"msg":"generator ready"}\n');
