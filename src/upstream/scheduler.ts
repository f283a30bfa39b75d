import { RequestError } from '../protocol/errors.js';
import { whenReleased, type Hold } from '../util/settled.js';

/** Given to a call: `hold(drained)` keeps its place in the pool until `drained` settles (see util/settled.ts). */
export type { Hold };

interface Waiter {
  readonly start: () => void;
  readonly refuse: (err: Error) => void;
  readonly since: number;
}

interface Queue {
  readonly anonymous: boolean;
  readonly calls: Waiter[];
}

/**
 * Shares the keep-alive pool to the main API fairly between users. At most `capacity` calls
 * (UPSTREAM_CONNECTIONS) run at once; when the pool is full, waiting calls are queued per
 * party and started round-robin across parties, so a party with many calls waiting — many
 * connections, or slow calls of its own — can delay another party's call by at most one turn,
 * never by its whole backlog.
 *
 * Connections not yet bound to a user need no account, so there can be any number of them: their
 * calls (verifies of registers) hold at most `anonymousCapacity` places together, and the rest of
 * the pool always serves registered users — hundreds of sockets with junk tokens and a main API
 * slow to refuse them used to take every place, and every user's save waited behind them.
 *
 * A call that waited longer than `maxWaitMs` (UPSTREAM_TIMEOUT_MS) for its place is refused
 * `upstream_unavailable` (retryable; nothing was sent) rather than started late; one that starts
 * has UPSTREAM_TIMEOUT_MS of its own. Checked when a place frees, so at most one call's time late.
 */
export class FairScheduler {
  private running = 0;
  private runningAnonymous = 0;
  /** Parties with calls waiting, in round-robin order (Map keeps insertion order). */
  private readonly waiting = new Map<string, Queue>();

  constructor(
    private readonly capacity: number,
    private readonly maxWaitMs: number,
    private readonly anonymousCapacity = Math.max(1, Math.floor(capacity / 2)),
  ) {}

  /**
   * Runs `call` for `party` (a user, or a connection not yet bound to one: `anonymous`). Plain
   * promise chains, not an async function: this runs for every main-API call (fewer ticks and promises).
   */
  run<T>(party: string, anonymous: boolean, call: (hold: Hold) => Promise<T>): Promise<T> {
    if (this.waiting.size === 0 && this.hasRoom(anonymous)) {
      this.take(anonymous);
      return this.start(anonymous, call);
    }
    const started = new Promise<void>((start, refuse) => this.enqueue(party, anonymous, { start, refuse, since: performance.now() }));
    // The pool may have room for this party while others wait (anonymous ones past their share).
    this.pump();
    return started.then(() => this.start(anonymous, call));
  }

  /** Calls waiting for a place in the pool. */
  get queued(): number {
    let n = 0;
    for (const queue of this.waiting.values()) n += queue.calls.length;
    return n;
  }

  private hasRoom(anonymous: boolean): boolean {
    return this.running < this.capacity && (!anonymous || this.runningAnonymous < this.anonymousCapacity);
  }

  private take(anonymous: boolean): void {
    this.running++;
    if (anonymous) this.runningAnonymous++;
  }

  private start<T>(anonymous: boolean, call: (hold: Hold) => Promise<T>): Promise<T> {
    return whenReleased(call, () => this.release(anonymous));
  }

  /** A call's place is free again: the next waiting call in turn may take it. */
  private release(anonymous: boolean): void {
    this.running--;
    if (anonymous) this.runningAnonymous--;
    this.pump();
  }

  private enqueue(party: string, anonymous: boolean, waiter: Waiter): void {
    const queue = this.waiting.get(party);
    if (queue === undefined) this.waiting.set(party, { anonymous, calls: [waiter] });
    else queue.calls.push(waiter);
  }

  /** Starts waiting calls while there is room, the next eligible party first. */
  private pump(): void {
    const now = performance.now();
    while (this.running < this.capacity) {
      const next = this.nextParty();
      if (next === null) return;
      const [key, queue] = next;
      const waiter = queue.calls.shift()!;
      // To the back of the line: the other parties go first next time.
      this.waiting.delete(key);
      if (queue.calls.length > 0) this.waiting.set(key, queue);
      if (now - waiter.since > this.maxWaitMs) {
        waiter.refuse(new RequestError('upstream_unavailable', `main API busy: no free connection within ${this.maxWaitMs} ms`));
        continue;
      }
      this.take(queue.anonymous);
      waiter.start();
    }
  }

  /** The first party in turn that may start a call now: anonymous ones wait while their share is taken. */
  private nextParty(): [string, Queue] | null {
    const anonymousFull = this.runningAnonymous >= this.anonymousCapacity;
    for (const entry of this.waiting) {
      if (!anonymousFull || !entry[1].anonymous) return entry;
    }
    return null;
  }
}
