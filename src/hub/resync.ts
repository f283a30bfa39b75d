import { atOrBefore, positionOf, type StreamPosition } from '../engine/stream.js';
import type { Engine } from '../engine/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/index.js';
import type { IdKey } from '../protocol/ids.js';

interface HeldDelivery {
  frame: Buffer;
  exceptConn: string | null;
}

/** Deliveries held per chat while catching up; past it the chat counts as lost. */
const MAX_HELD = 10_000;
/**
 * Bytes held by every chat together: a chat whose next delivery would pass it counts as lost
 * (its connections resume), so an outage of the command connection alone — every other
 * instance's broadcasts still arriving — cannot grow memory without bound.
 */
const MAX_HELD_BYTES = 64 * 1024 * 1024;
/** A catch-up that failed is tried again this soon (while the engine stays connected). */
const RETRY_MS = 500;
/** A chat that held more than MAX_HELD deliveries (or MAX_HELD_BYTES): it is lost whatever the history says. */
const OVERFLOWED = 'overflowed';
/**
 * A stream found ahead of what was delivered here is looked at again this much later: a
 * broadcast numbered just before the position was read may still be on its way.
 */
const BEHIND_GRACE_MS = 1000;

/** Whether the numbered frames among `held` are exactly every broadcast after `after` up to `upTo`, in order. */
function covers(held: readonly HeldDelivery[], after: StreamPosition, upTo: StreamPosition): boolean {
  if (after.epoch !== upTo.epoch) return false;
  let next = after.seq + 1;
  for (const { frame } of held) {
    const at = positionOf(frame);
    if (at === null || (at.epoch === after.epoch && at.seq < next)) continue; // not numbered, or before the gap
    if (at.epoch !== after.epoch || at.seq !== next) return false;
    next++;
  }
  return next > upTo.seq;
}

/**
 * Catching up after the engine was away. While a Redis connection is down, publications of other
 * instances do not reach this one, and nothing tells its clients: the next broadcast simply has a
 * later `seq`. So this keeps, per chat with local members, the last stream position delivered
 * here; when the engine is lost it holds the chats' deliveries, and when it is back it reads what
 * this instance missed from the chat's history and delivers it — then what was held, minus what
 * the history already covered — so local receivers see every broadcast once, in order.
 * When the stream itself was lost (Redis restarted without persistence or flushed: a new epoch),
 * what the old epoch lost is the main API's to give, but what other instances published in the
 * new epoch meanwhile is in its history: it is delivered like any missed broadcast, and its new
 * epoch tells every client to fetch the rest from the main API. When the history cannot cover
 * the gap — trimmed, or none kept (HISTORY_SIZE=0) — the gap would be invisible (a connection
 * never skips a seq otherwise), so the chat's local connections are closed 1012 (`onLost`): they
 * reconnect and register with their own positions, and the gateway tells each of them what it
 * missed (`recovered:false`). A chat nobody published to meanwhile is caught up as it is.
 *
 * Publications of a chat reach this instance in `seq` order, so a numbered frame at or before
 * the last one delivered here can only be one a catch-up already delivered from history (it was
 * published before the history was read, and arrived after): it is dropped, not delivered twice.
 *
 * A subscription can also lose publications while every connection looks up — a Redis Cluster's
 * sharded subscriber reconnected by the client library, a chat's slot moved to another master.
 * Two things notice: a broadcast whose seq skips ahead in the same epoch (the chat is held and
 * caught up at once, the skipping frame held with it), and, for a chat that went quiet after
 * the loss, the engine's periodic read of the stream's position (`check`).
 */
export class Resync {
  /**
   * Per chat, the position of the last numbered frame delivered here (read from its prefix, not
   * the frame kept: a received frame is a slice of the Redis client's read buffer, and keeping it
   * would keep that whole buffer alive for as long as the chat stays quiet).
   */
  private readonly last = new Map<IdKey, StreamPosition>();
  /** Per chat with nothing delivered yet, the position its first registration read when it went live. */
  private readonly noted = new Map<IdKey, StreamPosition>();
  /** Chats holding their deliveries until caught up; null while the engine has not been lost. */
  private held: Map<IdKey, HeldDelivery[] | typeof OVERFLOWED> | null = null;
  /** The frames in `held`, in bytes (see MAX_HELD_BYTES). */
  private heldBytes = 0;
  private running = false;

