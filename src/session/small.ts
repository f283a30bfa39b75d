/**
 * Collections for per-connection state that is almost always empty or holds one entry: an
 * empty `Map` or `Set` costs ~150–200 bytes of heap, times every idle connection.
 */

/** A Map that holds its first entry inline and allocates a real Map only at the second. */
export class SmallMap<K, V> {
  private k: K | undefined = undefined;
  private v: V | undefined = undefined;
  private map: Map<K, V> | null = null;

  get size(): number {
    return this.map !== null ? this.map.size : this.k === undefined ? 0 : 1;
  }

  get(key: K): V | undefined {
    if (this.map !== null) return this.map.get(key);
    return this.k === key ? this.v : undefined;
  }

  has(key: K): boolean {
    return this.map !== null ? this.map.has(key) : this.k !== undefined && this.k === key;
  }

  set(key: K, value: V): this {
    if (this.map !== null) {
      this.map.set(key, value);
    } else if (this.k === undefined || this.k === key) {
      this.k = key;
      this.v = value;
    } else {
      this.map = new Map([
        [this.k, this.v as V],
        [key, value],
      ]);
      this.k = undefined;
      this.v = undefined;
    }
    return this;
  }

  delete(key: K): boolean {
    if (this.map !== null) return this.map.delete(key);
    if (this.k === undefined || this.k !== key) return false;
    this.k = undefined;
    this.v = undefined;
    return true;
  }

  clear(): void {
    this.map = null;
    this.k = undefined;
    this.v = undefined;
  }

  *keys(): IterableIterator<K> {
    if (this.map !== null) yield* this.map.keys();
    else if (this.k !== undefined) yield this.k;
  }

  *values(): IterableIterator<V> {
    if (this.map !== null) yield* this.map.values();
    else if (this.k !== undefined) yield this.v as V;
  }
}

/** A Set allocated only while it holds something. */
export class LazySet<T> {
  private set: Set<T> | null = null;

  has(x: T): boolean {
    return this.set !== null && this.set.has(x);
  }

  add(x: T): this {
    (this.set ??= new Set()).add(x);
    return this;
  }

  delete(x: T): boolean {
    if (this.set === null) return false;
    const removed = this.set.delete(x);
    if (this.set.size === 0) this.set = null;
    return removed;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    if (this.set !== null) yield* this.set;
  }
}
