import { ClientError } from './errors.js';
import type { Pending } from './outbox.js';
import { RATE_LIMIT_PAUSE_MS, type Pacer } from './pacer.js';
import { clearTimer, type Timer } from './timers.js';
import type { Position } from './types.js';

/** What a request sent on the current connection needs to be matched with its answer or resent. */
export interface Track {
  /** What answers it: `w:<op>:<id>` (writes), `r:<chat>` (register), `u:<chat>` (unregister), `p` (ping), `f` (refresh). */
  key: string;
  /** Sends it again (it was dropped unread, or its answer is overdue); a no-op once it no longer matters. */
  resend(): void;
  /** Pings: told whether a pong came. */
  onAnswer?: (answered: boolean) => void;
  /** Registers: the position the register asks to resume from. */
  since?: Position | null;
  /**
   * Writes: the outbox entry this send is of. Two writes can share a key (edits of one message),
   * and a request resent after a timeout is answered twice, so an answer belongs to the entry
   * of the send it answers — never to a later write with the same key.
   */
  owner?: Pending;
}

/**
 * A request sent on the current connection and not answered yet. The gateway answers every
 * frame it reads, in order per chat, so each send is matched with one answer — except the frames
 * it dropped unread after a `rate_limited` (see `rateLimited`), which are removed and resent.
 */
export interface Outstanding extends Track {
  /** Its number among the frames sent on this connection (1, 2, …). */
  no: number;
  sentAt: number;
  /** Overdue and sent again: still answered (the resend is another entry), never resent again. */
  resent: boolean;
}

/** A frame on its way out; with a `track` when it is a request. */
export interface Outgoing {
  text: string;
  track?: Track | undefined;
}

/** What the requests need from the writes they carry. */
export interface RequestsHost {
  isOpen(): boolean;
  /** The write is still waiting in the outbox (not settled). */
  isPending(write: Pending): boolean;
  /** A write's only possible answer was an error that named no request (see `anonymous`). */
  writeRefused(write: Pending, error: ClientError): void;
  /** Sends of settled writes were let go: later writes with their keys may go now. */
  writesMayGo(): void;
}

/**
 * The key that answers a write: its op, message id and chat — the chat too, because the same id
 * may be written to two chats at once, and each answer (it names its chat) settles its own.
 * Ops and message ids hold no `:`, so the chat, last, may.
 */
export function writeKey(chat: string, op: string, id: string): string {
  return `w:${op}:${id}:${chat}`;
}

/**
 * The requests of the current connection: each send is matched with its answer, and sent again
 * when the gateway dropped it unread (after a `rate_limited`) or its answer is overdue.
 */
export class Requests {
  /** Frames sent on the current connection. */
  private sent = 0;
  /** Requests sent on the current connection and not answered yet, in send order. */
  private outstanding: Outstanding[] = [];
  private requestTimer: Timer | null = null;
  /** Requests sent after the frame numbered this may have been dropped unread; resent at resume. */
  private suspectAfter = Infinity;
  /**
   * …up to this one: the frames sent when the last `rate_limited` came. Later ones were sent once
   * the pause was over (nothing goes out during it) and were read: not resent again at resume.
   */
  private suspectUpTo = 0;
  private resumeTimer: Timer | null = null;
  /**
   * Errors the gateway could not attach to a request (no `op`: a frame it could not parse) and
   * which were not its bucket's pause, on this connection, each with the one write it can only be
   * the answer to: kept only when that write's sends were all that was unanswered and the app sent no frame of
   * its own (`sendRaw`) on the connection. That write, if it gets no other answer, takes the error
   * as its refusal when it is overdue (`requestTimeoutMs`). Never a guess: an error that might
   * answer something else fails no write.
   */
  private anonymous: Array<{ owner: Pending; error: ClientError }> = [];
  /** The app sent a frame of its own (`sendRaw`) on the current connection: an error without `op` may be its answer. */
  private rawSent = false;
  /** Writes resent after a pause (`resume`): one of their sends may have been dropped unread. */
  private readonly mayBeDropped = new WeakSet<Pending>();

  constructor(
    private readonly timeoutMs: number,
    private readonly pacer: Pacer<Outgoing>,
    private readonly host: RequestsHost,
  ) {}

