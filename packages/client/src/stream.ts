import type { ChatId, DeleteEvent, EditEvent, GapEvent, MessageEvent, Position, ReceivedEdit, ReceivedMessage, SystemEvent } from './types.js';

/** What the app is told, in order. */
export type Delivery =
  | { type: 'message'; event: MessageEvent }
  | { type: 'edit'; event: EditEvent }
  | { type: 'delete'; event: DeleteEvent }
  | { type: 'event'; event: SystemEvent }
  | { type: 'gap'; event: GapEvent };

export interface StreamOptions {
  /** How long an edit for a message not seen yet is held before it is handed over anyway. */
  holdMs: number;
  /** Most edits held at once per chat; past it the oldest is handed over. */
  maxHeld: number;
  /** Message ids remembered per chat (delivered or deleted) for dedupe. */
  maxIds: number;
  /** Broadcasts received past a hole before the hole is reported as a gap, whatever `ownUnanswered` says. */
  maxUnfilled: number;
  /**
   * This client's writes to the chat sent on the current connection and not yet answered: each
   * may own one hole (the sender never receives its own broadcast live; its ack brings the
   * position). Infinity while registering. A hole that none of them can own is a broadcast the
   * gateway did not deliver: it is reported as a gap after `holeGraceMs`. Absent: only
   * `maxUnfilled` applies.
   */
  ownUnanswered?: (() => number) | undefined;
  /** How long a hole no write of ours can own may wait to be filled before it is a gap (default 0). */
  holeGraceMs?: number | undefined;
  /**
   * Most deliveries kept while muted (default: no limit). Past it the stream stops keeping — and
   * stops moving: its position stays where it was, so the chat, opened again, resumes from there
   * (`overflowed`: the gateway replays from its history, or a gap is reported).
   */
  maxDeferred?: number | undefined;
  /** The app's own answer to "do you have this message?" (e.g. loaded from history). */
  isKnown?: ((chatId: ChatId, messageId: string) => boolean) | undefined;
  /**
   * The app's word on a `delete_message` (absent: every one is accepted). A refused delete leaves
   * no tombstone and is not handed over: the message, and its edits, still are. Its seq counts as
   * delivered all the same.
   */
  acceptDelete?: ((chatId: ChatId, messageId: string, deletedBy: DeleteEvent['deletedBy']) => boolean) | undefined;
}

interface Held {
  events: EditEvent[];
  since: number;
}

/**
 * One chat's broadcast stream as the app sees it: each broadcast once, in order, never a
 * deleted message, edits only after their message. Pure bookkeeping: no I/O, no timers.
 *
 * Position: the highest `seq` such that every broadcast up to it was delivered (or was this
 * client's own acked write). Broadcasts above a hole are delivered and remembered in `above`;
 * a hole is filled by the ack of this client's own write, or reported as a gap as soon as more
 * seqs are missing than this client has writes unanswered (or when too much piles up past it).
 */
export class Stream {
  private pos: Position | null;
  private readonly above = new Set<number>();
  private readonly ids = new Map<string, 'delivered' | 'deleted'>();
  private readonly held = new Map<string, Held>();
  private heldCount = 0;
  /** Since when a hole our own writes cannot account for has been open; null when none is. */
  private holeSince: number | null = null;
  /** While muted (the chat is being left): what would have been handed to the app, in order. */
  private deferred: Delivery[] | null = null;
  /**
   * Muted and past `maxDeferred`: nothing more is kept and the stream stands still (no broadcast,
   * answer or ack moves its position) until `unmute`, after which the chat must resume from
   * `resumeFrom` (registered again with it as `since`).
   */
  private stalled = false;
  /** Seqs of this client's own acked writes in an epoch the stream has not reached yet. */
  private ownAhead: { epoch: string; seqs: Set<number> } | null = null;

  constructor(
    readonly chatId: ChatId,
    since: Position | null,
    private readonly opts: StreamOptions,
  ) {
    this.pos = since === null ? null : { ...since };
  }

  /**
   * Everything up to this position was handed to the app (or was this client's own acked write):
   * what the app may persist. It never passes a broadcast the stream still keeps from the app — an
   * edit held for its message, or a delivery deferred while the chat is being left — so a client
   * closed meanwhile, resuming from it, gets that broadcast replayed instead of losing it.
   */
  get position(): Position | null {
    if (this.pos === null) return null;
    let best: Position = { ...this.pos };
    const below = (p: Position | null): boolean => {
      if (p === null) return false;
      // Something kept back from an earlier epoch: the app is still there.
      if (p.epoch !== best.epoch) return (best = { ...p }), true;
      if (p.seq < best.seq) best = { ...p };
      return false;
    };
    for (const d of this.deferred ?? []) if (below(d.type === 'gap' ? d.event.from : before(d.event))) return best;
    for (const held of this.held.values()) for (const e of held.events) if (e.epoch === this.pos.epoch) below(before(e));
    return best;
  }

