/** The load-generator processes (bench/gen/worker.ts), pinned to the generator core, driven over IPC. */
import type { Command, ConnectReply, ConnSpec, Protocol, RunReply } from '../gen/worker.js';
import { Histogram, now } from './payload.js';
import { GENERATOR_CORE, ROOT, cpuSeconds, spawnNode, type Proc } from './procs.js';

type Body<T extends Command['type']> = Omit<Extract<Command, { type: T }>, 'id' | 'type'>;

export class Generator {
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();

  private constructor(
    readonly index: number,
    readonly proc: Proc,
  ) {
    proc.child.on('message', (raw) => {
      const msg = raw as { id: number; error?: string } & Record<string, unknown>;
      const w = this.waiting.get(msg.id);
      if (!w) return;
      this.waiting.delete(msg.id);
      if (msg.error !== undefined) w.reject(new Error(`generator ${index}: ${msg.error}`));
      else w.resolve(msg);
    });
    proc.child.once('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error(`generator ${index} exited:\n${proc.err.slice(-2000)}`));
      this.waiting.clear();
    });
  }

  static async start(index: number): Promise<Generator> {
    const proc = spawnNode(`generator#${index}`, GENERATOR_CORE, `${ROOT}/bench/gen/worker.ts`, { WORKER_ID: String(index) }, { ipc: true, nodeArgs: ['--max-old-space-size=2048'] });
    await proc.waitFor(/generator ready/);
    return new Generator(index, proc);
  }

  private request<T>(type: Command['type'], body: object): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: (v) => resolve(v as T), reject });
      this.proc.child.send({ id, type, ...body });
    });
  }

  connect(body: Body<'connect'>): Promise<ConnectReply> {
    return this.request('connect', body);
  }

  run(body: Body<'run'>): Promise<RunReply> {
    return this.request('run', body);
  }

  close(): Promise<void> {
    return this.request('close', {});
  }

  cpu(): number {
    return cpuSeconds(this.proc.pid);
  }

  async stop(): Promise<void> {
    await this.request('exit', {}).catch(() => undefined);
    await this.proc.stop();
  }
}

/** Grows on demand; generators are reused across cells (closed connections in between). */
export class GeneratorPool {
  private readonly gens: Generator[] = [];

  async take(n: number): Promise<Generator[]> {
    while (this.gens.length < n) this.gens.push(await Generator.start(this.gens.length));
    return this.gens.slice(0, n);
  }

  cpu(n = this.gens.length): number {
    return this.gens.slice(0, n).reduce((s, g) => s + g.cpu(), 0);
  }

  async stop(): Promise<void> {
    for (const g of this.gens) await g.stop();
  }
}

/** Connects `specs` spread over `gens` (spec i → generator i mod n), in parallel; returns where each landed. */
export async function connectAll(
  gens: Generator[],
  protocol: Protocol,
  specs: ConnSpec[],
  concurrency: number,
): Promise<{ ms: number; failed: number; firstError: string | null; owner: Array<[gen: number, local: number]>; replayed: number; recovered: number }> {
  const parts: ConnSpec[][] = gens.map(() => []);
  const owner: Array<[number, number]> = [];
  specs.forEach((s, i) => {
    const g = i % gens.length;
    owner.push([g, parts[g]!.length]);
    parts[g]!.push(s);
  });
  const started = performance.now();
  const replies = await Promise.all(
    gens.map((g, i) => g.connect({ protocol, conns: parts[i]!, concurrency, ...(gens.length > 1 ? { localAddress: `127.0.0.${2 + i}` } : {}) })),
  );
  return {
    ms: performance.now() - started,
    failed: replies.reduce((s, r) => s + r.failed, 0),
    firstError: replies.find((r) => r.firstError !== null)?.firstError ?? null,
    owner,
    replayed: replies.reduce((s, r) => s + r.replayed, 0),
    recovered: replies.reduce((s, r) => s + r.recovered, 0),
  };
}

export interface PhaseResult {
  sent: number;
  expected: number;
  received: number;
  bytes: number;
  lost: number;
  hist: Histogram;
  sendLagMs: number;
  /** The worst generator's event-loop delay, ms (RunReply). */
  loopP99Ms: number;
  loopMaxMs: number;
}

/** One timed phase on every generator at once; `senders` use global connection indexes. */
export async function runPhase(
  gens: Generator[],
  owner: Array<[number, number]>,
  senders: Array<[conn: number, chat: number, members: number]>,
  rate: number,
  durationMs: number,
  drainMs: number,
): Promise<PhaseResult> {
  const local: Array<Array<[number, number, number]>> = gens.map(() => []);
  for (const [conn, chat, members] of senders) {
    const [g, l] = owner[conn]!;
    local[g]!.push([l, chat, members]);
  }
  const startAt = now() + 100;
  const replies = await Promise.all(
    gens.map((g, i) => {
      const share = senders.length === 0 ? 0 : (rate * local[i]!.length) / senders.length;
      return g.run({ startAt, durationMs, rate: share, senders: local[i]!, drainMs });
    }),
  );
  const hist = new Histogram();
  for (const r of replies) hist.merge(Histogram.fromJSON(r.hist));
  return {
    sent: replies.reduce((s, r) => s + r.sent, 0),
    expected: replies.reduce((s, r) => s + r.expected, 0),
    received: replies.reduce((s, r) => s + r.received, 0),
    bytes: replies.reduce((s, r) => s + r.bytes, 0),
    lost: replies.reduce((s, r) => s + r.lost, 0),
    hist,
    sendLagMs: Math.max(...replies.map((r) => r.sendLagMs)),
    loopP99Ms: Math.max(...replies.map((r) => r.loopP99Ms)),
    loopMaxMs: Math.max(...replies.map((r) => r.loopMaxMs)),
  };
}

export async function closeAll(gens: Generator[]): Promise<void> {
  await Promise.all(gens.map((g) => g.close()));
}