  /** Frames sent on the current connection. */
  get framesSent(): number {
    return this.sent;
  }

  /** A new connection, opened at `now`: its frames are numbered from 1. */
  restart(now: number): void {
    this.sent = 0;
    this.rawSent = false;
    this.pacer.restart(now);
  }

  /** Sends a frame, or queues it (see `Pacer.offer`). */
  send(frame: Outgoing, droppable: boolean): boolean {
    return this.pacer.offer(frame, droppable);
  }

  /** A frame goes out now: numbered, and listed until answered if it is a request. */
  onSend(track: Track | undefined): void {
    const no = ++this.sent;
    if (track !== undefined) {
      this.outstanding.push({ ...track, no, sentAt: Date.now(), resent: false });
      this.armRequestTimer();
    }
  }

  /** The app sent a frame of its own (`sendRaw`). */
  onRawSend(): void {
    this.rawSent = true;
  }

  /** The oldest request still waiting for an answer like `key`; removed: it is answered now. */
  answered(key: string): Outstanding | undefined {
    const i = this.outstanding.findIndex((o) => o.key === key);
    if (i < 0) return undefined;
    return this.outstanding.splice(i, 1)[0];
  }

  /**
   * The request with this key sent and unanswered, or queued to be sent, on this connection —
   * not counting one overdue (`requestTimeoutMs`), whose resend is wanted.
   */
  pending(key: string): Track | undefined {
    return this.outstanding.find((o) => o.key === key && !o.resent) ?? this.pacer.find((f) => f.track?.key === key)?.track;
  }

  /** Some request whose key `match`es is sent or queued and not answered yet. */
  anyPending(match: (key: string) => boolean): boolean {
    return this.outstanding.some((o) => match(o.key)) || this.pacer.find((f) => f.track !== undefined && match(f.track.key)) !== undefined;
  }

  /**
   * A send of another write with this write's key is still listed, and that write was resent
   * after a pause: one of its sends may have been dropped, so the number of answers to come is
   * unknown. (Sends that are all read — a resend after `requestTimeoutMs` — are each answered, in
   * order: later writes need not wait for them.)
   */
  awaitedElsewhere(item: Pending): boolean {
    const key = writeKey(String(item.entry.chatId), item.entry.op, item.entry.data.id);
    return this.outstanding.some((o) => o.key === key && o.owner !== item && this.mayBeDropped.has(o.owner!));
  }

  /**
   * An error without `op` (the gateway could not parse a frame). Which request it answers is
   * known only when a single write's sends are unanswered and no frame of the app's (`sendRaw`,
   * answered by such errors too) was sent on this connection: kept for that write then.
   */
  onUnnamedError(error: ClientError): void {
    const owner = this.outstanding[0]?.owner;
    if (owner !== undefined && !this.rawSent && this.outstanding.every((o) => o.owner === owner)) {
      this.anonymous.push({ owner, error });
      if (this.anonymous.length > 100) this.anonymous.shift();
    }
  }

  /**
   * The gateway answered a frame (number `no`; 0 if unknown) `rate_limited`. Over its bucket it
   * then reads nothing for a second and drops, unanswered, what it had already read after that
   * frame. So: send nothing until it reads again, slow down, and then resend every request sent
   * after that frame that is still unanswered (same ids: resends are idempotent, and a second
   * answer to one is recognised and ignored).
   */
  rateLimited(no: number): void {
    this.pacer.pause();
    this.suspectAfter = Math.min(this.suspectAfter, no);
    this.suspectUpTo = this.sent;
    clearTimer(this.resumeTimer);
    this.resumeTimer = setTimeout(() => this.resume(), RATE_LIMIT_PAUSE_MS);
  }

  /** The connection is closing: nothing more is sent or resent on it (queued pings get no pong). */
  stop(): void {
    clearTimer(this.resumeTimer);
    clearTimer(this.requestTimer);
    this.resumeTimer = this.requestTimer = null;
    this.suspectAfter = Infinity;
    for (const frame of this.pacer.stop()) frame.track?.onAnswer?.(false);
  }