  /** Where this client stands in the stream (what its own next register resumes from): held and deferred broadcasts are in its memory. */
  get resumeFrom(): Position | null {
    return this.pos === null ? null : { ...this.pos };
  }

  /** The chat is being left: deliveries are kept from the app (see `unmute`) while the bookkeeping goes on. */
  mute(): void {
    this.deferred ??= [];
  }

  /** Opened again before the leave completed: what was kept back, to hand over now, in order. */
  unmute(): Delivery[] {
    const out = this.deferred ?? [];
    this.deferred = null;
    this.stalled = false;
    return out;
  }

  /**
   * More reached the chat while muted than `maxDeferred`: the rest was not kept and the position
   * stayed where it was. Once unmuted, the chat must be registered again from `resumeFrom`.
   */
  get overflowed(): boolean {
    return this.stalled;
  }

  /** Muted and full: nothing more is kept, nothing moves. */
  private standingStill(): boolean {
    if (!this.stalled && this.deferred !== null && this.deferred.length >= (this.opts.maxDeferred ?? Infinity)) this.stalled = true;
    return this.stalled;
  }

  /** Deliveries for the app: handed back, or kept while muted. */
  private hand(out: Delivery[]): Delivery[] {
    if (this.deferred === null) return out;
    this.deferred.push(...out);
    return [];
  }

  /**
   * A `message`, `edit_message`, `delete_message` or `event` frame from the gateway: every one
   * of them takes a place in the chat's stream. An `event` (a system event the backend
   * published) has no message id: it is deduped by its position alone.
   */
  onBroadcast(frame: Record<string, unknown>, now: number): Delivery[] {
    if (this.standingStill()) return [];
    return this.hand(this.broadcast(frame, now));
  }

  private broadcast(frame: Record<string, unknown>, now: number): Delivery[] {
    const out: Delivery[] = [];
    const data = frame.data as Record<string, unknown> | undefined;
    if (typeof data !== 'object' || data === null || Array.isArray(data)) return out;
    if (frame.type !== 'event' && typeof data.id !== 'string') return out;
    const position = positionIn(frame);
    // A broadcast's seq is 1 or more; anything else is not a place in the stream.
    const numbered = position !== null && position.seq >= 1;
    if (numbered) {
      const { seq, epoch } = position;
      if (this.pos === null) this.pos = { seq: seq - 1, epoch };
      else if (epoch !== this.pos.epoch) {
        // The stream restarted under a live connection (its history is gone): report, resume.
        const to = { seq: seq - 1, epoch };
        out.push(this.gap(this.pos, to, 'epoch_changed'));
        this.reset(to);
      }
      if (!this.mark(seq, out, now)) return out;
    }
    const at = numbered ? { seq: position.seq, epoch: position.epoch } : {};
    if (frame.type === 'event') {
      out.push({ type: 'event', event: { chatId: this.chatId, data, ...at } });
      return out;
    }
    const id = data.id as string;
    switch (frame.type) {
      case 'message': {
        if (this.ids.has(id)) return out; // delivered before (a replay or a resend), or deleted
        this.remember(id, 'delivered');
        out.push({ type: 'message', event: { chatId: this.chatId, message: data as ReceivedMessage, ...at } });
        for (const event of this.release(id)) out.push({ type: 'edit', event });
        return out;
      }
      case 'edit_message': {
        const state = this.ids.get(id);
        if (state === 'deleted') return out;
        const event: EditEvent = { chatId: this.chatId, edit: data as ReceivedEdit, ...at };
        if (state !== 'delivered' && !this.opts.isKnown?.(this.chatId, id)) {
          this.hold(id, event, now, out);
          return out;
        }
        // Known now (the app loaded it from history) while older edits of it are still held:
        // those go first, or they would come out later on top of this newer one.
        for (const older of this.release(id)) out.push({ type: 'edit', event: older });
        out.push({ type: 'edit', event });
        return out;
      }
      case 'delete_message': {
        if (this.ids.get(id) === 'deleted') return out;
        const deletedBy = data.deleted_by as DeleteEvent['deletedBy'];
        // One the app refuses (e.g. not by the message's author, as far as it knows) is not
        // applied: no tombstone, so the message and its later edits still come through.
        if (this.opts.acceptDelete !== undefined && !this.opts.acceptDelete(this.chatId, id, deletedBy)) return out;
        // A delete is never held: the tombstone keeps its message from ever being shown, and an
        // app that has the message from history removes it at once.
        this.remember(id, 'deleted');
        this.release(id);
        out.push({ type: 'delete', event: { chatId: this.chatId, id, ...(deletedBy === undefined ? {} : { deletedBy }), ...at } });
        return out;
      }
      default:
        return out;
    }
  }

