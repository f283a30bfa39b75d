import { WebSocket, type ClientOptions } from 'ws';

export type Frame = Record<string, unknown> & { type: string };
export type Match = Partial<Record<string, unknown>> | ((f: Frame) => boolean);

/** A real WebSocket client that records every frame and lets a test wait for one. */
export class TestClient {
  readonly frames: Frame[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private waiters: Array<{ match: (f: Frame) => boolean; from: number; resolve: (f: Frame) => void }> = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? '' : data.toString();
      let frame: Frame;
      try {
        frame = JSON.parse(text) as Frame;
      } catch {
        frame = { type: '__unparseable', text };
      }
      const index = this.frames.push(frame) - 1;
      this.waiters = this.waiters.filter((w) => {
        if (index >= w.from && w.match(frame)) {
          w.resolve(frame);
          return false;
        }
        return true;
      });
    });
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('error', () => undefined);
  }

  static connect(url: string, options: ClientOptions = {}): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      // A bounded handshake: a gateway that never answers the upgrade fails the test instead of hanging it.
      const ws = new WebSocket(url, { handshakeTimeout: 10_000, ...options });
      const client = new TestClient(ws);
      ws.once('open', () => resolve(client));
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`upgrade refused ${res.statusCode}`), { status: res.statusCode })));
      ws.once('error', reject);
    });
  }

  send(frame: object): void {
    this.ws.send(JSON.stringify(frame));
  }

  sendRaw(data: string | Buffer, binary = false): void {
    this.ws.send(data, { binary });
  }

  /** The first frame (at or after index `from`, default: any not yet consumed by index) matching. */
  next(match: Match = () => true, timeoutMs = 3000, from = 0): Promise<Frame> {
    const fn = toFn(match);
    const found = this.frames.slice(from).find(fn);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = { match: fn, from, resolve: (f: Frame) => (clearTimeout(timer), resolve(f)) };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out waiting for ${describe(match)}; got ${JSON.stringify(this.frames.slice(-5))}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Sends `frame` and waits for the first matching answer that arrives after it. */
  async request(frame: object, match: Match, timeoutMs = 3000): Promise<Frame> {
    const from = this.frames.length;
    this.send(frame);
    return this.next(match, timeoutMs, from);
  }

  all(match: Match): Frame[] {
    return this.frames.filter(toFn(match));
  }

  async register(token: string, chatId: number | string, timeoutMs = 3000): Promise<Frame> {
    // Its own answer: not an error of another request still out, nor another chat's `registered`.
    const answers = (f: Frame) => (f.type === 'registered' && String(f.chat_id) === String(chatId)) || (f.type === 'error' && (f.op === 'register' || f.op === undefined));
    const answer = await this.request({ type: 'register', token, chat_id: chatId }, answers, timeoutMs);
    if (answer.type !== 'registered') throw new Error(`register failed: ${JSON.stringify(answer)}`);
    return answer;
  }

  close(): void {
    this.ws.close();
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }
}

function toFn(match: Match): (f: Frame) => boolean {
  if (typeof match === 'function') return match;
  return (f) => Object.entries(match).every(([k, v]) => JSON.stringify(f[k]) === JSON.stringify(v));
}

function describe(match: Match): string {
  return typeof match === 'function' ? match.toString().slice(0, 120) : JSON.stringify(match);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Asserts that no frame matching arrives within `ms`. */
export async function expectNone(client: TestClient, match: Match, ms = 300, from = 0): Promise<void> {
  await sleep(ms);
  const hit = client.frames.slice(from).find(toFn(match));
  if (hit) throw new Error(`unexpected frame ${JSON.stringify(hit)}`);
}

/**
 * Matches an announcement that `user` is `status`: a `presence` frame, or a `presence_batch`
 * (several users' changes of one announcement window) that lists the user under `status`.
 */
export function presence(user: number | string, status: 'online' | 'offline'): (f: Frame) => boolean {
  return (f) =>
    (f.type === 'presence' && f.user_id === user && f.status === status) ||
    (f.type === 'presence_batch' && Array.isArray(f[status]) && (f[status] as unknown[]).includes(user));
}