  /** The connection is gone: nothing sent on it will be answered (pings are told so). */
  drop(): void {
    this.anonymous = [];
    for (const o of this.outstanding.splice(0)) o.onAnswer?.(false);
  }

  private resume(): void {
    this.resumeTimer = null;
    const after = this.suspectAfter;
    const upTo = this.suspectUpTo;
    this.suspectAfter = Infinity;
    if (!this.host.isOpen()) return;
    // Not those sent after the pause, before this timer fired (the pacer's own timer, due at the
    // same moment, may fire first: the refused request's resend, say — resent twice, the second
    // send was refused by the bucket again).
    const suspect = (o: Outstanding) => o.no > after && o.no <= upTo;
    const suspects = this.outstanding.filter((o) => suspect(o) && !o.resent);
    // A write's suspect send stays listed: the gateway may have read it after all (it drops only
    // what it read together with the refused frame; what waited in the socket is read after the
    // pause), and then answers it as well as the resend. Each of the two answers then finds a send
    // of this write, and the next write with the same key waits until both sends are accounted for
    // (see `awaitedElsewhere`) — never taking the late one for its own. Other requests are matched
    // by key alone, and a second answer to them is harmless.
    this.outstanding = this.outstanding.filter((o) => !suspect(o) || o.owner !== undefined);
    for (const o of suspects) {
      if (o.owner !== undefined) {
        o.resent = true;
        this.mayBeDropped.add(o.owner);
      }
      o.resend();
    }
    this.pacer.flush();
  }

  /**
   * Requests unanswered for `requestTimeoutMs` are sent again (a safety net; see the option).
   * The overdue send stays listed: the gateway still answers it, and that answer must not be
   * taken for the resend's — or for a later request with the same key.
   */
  private armRequestTimer(): void {
    if (this.requestTimer !== null) return;
    const oldest = this.outstanding.find((o) => !o.resent || this.lostIfOverdue(o));
    if (oldest === undefined) return;
    const due = oldest.sentAt + this.timeoutMs - Date.now();
    this.requestTimer = setTimeout(() => {
      this.requestTimer = null;
      if (!this.host.isOpen()) return;
      const limit = Date.now() - this.timeoutMs;
      // A send of a write that is settled, still unanswered when overdue, was dropped unread:
      // its answer is not coming, and a later write with the same key may go.
      const lost = this.outstanding.filter((o) => o.sentAt <= limit && this.lostIfOverdue(o));
      if (lost.length > 0) this.outstanding = this.outstanding.filter((o) => !lost.includes(o));
      for (const o of this.outstanding.filter((o) => !o.resent && o.sentAt <= limit)) {
        o.resent = true;
        // The gateway refused a frame without naming it (see `anonymous`) while this write's sends
        // were all that was unanswered and no frame of the app's was sent, and the write got no other
        // answer: that refusal was its answer. Resending the same bytes would only be refused
        // again, holding the chat's later writes forever.
        const refusal = o.owner?.inFlight === true ? this.anonymousRefusal(o) : undefined;
        if (refusal === undefined) o.resend();
        else {
          this.outstanding = this.outstanding.filter((x) => x.owner !== o.owner);
          this.host.writeRefused(o.owner!, new ClientError(refusal.code, refusal.message, { ...refusal.details, op: o.owner!.entry.op, id: o.owner!.entry.data.id, chatId: o.owner!.entry.chatId }));
        }
      }
      this.armRequestTimer();
      if (lost.length > 0) this.host.writesMayGo();
    }, Math.max(0, due));
  }

  /** The refusal without a name that can only be the answer to a send of this write (consumed); undefined when none. */
  private anonymousRefusal(send: Outstanding): ClientError | undefined {
    const i = this.anonymous.findIndex((a) => a.owner === send.owner);
    if (i < 0) return undefined;
    return this.anonymous.splice(i, 1)[0]!.error;
  }

  /**
   * A send of a settled write that was resent after a pause: if it is still unanswered when
   * overdue, it was the one dropped unread, and is let go (a later write with its key may go).
   */
  private lostIfOverdue(o: Outstanding): boolean {
    return o.owner !== undefined && this.mayBeDropped.has(o.owner) && !this.host.isPending(o.owner);
  }
}