  constructor(
    private readonly engine: Engine,
    /** `position`: the frame's, already read here (null outside the stream), so receivers need not read it again. */
    private readonly deliver: (chat: IdKey, frame: Buffer, position: StreamPosition | null, exceptConn: string | null) => void,
    private readonly onLost: (chat: IdKey) => void,
    /** A chat's subscription lost publications while connected: what else they told (presence) must be read again. */
    private readonly onGap: (chat: IdKey) => void,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /** The most one chat's catch-up may read (half of MAX_BUFFERED_BYTES, like a client's replay). */
    private readonly maxBytes: number,
  ) {}

  /** Every delivery from the engine comes through here. */
  receive(chat: IdKey, frame: Buffer, exceptConn: string | null): void {
    const waiting = this.held?.get(chat);
    if (waiting === undefined) return this.pass(chat, frame, exceptConn);
    if (waiting === OVERFLOWED) return;
    if (waiting.length < MAX_HELD && this.heldBytes + frame.length <= MAX_HELD_BYTES) {
      // A copy: a received frame is a slice of the Redis client's read buffer, which it would keep alive.
      waiting.push({ frame: Buffer.from(frame), exceptConn });
      this.heldBytes += frame.length;
    } else {
      this.release(chat);
      this.held!.set(chat, OVERFLOWED);
    }
  }

  /** Takes `chat`'s held deliveries out of the count (they are delivered, dropped, or overflowed). */
  private release(chat: IdKey): void {
    const waiting = this.held?.get(chat);
    if (waiting === undefined || waiting === OVERFLOWED) return;
    for (const { frame } of waiting) this.heldBytes -= frame.length;
  }

  /** A position this instance is known to be at (a registration read it when it went live). */
  note(chat: IdKey, position: StreamPosition): void {
    if (!this.last.has(chat) && !this.noted.has(chat)) this.noted.set(chat, position);
  }

  /** The last numbered frame delivered here (every live local member has it, or sent it). */
  delivered(chat: IdKey): StreamPosition | undefined {
    return this.last.get(chat);
  }

  /** The chat has no local member any more. */
  forget(chat: IdKey): void {
    this.last.delete(chat);
    this.noted.delete(chat);
    this.release(chat);
    this.held?.delete(chat);
  }

  /** The engine is gone: hold the deliveries of `chats` (those with local members) until caught up. */
  engineLost(chats: Iterable<IdKey>): void {
    this.held ??= new Map();
    for (const chat of chats) if (!this.held.has(chat)) this.held.set(chat, []);
  }

  /**
   * The engine read the chat's stream at `position` (see the class comment). Ahead of what was
   * delivered here, and still ahead BEHIND_GRACE_MS later: the chat catches up from history.
   */
  check(chat: IdKey, position: StreamPosition): void {
    if (!this.behind(chat, position)) return;
    setTimeout(() => {
      if (this.behind(chat, position)) this.gapFound(chat, null);
    }, BEHIND_GRACE_MS).unref();
  }

  private behind(chat: IdKey, position: StreamPosition): boolean {
    if (this.held?.has(chat) === true) return false; // catching up already
    const delivered = this.last.get(chat) ?? this.noted.get(chat);
    if (delivered === undefined) return false; // no local member (or nothing to compare with yet)
    return position.epoch === delivered.epoch ? position.seq > delivered.seq : position.seq > 0;
  }

  /** Broadcasts of `chat` were lost on their way here: hold it (with `first`, the frame that showed it) and catch up. */
  private gapFound(chat: IdKey, first: HeldDelivery | null): void {
    this.metrics.resyncs.inc({ outcome: 'gap' });
    this.log.warn({ chat }, 'broadcasts lost by the subscription; catching up from history');
    this.held ??= new Map();
    this.held.set(chat, []);
    if (first !== null) this.receive(chat, first.frame, first.exceptConn);
    this.onGap(chat);
    if (this.engine.isConnected()) void this.engineBack();
  }

