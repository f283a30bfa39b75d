/** Something with at most one pending deadline, kept on the item itself (no per-item timer). */
export interface HasDeadline {
  /** Set and cleared by Deadlines only: the bucket of the item's pending deadline, or null. */
  deadline: number | null;
}

/**
 * Coarse deadlines for many items (registrations: token expiry, re-verify) behind one timer per
 * gateway: items sit in buckets of `resolutionMs` and are handed to `onDue` at most one bucket
 * late, never early. A Node timer per registration would cost far more memory than a Set entry.
 *
 * Buckets are numbered from the Deadlines' creation, so the number kept on each item is a small
 * integer, which V8 stores in the field itself: a time in ms since the epoch (or any fraction)
 * would be a separate 16-byte heap number per item.
 */
export class Deadlines<T extends HasDeadline> {
  private readonly buckets = new Map<number, Set<T>>();
  private timer: NodeJS.Timeout | null = null;
  private readonly origin: number;

  constructor(
    private readonly onDue: (item: T) => void,
    private readonly resolutionMs = 1000,
    private readonly now: () => number = Date.now,
  ) {
    this.origin = now();
  }

  /** (Re)sets the item's deadline to `at` (ms since the epoch). */
  set(item: T, at: number): void {
    this.clear(item);
    const bucket = Math.ceil((at - this.origin) / this.resolutionMs);
    let items = this.buckets.get(bucket);
    if (items === undefined) this.buckets.set(bucket, (items = new Set()));
    items.add(item);
    item.deadline = bucket;
    if (this.timer === null) this.start();
  }

  /**
   * Ticks on bucket boundaries, each timer set for the next one (no interval to drift): a bucket
   * is due at its boundary, so a tick just after it keeps every deadline at most one bucket late.
   * (An interval started at an arbitrary moment ticked up to a whole bucket after the boundary:
   * two buckets late in all.)
   */
  private start(): void {
    const untilBoundary = this.resolutionMs - ((this.now() - this.origin) % this.resolutionMs);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.tick();
      if (this.buckets.size > 0 && this.timer === null) this.start();
    }, untilBoundary);
    this.timer.unref();
  }

  clear(item: T): void {
    if (item.deadline === null) return;
    const items = this.buckets.get(item.deadline);
    items?.delete(item);
    if (items?.size === 0) this.buckets.delete(item.deadline);
    item.deadline = null;
  }

  get size(): number {
    let n = 0;
    for (const items of this.buckets.values()) n += items.size;
    return n;
  }

  /** Stops the timer; pending deadlines never fire. */
  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.buckets.clear();
  }

  private tick(): void {
    const current = Math.floor((this.now() - this.origin) / this.resolutionMs);
    // Taken out first: an item `onDue` sets again (even into a due bucket) waits for the next tick.
    const due: Array<[T, number]> = [];
    for (const [bucket, items] of this.buckets) {
      if (bucket > current) continue;
      this.buckets.delete(bucket);
      for (const item of items) due.push([item, bucket]);
    }
    for (const [item, bucket] of due) {
      if (item.deadline !== bucket) continue; // cleared or set again by an earlier onDue of this tick
      this.clear(item); // also from a bucket of the same number an earlier onDue made anew
      this.onDue(item);
    }
    if (this.buckets.size === 0 && this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }
}