  /**
   * The gateway's `registered`: where the chat stands now, and whether what was missed since
   * the position sent as `since` was replayed (the replayed frames came just before it).
   */
  onRegistered(now: Position | null, recovered: boolean | undefined, reason: string | undefined, askedSince: boolean, at = Date.now()): Delivery[] {
    if (this.standingStill()) return [];
    return this.hand(this.registered(now, recovered, reason, askedSince, at));
  }

  private registered(now: Position | null, recovered: boolean | undefined, reason: string | undefined, askedSince: boolean, at: number): Delivery[] {
    if (now === null) return []; // a gateway that does not number broadcasts
    const out: Delivery[] = [];
    const from = this.pos;
    // Exactly at the top: nothing was missed, even if the gateway keeps no history to replay.
    const caughtUp = from !== null && from.epoch === now.epoch && from.seq === now.seq;
    const missed = askedSince && from !== null && recovered !== true && !caughtUp;
    if (missed) {
      // Only what was not delivered: broadcasts above a hole were (a chat reopened from an older
      // position hands over those it kept), so the gaps run between them.
      let start = from;
      if (from.epoch === now.epoch) {
        for (const seq of [...this.above].filter((q) => q <= now.seq).sort((x, y) => x - y)) {
          if (seq - 1 > start.seq) out.push(this.gap(start, { seq: seq - 1, epoch: now.epoch }, reason ?? 'no_history'));
          start = { seq, epoch: now.epoch };
        }
      }
      if (start.epoch !== now.epoch || start.seq !== now.seq) out.push(this.gap(start, now, reason ?? 'no_history'));
    }
    if (missed || from === null || from.epoch !== now.epoch) {
      this.reset(now);
      return out;
    }
    // The same stream, nothing missed: everything up to `now` was delivered or replayed just
    // before this answer, or is this client's own write. Never move back: an ack of our own
    // write can overtake the answer to a register sent twice, and what it marked must stay.
    if (now.seq > from.seq) {
      this.pos = { ...now };
      for (const seq of this.above) if (seq <= now.seq) this.above.delete(seq);
      this.advance();
    }
    this.checkHoles(out, at);
    return out;
  }

  /** Before sending message `id`: a replay of it (after a lost ack) is this client's own. */
  noteSending(id: string): void {
    if (!this.ids.has(id)) this.remember(id, 'delivered');
  }

  /** This client's write was acked: the sender never receives its own broadcast live. */
  noteAck(op: string, id: string, seq: number | undefined, epoch: string | undefined, out: Delivery[], now = Date.now()): void {
    const mine: Delivery[] = [];
    if (op === 'delete_message') {
      this.remember(id, 'deleted');
      this.release(id);
    }
    if (op === 'message') this.noteSending(id);
    if (this.standingStill()) return; // its broadcast is replayed when the chat resumes (and known by id)
    if (seq !== undefined && this.pos !== null && epoch === this.pos.epoch) this.mark(seq, mine, now);
    else {
      // An ack in an epoch the stream has not reached yet (the stream restarted and this ack
      // overtook the new epoch's earlier broadcasts): counted once the stream gets there.
      if (seq !== undefined && epoch !== undefined && this.pos !== null && seq >= 1) {
        if (this.ownAhead?.epoch !== epoch) this.ownAhead = { epoch, seqs: new Set() };
        this.ownAhead.seqs.add(seq);
        // Bounded like the seqs kept past a hole: past it the lowest goes (the stream, once it
        // gets to that epoch, most likely starts above it; if not, it is a hole reported as a gap).
        if (this.ownAhead.seqs.size > this.opts.maxUnfilled) this.ownAhead.seqs.delete(Math.min(...this.ownAhead.seqs));
      }
      this.checkHoles(mine, now); // one write fewer that may own a hole
    }
    out.push(...this.hand(mine));
  }

  /** One of this client's writes failed: it owns no hole any more. */
  noteFailed(out: Delivery[], now = Date.now()): void {
    if (this.standingStill()) return;
    const mine: Delivery[] = [];
    this.checkHoles(mine, now);
    out.push(...this.hand(mine));
  }

  /** Hands over edits held longer than `holdMs` (their message may predate this client), and reports holes past their grace. */
  expire(now: number): Delivery[] {
    if (this.standingStill()) return [];
    return this.hand(this.expired(now));
  }

  private expired(now: number): Delivery[] {
    const out: Delivery[] = [];
    for (const [id, held] of this.held) {
      if (now - held.since < this.opts.holdMs) break; // insertion order = age order
      for (const event of this.release(id)) out.push({ type: 'edit', event });
    }
    this.checkHoles(out, now);
    return out;
  }

