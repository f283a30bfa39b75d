/**
 * The chat page's pure pieces (no DOM, no network): a chat's message entries and how a history
 * reload merges into them, and the texts that depend on the clock. web/app.ts uses them; the
 * tests run them on Node (tests/browser/page-model.test.ts).
 */

export interface Entry {
  id: string;
  senderId: string;
  /**
   * When it was written as shown: the sender's `created_at` when it agrees with when the page got
   * it (live) or the main API saved it (history), else that time (see `checkedTime`).
   */
  at: string;
  /** The sender's `created_at` when it was not believed (shown as "sender says …"). */
  claimed?: string;
  /** The decrypted text, or null while decrypting or when it cannot be decrypted. */
  text: string | null;
  /** Why it cannot be shown ("cannot decrypt: …"). */
  problem: string | null;
  edited: boolean;
  /** Bumped by every edit, so a slow decryption of an older version never overwrites a newer one. */
  version: number;
  /**
   * Where in the chat's stream the edit shown stands (a received one, or this page's own once
   * acked): an edit from before it is older than what is shown and is not applied. Two devices
   * editing one message at once have their edits saved — and numbered — in either order.
   */
  editedAt?: { seq: number; epoch: string };
  /** Edits this page made of it: only the last one's ack may put its text back (see showOwnEdit). */
  ownEdits?: number;
  /** Own writes: waiting for the chat's device list, handed to the SDK and waiting for the ack, acked, or refused. */
  sending: 'waiting' | 'sending' | 'sent' | 'failed' | null;
  /** Why an own write was not sent, shown beside "not sent". */
  failure?: string;
  /** Own new messages: false until the write is handed to the SDK (a delete before that sends nothing). */
  handed?: boolean;
  /**
   * performance.now() of the last change this page saw: the entry reached it, a live edit did, or
   * an own write of it was acked (`markAcked`). A history reload keeps entries changed after its
   * request went out (newer than the snapshot).
   */
  changed: number;
}

/**
 * An own write of `entry` was acked (the main API saved it) at `now` (performance.now()). That is
 * a change: a history reload whose request went out before may have read the chat before the
 * save, and must keep this entry rather than drop it or put the older text back.
 */
export function markAcked(entry: Entry, now = performance.now()): void {
  entry.sending = 'sent';
  entry.failure = undefined;
  entry.changed = now;
}

/** What a history reload needs of a chat's state: the entries, their order, the ids deleted. */
export interface Messages {
  entries: Map<string, Entry>;
  order: string[];
  deleted: Set<string>;
}

export interface StoredLike {
  id: string;
}

/**
 * Merges a history snapshot into `view` (in place). Entries changed after the request went out
 * (`started`) are newer than the snapshot and kept, and so are own writes not acked yet (not in
 * it); everything else takes the snapshot's version. After a gap, what the snapshot lacks was
 * deleted meanwhile and goes; on a first load it stays (it arrived live). Returns the entries
 * taken from the snapshot, to be decrypted.
 */
export function mergeHistory<M extends StoredLike>(
  view: Messages,
  stored: readonly M[],
  started: number,
  afterGap: boolean,
  entryOf: (message: M) => Entry,
): Array<{ entry: Entry; message: M }> {
  const keep = (e: Entry | undefined): boolean => e !== undefined && (e.changed >= started || e.sending === 'sending' || e.sending === 'waiting');
  const order: string[] = [];
  const fresh: Array<{ entry: Entry; message: M }> = [];
  const seen = new Set<string>();
  for (const message of stored) {
    if (view.deleted.has(message.id) || seen.has(message.id)) continue;
    seen.add(message.id);
    const existing = view.entries.get(message.id);
    order.push(message.id);
    if (keep(existing)) continue;
    const entry = entryOf(message);
    if (existing) {
      entry.version = existing.version + 1;
      // An own write acked while the history loaded keeps its ✓ (the stored copy is that write);
      // and the position of the edit shown stays: an older edit arriving late is still older.
      if (existing.sending === 'sent') entry.sending = 'sent';
      if (existing.editedAt !== undefined) entry.editedAt = existing.editedAt;
    }
    view.entries.set(message.id, entry);
    fresh.push({ entry, message });
  }
  for (const id of view.order) {
    if (seen.has(id)) continue;
    if (!afterGap || keep(view.entries.get(id))) order.push(id);
    else view.entries.delete(id);
  }
  view.order = order;
  return fresh;
}

/**
 * Deletes of messages the page did not have when they came (`pending`: id → `deleted_by`), settled
 * by the stored copies a history load brings: one whose sender is the deleter is to be applied,
 * one whose sender is someone else ignored (only the author deletes a message). Each settled
 * delete leaves `pending`; one whose message the snapshot lacks stays (it may still come live).
 */
