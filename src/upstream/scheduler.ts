import { whenSettled } from '../util/settled.js';

/**
 * Shares the keep-alive pool to the main API fairly between users. At most `capacity` calls
 * (UPSTREAM_CONNECTIONS) run at once; when the pool is full, waiting calls are queued per
 * party (a user, or a connection not yet bound to one) and started round-robin across parties,
 * so a party with many calls waiting — many connections, or slow calls of its own — can delay
 * another party's call by at most one turn, never by its whole backlog.
 */
export class FairScheduler {
  private running = 0;
  /** Parties with calls waiting, in round-robin order (Map keeps insertion order). */
  private readonly waiting = new Map<string, Array<() => void>>();

  constructor(private readonly capacity: number) {}

  /** Plain promise chains, not an async function: this runs for every main-API call (fewer ticks and promises). */
  run<T>(party: string, call: () => Promise<T>): Promise<T> {
    if (this.running < this.capacity && this.waiting.size === 0) {
      this.running++;
      return this.start(call);
    }
    return new Promise<void>((start) => this.enqueue(party, start)).then(() => this.start(call));
  }

  private start<T>(call: () => Promise<T>): Promise<T> {
    return whenSettled(call, () => this.next());
  }

  /** Calls waiting for a place in the pool. */
  get queued(): number {
    let n = 0;
    for (const calls of this.waiting.values()) n += calls.length;
    return n;
  }

  private enqueue(party: string, start: () => void): void {
    const calls = this.waiting.get(party);
    if (calls === undefined) this.waiting.set(party, [start]);
    else calls.push(start);
  }

  /** Hands the finished call's place to the next party in turn (its place in the pool stays taken). */
  private next(): void {
    const turn = this.waiting.entries().next();
    if (turn.done === true) {
      this.running--;
      return;
    }
    const [party, calls] = turn.value;
    const start = calls.shift()!;
    // To the back of the line: the other parties go first next time.
    this.waiting.delete(party);
    if (calls.length > 0) this.waiting.set(party, calls);
    start();
  }
}