  /** When `expire` has something to do: the oldest held edit is due, or a hole's grace ends; null when neither. */
  nextExpiry(): number | null {
    if (this.stalled) return null;
    const oldest = this.held.values().next().value; // insertion order = age order
    const hole = this.holeSince === null ? Infinity : this.holeSince + (this.opts.holeGraceMs ?? 0);
    const next = Math.min(hole, oldest === undefined ? Infinity : oldest.since + this.opts.holdMs);
    return next === Infinity ? null : next;
  }

  /** Records `seq` as delivered; false if it already was. */
  private mark(seq: number, out: Delivery[], now: number): boolean {
    const pos = this.pos!;
    if (seq <= pos.seq || this.above.has(seq)) return false;
    this.above.add(seq);
    this.advance();
    this.checkHoles(out, now);
    return true;
  }

  /**
   * Reports as gaps the holes this client's own unanswered writes cannot account for, lowest
   * first, once they have stayed open for `holeGraceMs` (the gateway never skips a seq on a
   * connection, so such a hole is a broadcast it lost; the grace only forgives a reordering).
   * Called after every broadcast, whenever one of this client's writes is answered, and by `expire`.
   */
  private checkHoles(out: Delivery[], now: number): void {
    while (this.pos !== null && this.above.size > 0) {
      let low = Infinity;
      let high = -Infinity;
      for (const seq of this.above) {
        if (seq < low) low = seq;
        if (seq > high) high = seq;
      }
      const missing = high - this.pos.seq - this.above.size;
      const own = this.opts.ownUnanswered?.() ?? Infinity;
      const forced = this.above.size > this.opts.maxUnfilled;
      if (missing <= own && !forced) break;
      if (!forced) {
        this.holeSince ??= now;
        if (now - this.holeSince < (this.opts.holeGraceMs ?? 0)) return;
      }
      const to = { seq: low - 1, epoch: this.pos.epoch };
      out.push(this.gap(this.pos, to, 'missed'));
      this.pos = to;
      this.advance();
    }
    this.holeSince = null;
  }

  private advance(): void {
    const pos = this.pos!;
    let seq = pos.seq;
    while (this.above.delete(seq + 1)) seq++;
    if (seq !== pos.seq) this.pos = { seq, epoch: pos.epoch };
  }

  private reset(to: Position): void {
    this.pos = { ...to };
    this.above.clear();
    const ahead = this.ownAhead;
    if (ahead !== null && ahead.epoch === to.epoch) {
      this.ownAhead = null;
      for (const seq of ahead.seqs) if (seq > to.seq) this.above.add(seq);
      this.advance();
    }
  }

  private gap(from: Position, to: Position, reason: string): Delivery {
    return { type: 'gap', event: { chatId: this.chatId, from: { ...from }, to: { ...to }, reason } };
  }

  private remember(id: string, state: 'delivered' | 'deleted'): void {
    this.ids.delete(id); // re-insert: the map's order is the eviction order
    this.ids.set(id, state);
    if (this.ids.size > this.opts.maxIds) this.ids.delete(this.ids.keys().next().value!);
  }

  private hold(id: string, event: EditEvent, now: number, out: Delivery[]): void {
    const held = this.held.get(id);
    if (held) held.events.push(event);
    else this.held.set(id, { events: [event], since: now });
    this.heldCount++;
    while (this.heldCount > this.opts.maxHeld) {
      const oldest = this.held.keys().next().value!;
      for (const e of this.release(oldest)) out.push({ type: 'edit', event: e });
    }
  }

  /** Removes and returns the edits held for `id`. */
  private release(id: string): EditEvent[] {
    const held = this.held.get(id);
    if (held === undefined) return [];
    this.held.delete(id);
    this.heldCount -= held.events.length;
    return held.events;
  }
}

/** The position just before a numbered delivery (null for one without a position). */
function before(event: { seq?: number | undefined; epoch?: string | undefined }): Position | null {
  return event.seq === undefined || event.epoch === undefined ? null : { seq: event.seq - 1, epoch: event.epoch };
}

/**
 * The position a frame carries (`seq` and `epoch` at its top level), or null when it carries none
 * that is one: a seq that is not a safe integer ≥ 0, or no epoch (a bogus huge seq would otherwise
 * hide every later broadcast).
 */
export function positionIn(frame: Record<string, unknown>): Position | null {
  const { seq, epoch } = frame;
  return typeof seq === 'number' && Number.isSafeInteger(seq) && seq >= 0 && typeof epoch === 'string' && epoch !== '' ? { seq, epoch } : null;
}