export function settlePendingDeletes(
  pending: Map<string, string>,
  stored: ReadonlyArray<{ id: string; sender_id: string | number }>,
): { apply: string[]; ignore: Array<{ id: string; senderId: string; deletedBy: string }> } {
  const apply: string[] = [];
  const ignore: Array<{ id: string; senderId: string; deletedBy: string }> = [];
  for (const message of stored) {
    const deletedBy = pending.get(message.id);
    if (deletedBy === undefined) continue;
    pending.delete(message.id);
    if (String(message.sender_id) === deletedBy) apply.push(message.id);
    else ignore.push({ id: message.id, senderId: String(message.sender_id), deletedBy });
  }
  return { apply, ignore };
}

/**
 * Messages a chat keeps in the page: the newest. A member can post a message every 50 ms on each of
 * a hundred connections; a page that kept (and rendered) them all fell thousands behind and froze.
 */
export const MESSAGES_KEPT = 1000;

/**
 * Drops the oldest entries of `view` past `max` (in place); returns how many went. A dropped id is
 * not remembered as deleted: a history reload may bring it back in its place.
 */
export function trimMessages(view: Messages, max = MESSAGES_KEPT): number {
  const excess = view.order.length - max;
  if (excess <= 0) return 0;
  for (const id of view.order.splice(0, excess)) view.entries.delete(id);
  return excess;
}

/**
 * Devices of one user that a message is encrypted to, at most. The dev API keeps as many per user
 * (MAX_DEVICES_PER_USER in dev-api/app.ts); the page does not rely on it: each device costs ~141
 * bytes of every message, and a chat list with hundreds of one member's devices would make every
 * message too large for the gateway.
 */
export const DEVICES_PER_USER = 10;

export interface ListedDevice {
  device_id: string;
  user_id: string | number;
  public_key: string;
}

/**
 * A chat's device list as the page uses it: at most `perUser` devices per user, the last listed
 * (the dev API lists in publish order), and each public key once per user.
 * A key listed under two users is kept for both: dropping one would let a member who copies
 * someone's public key under its own device take that person's envelope away.
 */
export function boundDevices<D extends ListedDevice>(devices: readonly D[], perUser = DEVICES_PER_USER): D[] {
  const kept: D[] = [];
  const perUserCount = new Map<string, number>();
  const keys = new Set<string>();
  for (let i = devices.length - 1; i >= 0; i--) {
    const device = devices[i]!;
    const user = String(device.user_id);
    const key = JSON.stringify([user, device.public_key]);
    const count = perUserCount.get(user) ?? 0;
    if (count >= perUser || keys.has(key)) continue;
    keys.add(key);
    perUserCount.set(user, count + 1);
    kept.push(device);
  }
  return kept.reverse();
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** A message's time as shown: `14:05` today, `3 Jan 14:05` earlier this year, `3 Jan 2024 14:05` before (local time). */
export function messageTime(at: string | number, now: Date = new Date()): string {
  const d = new Date(at);
  if (Number.isNaN(d.getTime())) return '';
  const time = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  if (d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() && d.getDate() === now.getDate()) return time;
  const day = `${d.getDate()} ${MONTHS[d.getMonth()]!}`;
  return d.getFullYear() === now.getFullYear() ? `${day} ${time}` : `${day} ${d.getFullYear()} ${time}`;
}

/**
 * The header's texts while disconnected: the state (`offline (1006)`, said by the live region
 * when it changes) and the countdown to the next attempt (`retryAt`, Date.now() ms), which ticks
 * every second outside the live region.
 */
export function offlineText(code: number | undefined, online: boolean, retryAt: number, now: number): { state: string; retry: string } {
  const seconds = Math.max(0, Math.ceil((retryAt - now) / 1000));
  return { state: `offline (${code ?? '?'}${online ? '' : ', no network'})`, retry: seconds === 0 ? 'retrying' : `retry in ${seconds} s` };
}

/** How far a sender's clock may be from the reference before its `created_at` is not believed. */
export const CLOCK_SLACK_MS = 5 * 60_000;

/**
 * The time to show for a message whose sender claims `createdAt` (anyone can write any valid
 * RFC 3339 instant: year 9999, year 0). `reference` is when the page got it live, or when the
 * main API saved it (history), in ms; `pastSlackMs` widens the window into the past (a replay
 * after being offline delivers messages written while the page was away). Within the window the
 * claim is shown; outside it, or unparseable, the reference is shown and the claim kept aside.
 */
export function checkedTime(createdAt: unknown, reference: number, pastSlackMs = 0): { at: string; claimed?: string } {
  const ref = new Date(reference).toISOString();
  if (typeof createdAt !== 'string') return { at: ref };
  const claimed = Date.parse(createdAt);
  if (Number.isNaN(claimed) || claimed > reference + CLOCK_SLACK_MS || claimed < reference - CLOCK_SLACK_MS - pastSlackMs) return { at: ref, claimed: createdAt };
  return { at: createdAt };
}
