import { CancelledError } from '../protocol/errors.js';
import { whenReleased, type Hold } from '../util/settled.js';

/**
 * A connection's share of the main-API pool: at most `size` calls run at once, the rest wait
 * in order. When the connection closes, `cancel` drops every waiter before it costs a call. A
 * call answered at its status line whose body still streams in (`hold`) keeps its slot until the
 * body ends, as it keeps its place in the pool: otherwise a main API trickling the bodies of one
 * connection's answers let it take every pool place, one answered call after another.
 */
export class Slots {
  private running = 0;
  private waiters: Array<{ resolve: () => void; reject: (err: Error) => void }> | null = null;

  constructor(
    private readonly size: number,
    /** Called when the last call finishes with none waiting: the same as a new Slots, so its owner may let it go. */
    private readonly onIdle: (slots: Slots) => void = () => undefined,
  ) {}

  /** Plain promise chains, not an async function: this runs for every main-API call (fewer ticks and promises). */
  run<T>(work: (hold: Hold) => Promise<T>): Promise<T> {
    if (this.running < this.size) {
      this.running++;
      return this.start(work);
    }
    // A waiter is handed its slot by the call that finishes (`running` stays as it is).
    return new Promise<void>((resolve, reject) => (this.waiters ??= []).push({ resolve, reject })).then(() => this.start(work));
  }

  private start<T>(work: (hold: Hold) => Promise<T>): Promise<T> {
    return whenReleased(work, () => this.finished());
  }

  private finished(): void {
    const next = this.waiters?.shift();
    if (next !== undefined) next.resolve();
    else if (--this.running === 0) this.onIdle(this);
  }

  cancel(): void {
    const waiters = this.waiters ?? [];
    this.waiters = null;
    for (const waiter of waiters) waiter.reject(new CancelledError());
  }
}
