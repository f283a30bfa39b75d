import type { ClientError } from './errors.js';
import type { Ack, ChatId, WriteOp } from './types.js';

/** One write waiting for its ack, as stored. Everything in it is plain JSON. */
export interface OutboxEntry {
  /** Unique per entry (an edit has its message's id, so `id` alone is not). */
  key: string;
  op: WriteOp;
  chatId: ChatId;
  /** The frame's `data`: `id` plus the content. Resent byte-for-byte with the same id. */
  data: { id: string } & Record<string, unknown>;
  /** Send order across restarts: entries are sent by ascending `order`. */
  order: number;
}

/**
 * Where unacked writes live. The default keeps them in memory; an app that must not lose a
 * message to a reload or a crash stores them (IndexedDB, a file, SQLite…). Entries are written
 * before their first send and removed once acked or refused for good.
 */
export interface OutboxStorage {
  load(): OutboxEntry[] | Promise<OutboxEntry[]>;
  put(entry: OutboxEntry): void | Promise<void>;
  remove(key: string): void | Promise<void>;
}

export class MemoryStorage implements OutboxStorage {
  private readonly entries = new Map<string, OutboxEntry>();
  load(): OutboxEntry[] {
    return [...this.entries.values()];
  }
  put(entry: OutboxEntry): void {
    this.entries.set(entry.key, entry);
  }
  remove(key: string): void {
    this.entries.delete(key);
  }
}

/** An entry while this client works on it. */
export interface Pending {
  entry: OutboxEntry;
  /** The frame as sent (kept so a resend is the same bytes and its size is known). */
  text: string;
  /** In the storage; an entry is sent only once it is. */
  stored: boolean;
  /**
   * The storage's `put` of this entry while it runs (settles, never rejects): a `remove` waits
   * for it, so an entry settled while it was being stored does not land in the storage after
   * its removal (to be sent by the next client although the app was told it failed).
   */
  storing: Promise<void> | null;
  inFlight: boolean;
  /**
   * It may have been applied without this client seeing the ack: in flight when a connection
   * dropped, answered `upstream_unavailable` (the main API may have saved it after all), or
   * restored from storage (an earlier client may have sent it).
   */
  maybeApplied: boolean;
  attempts: number;
  /** The connection (the client's count) it was last sent on; 0 before its first send. */
  sentOn: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
  /** Absent for entries restored from storage: their outcome is only the sent/failed events. */
  settle?: { resolve(ack: Ack): void; reject(err: ClientError): void };
}

/** The ordered list of pending writes, mirrored to the storage. */
export class Outbox {
  private readonly pending: Pending[] = [];
  private nextOrder = Date.now() * 1000;
  /** Resolves once the stored entries are in the list, ahead of anything sent since. */
  readonly loaded: Promise<void>;

  constructor(
    private readonly storage: OutboxStorage,
    private readonly onStorageError: (err: unknown) => void,
  ) {
    this.loaded = Promise.resolve()
      .then(() => storage.load())
      .then((loaded) => this.restore(loaded))
      .catch((err: unknown) => onStorageError(err));
  }

  /** Lists what the storage held, ahead of anything written since; malformed entries are reported and skipped. */
  private restore(loaded: unknown): void {
    if (!Array.isArray(loaded)) throw new TypeError(`the outbox storage's load() returned ${loaded === null ? 'null' : typeof loaded}, not an array: nothing restored`);
    const entries = loaded.filter(isEntry);
    if (entries.length < loaded.length) this.onStorageError(new TypeError(`the outbox storage held ${loaded.length - entries.length} malformed entries: skipped`));
    // Writes made before the load finished are listed already (and may be in the storage
    // by now, since their put can run before load): restoring them would send them twice.
    const listed = new Set(this.pending.map((p) => p.entry.key));
    const restored = entries
      .filter((entry) => !listed.has(entry.key))
      .sort((a, b) => a.order - b.order)
      .map((entry) => ({ ...this.wrap(entry), maybeApplied: true }));
    this.pending.unshift(...restored);
    const last = restored.at(-1)?.entry.order ?? 0;
    this.nextOrder = Math.max(this.nextOrder, last + 1);
  }

  /**
   * Lists a new entry at once (so send order is call order) and stores it; it is not sent
   * before the storage has it (`stored`), and it holds back the later writes of its chat.
   */
  add(op: WriteOp, chatId: ChatId, data: OutboxEntry['data'], settle: Pending['settle']): Pending {
    const entry: OutboxEntry = { key: `${op}:${data.id}:${this.nextOrder}`, op, chatId, data, order: this.nextOrder++ };
    const item: Pending = { ...this.wrap(entry), stored: false, settle };
    this.pending.push(item);
    return item;
  }

  /** Writes the entry to the storage; false when the storage failed (the entry is then dropped). */
  store(item: Pending): Promise<boolean> {
    let put: void | Promise<void>;
    try {
      put = this.storage.put(item.entry);
    } catch (err) {
      put = Promise.reject(err);
    }
    const done = Promise.resolve(put).then(
      () => {
        item.stored = true;
        return true;
      },
      (err: unknown) => {
        this.onStorageError(err);
        return false;
      },
    );
    item.storing = done.then(() => undefined);
    return done;
  }

  /** Drops an entry that is done (acked or refused for good), from the storage too. */
  remove(item: Pending): void {
    this.forget(item);
    // After its `put`, if that is still running: the removal must be the last word.
    (item.storing ?? Promise.resolve())
      .then(() => this.storage.remove(item.entry.key))
      .catch(this.onStorageError);
  }

  /** Stops working on an entry but leaves it in the storage (close(), leave()). */
  forget(item: Pending): void {
    const i = this.pending.indexOf(item);
    if (i >= 0) this.pending.splice(i, 1);
    if (item.retryTimer !== null) clearTimeout(item.retryTimer);
    item.retryTimer = null;
  }

  /** All pending entries, oldest first. */
  all(): readonly Pending[] {
    return this.pending;
  }

  private wrap(entry: OutboxEntry): Pending {
    return { entry, stored: true, storing: null, text: JSON.stringify({ type: entry.op, chat_id: entry.chatId, data: entry.data }), inFlight: false, maybeApplied: false, attempts: 0, sentOn: 0, retryTimer: null };
  }
}

/** What the gateway accepts as a message id. */
export const MESSAGE_ID = /^[A-Za-z0-9_-]{1,64}$/;

export const WRITE_OPS: ReadonlySet<unknown> = new Set<WriteOp>(['message', 'edit_message', 'delete_message']);

/** The shape `add` stores (a storage may hand back anything: a hand-edited file, another version's data). */
function isEntry(value: unknown): value is OutboxEntry {
  if (typeof value !== 'object' || value === null) return false;
  const e = value as Record<string, unknown>;
  const data = e.data as Record<string, unknown> | null | undefined;
  return (
    typeof e.key === 'string' &&
    WRITE_OPS.has(e.op) &&
    (typeof e.chatId === 'string' || typeof e.chatId === 'number') &&
    Number.isSafeInteger(e.order) &&
    (e.order as number) >= 0 &&
    typeof data === 'object' && data !== null && !Array.isArray(data) &&
    typeof data.id === 'string' &&
    MESSAGE_ID.test(data.id)
  );
}
