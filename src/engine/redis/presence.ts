/**
 * Presence in Redis: this instance's entries (one per registered connection and chat), written
 * with a TTL and refreshed, and the leaves that must still run after an outage or a stall. The
 * scripts (scripts.ts) make each online/offline transition visible to exactly one instance.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { IdKey } from '../../protocol/ids.js';
import { leavingKey, presenceKey, userPrefix, type RedisLink } from './link.js';

/** Presence entries refreshed per script call, at most. */
const REFRESH_BATCH = 500;

interface PresenceEntry {
  chat: IdKey;
  user: IdKey;
  conn: string;
}
const entryKey = (e: PresenceEntry) => `${e.chat}|${e.user}|${e.conn}`;

export class RedisPresence {
  /** This instance's presence entries, refreshed every PRESENCE_TTL_MS / 3 (by the engine's `maintainPresence`). */
  private readonly entries = new Map<string, PresenceEntry>();
  /**
   * Entries whose leave (or join) failed — Redis unreachable or stalled — keyed like `entries`,
   * with the leave's `held` (0 for a failed join: the entry is removed only if Redis has it): see
   * `replayLeaves`.
   */
  private readonly failedLeaves = new Map<string, PresenceEntry & { held: 0 | 1 }>();
  private leavesReplay: Promise<void> | null = null;
  /** Per chat, users replayed leaves took offline, announced once the engine is ready again. */
  private readonly leftOffline = new Map<IdKey, IdKey[]>();
  /**
   * Users whose last connection left through this instance, by `chat|user`, with the deadline
   * their record in the chat's leaving set got (see LEAVE in scripts.ts), until their `offline` went out.
   */
  private readonly leaving = new Map<string, number>();
  /** Entries a refresh re-created (see refresh) whose `online` is not announced yet. */
  private restored: PresenceEntry[] = [];

  constructor(
    private readonly link: RedisLink,
    private readonly ttlMs: number,
  ) {}

