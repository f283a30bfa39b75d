import { createHash } from 'node:crypto';
import type { IdKey } from '../protocol/ids.js';
import { addOne, deleteOne, itemsOf, type OneOrSet } from '../util/one-or-set.js';

/**
 * Successful verifies of (token, chat), reused for AUTH_CACHE_TTL_MS and never past the JWT's
 * `exp`. Bounded: expired entries go with the next `set`, and past `maxEntries` the oldest entry
 * goes (Map keeps insertion order).
 */
export class VerifyCache {
  private readonly entries = new Map<string, { user: IdKey; chat: IdKey; expiresAt: number }>();
  /**
   * user → key(s) of its entries, so the server API can forget a user's verifies without a scan.
   * Most users have one entry: it is kept as the key itself, and becomes a Set at the second.
   */
  private readonly byUser = new Map<IdKey, OneOrSet<string>>();
  /**
   * `user|chat` or `user|*` → the revision of its last `forgetUser`, so a verify answer read
   * before it can be recognised as stale (`forgottenSince`). Bounded: the oldest go first.
   */
  private readonly forgotten = new Map<string, number>();
  private forgets = 0;

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  get(token: string, chat: IdKey): IdKey | undefined {
    const key = cacheKey(token, chat);
    const entry = this.entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.remove(key);
      return undefined;
    }
    return entry.user;
  }

  /** When the cached verify of (token, chat) expires (ms since the epoch); undefined when none is cached. */
  expiresAt(token: string, chat: IdKey): number | undefined {
    const entry = this.entries.get(cacheKey(token, chat));
    return entry !== undefined && entry.expiresAt > this.now() ? entry.expiresAt : undefined;
  }

  set(token: string, chat: IdKey, user: IdKey): void {
    if (this.ttlMs <= 0) return;
    const now = this.now();
    let expiresAt = now + this.ttlMs;
    const exp = jwtExpiryMs(token);
    if (exp !== null) expiresAt = Math.min(expiresAt, exp);
    if (expiresAt <= now) return;
    const key = cacheKey(token, chat);
    this.remove(key);
    // Expired entries at the head go first: insertion order is expiry order (a JWT's earlier
    // `exp` only makes an entry expire sooner), so the cache holds about one TTL of verifies, not
    // `maxEntries` of stale ones. Each entry is removed once: amortised O(1) per set.
    for (const [oldKey, old] of this.entries) {
      if (old.expiresAt > now) break;
      this.remove(oldKey);
    }
    this.entries.set(key, { user, chat, expiresAt });
    addOne(this.byUser, user, key);
    if (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.remove(oldest);
    }
  }

  /** Forgets (token, chat): the main API refused it since, so the next verify must ask again. */
  delete(token: string, chat: IdKey): void {
    this.remove(cacheKey(token, chat));
  }

  /** Forgets every verify of `user` (in `chat` only, when given): the server API revoked it. */
  forgetUser(user: IdKey, chat: IdKey | null): void {
    this.mark(`${user}|${chat ?? '*'}`);
    for (const key of itemsOf(this.byUser.get(user))) if (chat === null || this.entries.get(key)?.chat === chat) this.remove(key);
  }

  /** The server API disconnected `user`: forgets every verify of it, and marks when (`disconnectedSince`). */
  disconnectUser(user: IdKey): void {
    this.forgetUser(user, null);
    this.mark(`${user}|!`);
  }

  /** Whether `disconnectUser(user)` ran after `revision` was taken. */
  disconnectedSince(user: IdKey, revision: number): boolean {
    return revision !== this.forgets && (this.forgotten.get(`${user}|!`) ?? 0) > revision;
  }

  private mark(key: string): void {
    this.forgotten.delete(key);
    this.forgotten.set(key, ++this.forgets);
    if (this.forgotten.size > this.maxEntries) this.forgotten.delete(this.forgotten.keys().next().value as string);
  }

  /** A mark to pass to `forgottenSince`, taken before a verify whose answer may go stale. */
  get revision(): number {
    return this.forgets;
  }

  /** Whether `forgetUser` covered (user, chat) after `revision` was taken. */
  forgottenSince(user: IdKey, chat: IdKey, revision: number): boolean {
    if (revision === this.forgets) return false;
    return (this.forgotten.get(`${user}|${chat}`) ?? 0) > revision || (this.forgotten.get(`${user}|*`) ?? 0) > revision;
  }

  private remove(key: string): void {
    const entry = this.entries.get(key);
    if (entry === undefined) return;
    this.entries.delete(key);
    deleteOne(this.byUser, entry.user, key);
  }

  get size(): number {
    return this.entries.size;
  }
}

/**
 * A digest of (chat, token), not the token: entries stay small whatever the token length, and no
 * token sits in the map. 128 bits of SHA-256 (22 characters) are plenty to tell keys apart.
 */
function cacheKey(token: string, chat: IdKey): string {
  return createHash('sha256').update(chat).update('\u0000').update(token).digest().toString('base64url', 0, 16);
}

/** The `exp` of a JWT in ms, or null when the token is not a JWT with a numeric `exp`. */
export function jwtExpiryMs(token: string): number | null {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === undefined) return null;
  try {
    const payload: unknown = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (typeof payload === 'object' && payload !== null && 'exp' in payload) {
      const exp = (payload as { exp: unknown }).exp;
      if (typeof exp === 'number' && Number.isFinite(exp)) return exp * 1000;
    }
  } catch {
    // Not a JWT: the TTL alone bounds the cache entry.
  }
  return null;
}