  /**
   * The engine is back (or a chat found a gap): catch every held chat up, one at a time; a new
   * outage stops and resumes it. A chat whose catch-up failed (connected, but Redis not serving
   * yet) — or that was held while one ran — is tried again after RETRY_MS while the engine stays
   * connected: never left holding until the next outage.
   */
  async engineBack(): Promise<void> {
    if (this.held === null || this.running) return;
    this.running = true;
    try {
      // A revoke missed with the publications is acted on before they are replayed (a failure to
      // read: the catch-up goes on; the next probe reads the commands).
      await this.engine.readMissedCommands?.().catch(() => undefined);
      for (const chat of [...this.held.keys()]) {
        if (!this.engine.isConnected()) return;
        await this.catchUp(chat);
      }
    } finally {
      this.running = false;
      if (this.held?.size === 0) this.held = null;
      else if (this.held !== null && this.engine.isConnected()) setTimeout(() => void this.engineBack(), RETRY_MS).unref();
    }
  }

  private pass(chat: IdKey, frame: Buffer, exceptConn: string | null): void {
    const at = positionOf(frame);
    if (at !== null) {
      const last = this.last.get(chat);
      if (last !== undefined && atOrBefore(at, last)) return; // delivered by a catch-up
      // Skipping ahead of the last delivered — or, before any, of where the first registration went live.
      const base = last ?? this.noted.get(chat);
      if (base !== undefined && at.epoch === base.epoch && at.seq > base.seq + 1) return this.gapFound(chat, { frame, exceptConn });
      if (last === undefined) this.noted.delete(chat);
      this.last.set(chat, at);
    }
    this.deliver(chat, frame, at, exceptConn);
  }

  private async catchUp(chat: IdKey): Promise<void> {
    if (this.held?.get(chat) === undefined) return;
    const since = this.last.get(chat) ?? this.noted.get(chat);
    let missed: readonly Buffer[] = [];
    let lost = this.held.get(chat) === OVERFLOWED;
    /** The history could not give what was missed: (after, upTo] must be in what was held. */
    let uncovered: { after: StreamPosition; upTo: StreamPosition } | null = null;
    if (!lost && since !== undefined) {
      try {
        let from = since;
        let result = await this.engine.recover(chat, from, this.maxBytes);
        // A new epoch: what it has numbered so far was published while this instance was away.
        if (!result.recovered && result.reason === 'epoch_changed') {
          from = { seq: 0, epoch: result.position.epoch };
          result = await this.engine.recover(chat, from, this.maxBytes);
        }
        if (result.recovered) missed = result.frames;
        else uncovered = { after: from, upTo: result.position };
      } catch {
        return; // the engine failed again: the chat stays held until it is back
      }
    }
    const waiting = this.held?.get(chat);
    if (waiting === undefined) return; // forgotten meanwhile
    this.release(chat);
    this.held!.delete(chat);
    // Only the command connection was lost (the subscription stayed up), say: what was held may
    // be every broadcast the history cannot give, and then nothing is missing.
    if (uncovered !== null && waiting !== OVERFLOWED) lost = !covers(waiting, uncovered.after, uncovered.upTo);
    if (lost || waiting === OVERFLOWED) {
      this.metrics.resyncs.inc({ outcome: 'lost' });
      this.log.warn({ chat }, 'broadcasts missed during an engine outage are not in history: closing the chat\'s connections so they recover');
      this.last.delete(chat);
      this.noted.delete(chat);
      this.onLost(chat);
      return;
    }
    this.metrics.resyncs.inc({ outcome: 'recovered' });
    if (missed.length > 0) this.log.info({ chat, broadcasts: missed.length }, 'broadcasts missed during an engine outage delivered from history');
    // Through `receive`: should these show a gap again, the chat is held again, and the rest
    // of them waits with it rather than skipping past.
    for (const frame of missed) this.receive(chat, frame, null);
    // What was held meanwhile, minus what the history covered (`pass` drops those).
    for (const { frame, exceptConn } of waiting) this.receive(chat, frame, exceptConn);
  }
}