  /**
   * Presence keys outlive their entries, so a sweeper still finds expired entries of a dead
   * instance; a key nobody refreshes for twice the TTL (no live member anywhere) just vanishes.
   */
  private get keyTtlMs(): number {
    return 2 * this.ttlMs;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Leaves are waiting to run again. */
  get owesLeaves(): boolean {
    return this.failedLeaves.size > 0;
  }

  async join(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    const entry = { chat, user, conn };
    const key = entryKey(entry);
    const pending = this.failedLeaves.get(key);
    this.failedLeaves.delete(key); // joined again: an earlier leave must not take it away (sent before it)
    let cameOnline: number[];
    try {
      // An earlier join of this connection timed out (a client retrying its register): its write
      // may have run since, and this one would then find the user online and announce nothing.
      // Undone first, on the same connection, so `cameOnline` tells the truth.
      if (pending?.held === 0) await this.link.whenReady(() => this.removeEntry(pending));
      cameOnline = await this.link.whenReady(() => this.writeEntries(chat, [entry], Date.now()));
    } catch (err) {
      // A write that timed out on a stalled Redis still runs when it wakes, for a member the hub
      // never attached: a leave undoes it then (a no-op if it never ran; see `failedLeaves`).
      this.failedLeaves.set(key, { ...entry, held: 0 });
      throw err;
    }
    this.entries.set(key, entry);
    return cameOnline.length === 1;
  }

  async leave(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    const entry = { chat, user, conn };
    const key = entryKey(entry);
    const held = this.entries.delete(key) ? 1 : 0;
    try {
      return (await this.link.whenReady(() => this.removeEntry({ ...entry, held }))) === 1;
    } catch (err) {
      // Its entry may outlast the outage in Redis (it then expires, and the sweep announces the
      // user offline), be lost with Redis's data, or be removed by this very leave once a stalled
      // Redis wakes (then nothing would ever announce it): run again once Redis serves.
      if (held === 1) this.failedLeaves.set(key, { ...entry, held });
      throw err;
    }
  }

  /** On close: every entry whose leave did not run (or failed) is removed, so nobody waits for the TTL. */
  async leaveAll(): Promise<void> {
    await Promise.allSettled([...this.entries.values()].map((e) => this.leave(e.chat, e.user, e.conn)));
  }

  /**
   * Runs the leaves that failed during an outage or a stall: after a reconnect (the engine's
   * `restoreAfterOutage`), and after a probe answers (a stall drops no connection). Those that took a user's last connection (Redis lost
   * the entry, still had it, or the timed-out leave had removed it meanwhile) are kept in
   * `leftOffline` as each one runs — so a round in which another leave fails loses none of them —
   * and announced once ready. One round at a time: a leave run twice would find its entry gone.
   */
  replayLeaves(): Promise<void> {
    this.leavesReplay ??= Promise.all(
      [...this.failedLeaves].map(async ([key, failed]) => {
        const { chat, user, held } = failed;
        const last = await this.removeEntry(failed);
        if (this.failedLeaves.get(key) === failed) this.failedLeaves.delete(key);
        // An undone join (held 0) was never announced online: its last entry leaving says nothing.
        if (last !== 1 || held === 0) return;
        const users = this.leftOffline.get(chat);
        if (users === undefined) this.leftOffline.set(chat, [user]);
        else users.push(user);
      }),
    ).then(
      () => { this.leavesReplay = null; },
      (err: unknown) => { this.leavesReplay = null; throw err; },
    );
    return this.leavesReplay;
  }

  /** Runs the failed leaves and announces their offlines, while time is left (shutdown). */
  async settleLeaves(deadline: number): Promise<void> {
    while (this.failedLeaves.size > 0 && !this.link.closing() && Date.now() < deadline) {
      if (this.link.connectionsUp()) {
        try {
          await this.replayLeaves();
          // Announced through a publish, which needs the engine ready (a recovery may still run).
          while (!this.link.serving() && Date.now() < deadline) await sleep(50);
          this.announceLeftOffline();
          return;
        } catch {
          // Still not serving (a stall past the command timeout): try again while time is left.
        }
      } else {
        await sleep(100); // reconnecting: the engine's restoreAfterOutage may run them first
      }
    }
  }

  /** The LEAVE script for one entry: 1 if it took the user's last live connection (see scripts.ts for `held`). */
  private async removeEntry({ chat, user, conn, held }: PresenceEntry & { held: 0 | 1 }): Promise<number> {
    const now = Date.now();
    // Its offline is confirmed sent (see offlineAnnounced) well within a TTL; past it a sweep announces it.
    const deadline = now + this.ttlMs;
    const last = await this.link.cmd().msLeave(presenceKey(chat), userPrefix(chat) + user, leavingKey(chat), now, conn, user, held, deadline, this.keyTtlMs);
    if (last === 1) {
      this.leaving.delete(`${chat}|${user}`);
      this.leaving.set(`${chat}|${user}`, deadline);
      // Those whose offline never went out are the sweep's now: forgotten here.
      for (const [key, at] of this.leaving) {
        if (at > now) break;
        this.leaving.delete(key);
      }
    }
    return last;
  }

  /**
   * The `offline` of these users went out: a sweep need not announce it (see LEAVE). Only the
   * records of this instance's own leaves, and only while they are the ones it wrote (the user may
   * have come and gone again through another instance meanwhile, whose record must stay). Best effort.
   */
  offlineAnnounced(chat: IdKey, users: readonly IdKey[]): void {
    const pairs: Array<string | number> = [];
    for (const user of users) {
      const deadline = this.leaving.get(`${chat}|${user}`);
      if (deadline === undefined) continue;
      this.leaving.delete(`${chat}|${user}`);
      pairs.push(user, deadline);
    }
    if (!this.link.connected() || pairs.length === 0) return;
    this.link.cmd().msAnnounced(leavingKey(chat), ...pairs).catch(() => undefined);
  }

  /** Publishes the `offline`s replayed leaves found (see `replayLeaves`). */
  announceLeftOffline(): void {
    const events = this.link.events();
    for (const [chat, users] of this.leftOffline) events?.presenceExpired(chat, users);
    this.leftOffline.clear();
  }

  online(chat: IdKey): Promise<IdKey[]> {
    return this.link.whenReady(() => this.link.cmd().zrangebyscore(presenceKey(chat), Date.now(), '+inf'));
  }

  /** Adds or refreshes presence entries of one chat; the indexes of those whose user came online. */
  private writeEntries(chat: IdKey, entries: readonly PresenceEntry[], now: number): Promise<number[]> {
    const pairs = entries.flatMap((e) => [e.user, e.conn]);
    return this.link.cmd().msWriteEntries(presenceKey(chat), now, now + this.ttlMs, this.keyTtlMs, userPrefix(chat), ...pairs);
  }

  /**
   * Re-writes this instance's entries. Those it had to re-create after their user went offline
   * for everyone (swept after a stall, or lost by Redis) while still connected are kept for
   * `announceRestored`, also when another write of the round fails: their entries exist again,
   * so no later refresh would report them.
   */
  async refresh(): Promise<void> {
    const now = Date.now();
    const byChat = new Map<IdKey, PresenceEntry[]>();
    for (const e of this.entries.values()) {
      const list = byChat.get(e.chat);
      if (list === undefined) byChat.set(e.chat, [e]);
      else list.push(e);
    }
    const calls: Array<Promise<void>> = [];
    for (const [chat, list] of byChat) {
      // One script call per chat (bounded, so a huge chat cannot hold Redis for long).
      for (let at = 0; at < list.length; at += REFRESH_BATCH) {
        const batch = list.slice(at, at + REFRESH_BATCH);
        calls.push(
          this.writeEntries(chat, batch, now).then((restored) => {
            for (const i of restored) this.restored.push(batch[i]!);
          }),
        );
      }
    }
    await Promise.all(calls);
  }

  /** Publishes `online` for the entries a refresh re-created (only once the engine is ready). */
  announceRestored(): void {
    if (!this.link.connected() || this.restored.length === 0) return;
    const byChat = new Map<IdKey, IdKey[]>();
    for (const e of this.restored.splice(0)) {
      // Left meanwhile: its leave ran after the refresh in Redis and announces offline itself.
      if (this.entries.get(entryKey(e)) !== e) continue;
      const users = byChat.get(e.chat);
      if (users === undefined) byChat.set(e.chat, [e.user]);
      else users.push(e.user);
    }
    const events = this.link.events();
    for (const [chat, users] of byChat) events?.presenceRestored(chat, users);
  }
}
