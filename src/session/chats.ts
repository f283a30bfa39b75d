import type { IdKey } from '../protocol/ids.js';
import type { Registration } from './registration.js';

/**
 * A connection's chats: its registrations by chat, and the chats with a register queued or in
 * flight (at most one each). Almost every connection holds one registration and has nothing
 * pending, so a lone registration is kept as itself (it knows its chat) and a Map or Set is made
 * only when needed: an empty one costs ~150–200 bytes of heap, times every idle connection.
 */
export class Chats {
  private regs: Registration | Map<IdKey, Registration> | null = null;
  private registering: Set<IdKey> | null = null;

  /** How many chats are registered. */
  get size(): number {
    return this.regs === null ? 0 : this.regs instanceof Map ? this.regs.size : 1;
  }

  get(chat: IdKey): Registration | undefined {
    if (this.regs instanceof Map) return this.regs.get(chat);
    return this.regs !== null && this.regs.chat === chat ? this.regs : undefined;
  }

  has(chat: IdKey): boolean {
    return this.get(chat) !== undefined;
  }

  /** Adds `reg`, replacing the registration of its chat if there is one. */
  add(reg: Registration): void {
    if (this.regs instanceof Map) this.regs.set(reg.chat, reg);
    else if (this.regs === null || this.regs.chat === reg.chat) this.regs = reg;
    else
      this.regs = new Map([
        [this.regs.chat, this.regs],
        [reg.chat, reg],
      ]);
  }

  delete(chat: IdKey): boolean {
    if (!(this.regs instanceof Map)) {
      if (this.regs === null || this.regs.chat !== chat) return false;
      this.regs = null;
      return true;
    }
    if (!this.regs.delete(chat)) return false;
    // Back to one registration: kept as itself again.
    if (this.regs.size === 1) this.regs = this.regs.values().next().value as Registration;
    return true;
  }

  clear(): void {
    this.regs = null;
  }

  /** The registered chats. */
  *keys(): IterableIterator<IdKey> {
    for (const reg of this.values()) yield reg.chat;
  }

  /** The registrations. */
  *values(): IterableIterator<Registration> {
    if (this.regs instanceof Map) yield* this.regs.values();
    else if (this.regs !== null) yield this.regs;
  }

  /** Whether a register for `chat` is queued or in flight. */
  isRegistering(chat: IdKey): boolean {
    return this.registering !== null && this.registering.has(chat);
  }

  startRegistering(chat: IdKey): void {
    (this.registering ??= new Set()).add(chat);
  }

  doneRegistering(chat: IdKey): void {
    if (this.registering === null) return;
    this.registering.delete(chat);
    if (this.registering.size === 0) this.registering = null;
  }

  /** Chats registered or being registered, each counted once (they count toward MAX_CHATS_PER_CONNECTION). */
  get held(): number {
    let n = this.size;
    for (const chat of this.registering ?? []) if (!this.has(chat)) n++;
    return n;
  }
}
