import type { IdKey } from '../protocol/ids.js';
import type { Outgoing } from './outgoing.js';

/** What the registry needs of a registration: its connection's id and a way to hand it a broadcast. */
export interface Member {
  readonly id: string;
  /** The registration's verified user (the server API acts on a user's registrations). */
  readonly user: IdKey;
  /** Queues an already-framed broadcast. Never throws. */
  send(frame: Outgoing): void;
  /** Ends the registration because the server API revoked the user's membership of the chat. */
  revoke(): void;
  /** The connection missed broadcasts this instance cannot replay: it must reconnect and resume. */
  reconnect(): void;
}

/**
 * Local chat → connections map. Plain data, no I/O: every lookup is O(1) and the delivery loop
 * is a walk over one Set.
 */
export class Registry<M extends Member = Member> {
  private readonly chats = new Map<IdKey, Set<M>>();
  private count = 0;

  /** Returns true when `member` is the chat's first local member (subscribe needed). */
  add(chat: IdKey, member: M): boolean {
    let members = this.chats.get(chat);
    const first = members === undefined;
    if (members === undefined) this.chats.set(chat, (members = new Set()));
    if (!members.has(member)) {
      members.add(member);
      this.count++;
    }
    return first;
  }

  /** Returns true when the chat has no local member left (unsubscribe due). */
  remove(chat: IdKey, member: M): boolean {
    const members = this.chats.get(chat);
    if (members === undefined || !members.delete(member)) return false;
    this.count--;
    if (members.size > 0) return false;
    this.chats.delete(chat);
    return true;
  }

  has(chat: IdKey): boolean {
    return this.chats.has(chat);
  }

  /** Whether `chat` has a local member other than `exceptId` (a broadcast worth framing). */
  hasReceivers(chat: IdKey, exceptId: string | null): boolean {
    const members = this.chats.get(chat);
    if (members === undefined) return false;
    for (const member of members) if (member.id !== exceptId) return true;
    return false;
  }

  members(chat: IdKey): ReadonlySet<M> | undefined {
    return this.chats.get(chat);
  }

  chatKeys(): IterableIterator<IdKey> {
    return this.chats.keys();
  }

  /** Total (connection, chat) registrations. */
  get registrations(): number {
    return this.count;
  }

  /** Writes the same bytes to every local member except `exceptId`; returns how many got it. */
  deliver(chat: IdKey, frame: Outgoing, exceptId: string | null): number {
    const members = this.chats.get(chat);
    if (members === undefined) return 0;
    let n = 0;
    for (const member of members) {
      if (member.id === exceptId) continue;
      member.send(frame);
      n++;
    }
    return n;
  }
}
