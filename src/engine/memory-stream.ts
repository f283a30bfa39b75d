import type { IdKey } from '../protocol/ids.js';
import { STREAM_TTL_MS, newEpoch, numberFrame, type AppendAttempt, type HistoryLimits, type Recovery, type StreamPosition } from './stream.js';

/** How far back before an operation's first attempt an earlier attempt of it is looked for (as the Redis script does). */
const LOOK_BACK_MS = 60_000;

interface Entry {
  readonly seq: number;
  readonly at: number;
  /**
   * The numbered frame's bytes, kept as a one-byte (latin1) string — lossless, one heap object
   * of the frame's size. Not the Buffer: a small Buffer is a slice of Node's shared 8 KiB pool and
   * keeps its whole slab alive, and a Buffer of its own costs the young-generation GC more than
   * the string (docs/decisions.md, "The chat stream").
   */
  readonly frame: string;
  readonly key: string | undefined;
  /**
   * The operation's token, for an append made as a retry (see ChatStream.append): only those can
   * meet an earlier attempt here — this engine's appends never fail half-way — namely the server
   * API's publishes that carry an id. Others keep none.
   */
  readonly token?: string;
}

interface ChatState {
  epoch: string;
  seq: number;
  /** Ring buffer of the last `limits.size` entries; `head` is the oldest. */
  entries: Entry[];
  head: number;
  touchedAt: number;
}

/**
 * The memory engine's chat streams: a counter, an epoch and a ring buffer per chat. Nothing
 * survives the process, so a restart starts every chat in a new epoch.
 */
export class MemoryStreams {
  private readonly chats = new Map<IdKey, ChatState>();

  constructor(
    private readonly limits: HistoryLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Numbers and stores one broadcast; returns the numbered bytes and their position. A retry
   * (`attempt.retry`) whose operation is already in history is not appended again: its position
   * and stored bytes come back with `earlier` set.
   */
  append(chat: IdKey, frame: Buffer, key?: string, attempt?: AppendAttempt): { position: StreamPosition; numbered: Buffer; earlier?: true } {
    const state = this.state(chat);
    const retry = attempt?.retry === true ? attempt : undefined;
    if (retry !== undefined) {
      const found = this.find(state, retry);
      if (found !== undefined) return { position: { seq: found.seq, epoch: state.epoch }, numbered: Buffer.from(found.frame, 'latin1'), earlier: true };
    }
    const position = { seq: ++state.seq, epoch: state.epoch };
    const numbered = numberFrame(frame, position);
    const { size } = this.limits;
    if (size > 0) {
      const entry: Entry = { seq: position.seq, at: this.now(), frame: numbered.toString('latin1'), key, ...(retry === undefined ? {} : { token: retry.token }) };
      if (state.entries.length < size) state.entries.push(entry);
      else {
        state.entries[state.head] = entry;
        state.head = (state.head + 1) % size;
      }
    }
    return { position, numbered };
  }

  /** The entry appended under `attempt.token`, newest first, not before LOOK_BACK_MS ahead of its first attempt. */
  private find(state: ChatState, attempt: AppendAttempt): Entry | undefined {
    const count = state.entries.length;
    for (let i = count - 1; i >= 0; i--) {
      const entry = state.entries[(state.head + i) % count]!;
      if (entry.at < attempt.firstAt - LOOK_BACK_MS) return undefined;
      if (entry.token === attempt.token) return entry;
    }
    return undefined;
  }

  contains(chat: IdKey, key: string): boolean {
    return this.chats.get(chat)?.entries.some((e) => e.key === key) ?? false;
  }

  position(chat: IdKey): StreamPosition {
    const { seq, epoch } = this.state(chat);
    return { seq, epoch };
  }

  recover(chat: IdKey, since: StreamPosition, maxBytes: number): Recovery {
    const state = this.state(chat);
    const position = { seq: state.seq, epoch: state.epoch };
    if (since.epoch !== state.epoch || since.seq > state.seq) return { recovered: false, position, reason: 'epoch_changed' };
    if (since.seq === state.seq) return { recovered: true, position, frames: [] };
    if (this.limits.size === 0) return { recovered: false, position, reason: 'no_history' };
    const missing = state.seq - since.seq;
    const count = state.entries.length;
    if (missing > count) return { recovered: false, position, reason: 'too_far_behind' };
    const frames: Buffer[] = [];
    const oldestAllowed = this.now() - this.limits.ttlMs;
    let bytes = 0;
    for (let i = count - missing; i < count; i++) {
      const entry = state.entries[(state.head + i) % count]!;
      bytes += entry.frame.length;
      if (entry.at < oldestAllowed || bytes > maxBytes) return { recovered: false, position, reason: 'too_far_behind' };
      frames.push(Buffer.from(entry.frame, 'latin1'));
    }
    return { recovered: true, position, frames };
  }

  /**
   * Frees what can no longer be replayed: entries past the history TTL. A chat's position (its
   * epoch and seq, a few bytes) stays for STREAM_TTL_MS after its last use, as in Redis, so a
   * client resuming at the top of a chat that was merely quiet is told it missed nothing; only a
   * chat untouched for that long is forgotten (its next broadcast starts a new epoch).
   */
  sweep(): void {
    const now = this.now();
    const oldestAllowed = now - this.limits.ttlMs;
    for (const [chat, state] of this.chats) {
      if (state.touchedAt < now - STREAM_TTL_MS) {
        this.chats.delete(chat);
        continue;
      }
      // Entries are in time order from `head`: only a chat whose oldest one expired is rebuilt.
      const oldest = state.entries[state.head];
      if (oldest === undefined || oldest.at >= oldestAllowed) continue;
      state.entries = this.ordered(state).filter((e) => e.at >= oldestAllowed);
      state.head = 0;
    }
  }

  get chatCount(): number {
    return this.chats.size;
  }

  private ordered(state: ChatState): Entry[] {
    return [...state.entries.slice(state.head), ...state.entries.slice(0, state.head)];
  }

  private state(chat: IdKey): ChatState {
    let state = this.chats.get(chat);
    if (state === undefined) this.chats.set(chat, (state = { epoch: newEpoch(), seq: 0, entries: [], head: 0, touchedAt: 0 }));
    state.touchedAt = this.now();
    return state;
  }
}
