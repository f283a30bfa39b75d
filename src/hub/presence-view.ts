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
export class PresenceView {
  private readonly told = new Map<IdKey, Set<IdKey>>();

  /** A registration went live with this online list (the freshest the members have). */
  seed(chat: IdKey, online: readonly IdKey[]): void {
    this.told.set(chat, new Set(online));
  }

  /** A frame delivered to the chat's members: applied if it is presence (unnumbered frames only). */
  observe(chat: IdKey, frame: Buffer): void {
    if (frame.length < PRESENCE_PREFIX.length || frame.compare(PRESENCE_PREFIX, 0, PRESENCE_PREFIX.length, 0, PRESENCE_PREFIX.length) !== 0) return;
    const set = this.told.get(chat);
    if (set === undefined) return;
    let f: { type?: unknown; user_id?: WireId; status?: unknown; online?: WireId[]; offline?: WireId[] };
    try {
      f = JSON.parse(frame.toString('utf8')) as typeof f;
    } catch {
      return;
    }
    if (f.type === 'presence' && f.user_id !== undefined) {
      if (f.status === 'online') set.add(idKey(f.user_id));
      else set.delete(idKey(f.user_id));
    } else if (f.type === 'presence_batch') {
      for (const u of f.online ?? []) set.add(idKey(u));
      for (const u of f.offline ?? []) set.delete(idKey(u));
    }
  }

  /** The chat has no local member any more. */
  forget(chat: IdKey): void {
    this.told.delete(chat);
  }

  /**
   * After an outage: for each chat, the frame that brings its members to the engine's online
   * list (null where nothing differs); a chat whose list cannot be read now is skipped.
   */
  async repair(online: (chat: IdKey) => Promise<IdKey[]>, deliver: (chat: IdKey, frame: Buffer) => void): Promise<number> {
    let repaired = 0;
    for (const chat of [...this.told.keys()]) {
      let now: IdKey[];
      try {
        now = await online(chat);
      } catch {
        continue;
      }
      const set = this.told.get(chat);
      if (set === undefined) continue; // its last member left meanwhile
      const came = now.filter((u) => !set.has(u));
      const current = new Set(now);
      const left = [...set].filter((u) => !current.has(u));
      if (came.length === 0 && left.length === 0) continue;
      deliver(chat, out.presenceBatch(chat, came, left)); // observed on the way: the set follows
      repaired++;
    }
    return repaired;
  }
}
