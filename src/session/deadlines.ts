/** Something with at most one pending deadline, kept on the item itself (no per-item timer). */
export interface HasDeadline {
  deadlineAt: number | null;
}

/**
 * Coarse deadlines for many items (registrations: token expiry, re-verify) behind one timer per
 * gateway: items sit in buckets of `resolutionMs` and are handed to `onDue` at most one bucket
 * late, never early. A Node timer per registration would cost far more memory than a Set entry.
 */
export class Deadlines<T extends HasDeadline> {
  private readonly buckets = new Map<number, Set<T>>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly onDue: (item: T) => void,
    private readonly resolutionMs = 1000,
    private readonly now: () => number = Date.now,
  ) {}

  /** (Re)sets the item's deadline to `at` (ms since the epoch). */
  set(item: T, at: number): void {
    this.clear(item);
    const bucket = Math.ceil(at / this.resolutionMs);
    let items = this.buckets.get(bucket);
    if (items === undefined) this.buckets.set(bucket, (items = new Set()));
    items.add(item);
    item.deadlineAt = at;
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), this.resolutionMs);
      this.timer.unref();
    }
  }

  clear(item: T): void {
    if (item.deadlineAt === null) return;
    const bucket = Math.ceil(item.deadlineAt / this.resolutionMs);
    const items = this.buckets.get(bucket);
    items?.delete(item);
    if (items?.size === 0) this.buckets.delete(bucket);
    item.deadlineAt = null;
  }

  get size(): number {
    let n = 0;
    for (const items of this.buckets.values()) n += items.size;
    return n;
  }

  /** Stops the timer; pending deadlines never fire. */
  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.buckets.clear();
  }

  private tick(): void {
    const current = Math.floor(this.now() / this.resolutionMs);
    for (const [bucket, items] of this.buckets) {
      if (bucket > current) continue;
      this.buckets.delete(bucket);
      for (const item of items) {
        item.deadlineAt = null;
        this.onDue(item);
      }
    }
    if (this.buckets.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
