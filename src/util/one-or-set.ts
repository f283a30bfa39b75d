/**
 * Map values that are almost always one item: a lone item is kept as itself and a Set is made
 * only at the second (an empty Set alone costs ~150 bytes, times every key). Items are strings,
 * so a value is told apart from a Set by its type.
 */
export type OneOrSet<T extends string> = T | Set<T>;

/** Adds `item` under `key`; returns whether `key` was new. */
export function addOne<K, T extends string>(map: Map<K, OneOrSet<T>>, key: K, item: T): boolean {
  const held = map.get(key);
  if (held === undefined) map.set(key, item);
  else if (typeof held !== 'string') held.add(item);
  else if (held !== item) map.set(key, new Set([held, item]));
  return held === undefined;
}

/** Removes `item` from under `key` (and `key` once nothing is left); returns whether it was there. */
export function deleteOne<K, T extends string>(map: Map<K, OneOrSet<T>>, key: K, item: T): boolean {
  const held = map.get(key);
  if (held === undefined) return false;
  if (typeof held === 'string') {
    if (held !== item) return false;
    map.delete(key);
    return true;
  }
  if (!held.delete(item)) return false;
  if (held.size === 0) map.delete(key);
  return true;
}

/** The items under `key`, copied (safe to iterate while removing them). */
export function itemsOf<T extends string>(held: OneOrSet<T> | undefined): T[] {
  return held === undefined ? [] : typeof held === 'string' ? [held] : [...held];
}
