import { idKey, type IdKey, type WireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';

/** `{"type":"presence` — both presence frames start so (outbound.ts encodes `type` first). */
const PRESENCE_PREFIX = Buffer.from('{"type":"presence');

/**
 * Who this instance's members of each chat were told is online: the `online` of the latest
 * `registered`, then every presence frame delivered to them. Kept only with an engine that can
 * lose deliveries (Redis): presence is not in any history, so announcements published while the
 * instance's subscription was down are gone, and its clients would keep a user who left online
 * (or never see one who came) until they register again. When the engine is back, `repair`
 * compares each chat with the engine's online list and tells the members the difference.
 */
/** How long an `offline` found by a repair waits to be read again before it is told (see `repair`). */
const REPAIR_CONFIRM_MS = 2500;

interface Told {
  users: Set<IdKey>;
  /** Bumped by every change: a repair that read the engine while it moved reads again. */
  version: number;
}

export class PresenceView {
  private readonly told = new Map<IdKey, Told>();

  /** A registration went live with this online list (the freshest the members have). */
  seed(chat: IdKey, online: readonly IdKey[]): void {
    const told = this.told.get(chat);
    if (told === undefined) this.told.set(chat, { users: new Set(online), version: 0 });
    else {
      told.users = new Set(online);
      told.version++;
    }
  }

  /** A frame delivered to the chat's members: applied if it is presence (unnumbered frames only). */
  observe(chat: IdKey, frame: Buffer): void {
    if (frame.length < PRESENCE_PREFIX.length || frame.compare(PRESENCE_PREFIX, 0, PRESENCE_PREFIX.length, 0, PRESENCE_PREFIX.length) !== 0) return;
    const told = this.told.get(chat);
    if (told === undefined) return;
    let f: { type?: unknown; user_id?: WireId; status?: unknown; online?: WireId[]; offline?: WireId[] };
    try {
      f = JSON.parse(frame.toString('utf8')) as typeof f;
    } catch {
      return;
    }
    const set = told.users;
    if (f.type === 'presence' && f.user_id !== undefined) {
      if (f.status === 'online') set.add(idKey(f.user_id));
      else set.delete(idKey(f.user_id));
    } else if (f.type === 'presence_batch') {
      for (const u of f.online ?? []) set.add(idKey(u));
      for (const u of f.offline ?? []) set.delete(idKey(u));
    } else return;
    told.version++;
  }

  /** The chat has no local member any more. */
  forget(chat: IdKey): void {
    this.told.delete(chat);
  }

  /**
   * After an outage (or, for `chats`, a subscription that lost publications): tells each chat's
   * members the difference between what they were told and the engine's online list — who came
   * at once; who left only if a second read REPAIR_CONFIRM_MS
   * later still lacks them (after Redis lost its data, the other instances write their entries
   * again only once they are back too: a first read would call their users offline). A chat whose
   * list cannot be read is skipped. Returns the chats told something.
   */
  async repair(online: (chat: IdKey) => Promise<IdKey[]>, deliver: (chat: IdKey, frame: Buffer) => void, chats: Iterable<IdKey> = this.told.keys()): Promise<number> {
    const gone = new Map<IdKey, IdKey[]>();
    let repaired = 0;
    for (const chat of [...chats]) {
      const diff = await this.difference(chat, online);
      if (diff === null) continue;
      if (diff.came.length > 0) {
        deliver(chat, out.presenceBatch(chat, diff.came, [])); // observed on the way: the set follows
        repaired++;
      }
      if (diff.left.length > 0) gone.set(chat, diff.left);
    }
    if (gone.size === 0) return repaired;
    await new Promise((resolve) => setTimeout(resolve, REPAIR_CONFIRM_MS).unref());
    for (const [chat, candidates] of gone) {
      const diff = await this.difference(chat, online);
      const left = diff?.left.filter((u) => candidates.includes(u)) ?? [];
      if (left.length === 0) continue;
      deliver(chat, out.presenceBatch(chat, [], left));
      repaired++;
    }
    return repaired;
  }

  /** Who the engine has online that the members were not told of, and the reverse; null if it cannot be read steadily. */
  private async difference(chat: IdKey, online: (chat: IdKey) => Promise<IdKey[]>): Promise<{ came: IdKey[]; left: IdKey[] } | null> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const before = this.told.get(chat);
      if (before === undefined) return null; // its last member left
      const version = before.version;
      let now: IdKey[];
      try {
        now = await online(chat);
      } catch {
        return null;
      }
      const told = this.told.get(chat);
      if (told !== before) return null;
      // A presence frame delivered while the list was read is fresher than the list: read again.
      if (told.version !== version) continue;
      const current = new Set(now);
      return { came: now.filter((u) => !told.users.has(u)), left: [...told.users].filter((u) => !current.has(u)) };
    }
    return null;
  }
}
