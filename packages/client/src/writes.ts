import { backoffDelay } from './backoff.js';
import type { ChatState } from './chat-state.js';
import type { Core } from './core.js';
import { ClientError, errorText } from './errors.js';
import { MESSAGE_ID, Outbox, type OutboxStorage, type Pending } from './outbox.js';
import { writeKey, type Outstanding, type Track } from './requests.js';
import { positionIn, type Delivery } from './stream.js';
import type { Ack, Frame, WriteOp } from './types.js';

/** Keys of settled writes remembered, so a late second answer (to a resend) is recognised. */
const SETTLED_KEYS = 1000;
/** The gateway refuses frames nested deeper than this (the frame object is level 1), before it reads which request they are. */
const MAX_DEPTH = 32;
const utf8 = new TextEncoder();

/** What the writes need of the chats they go to. */
export interface WriteChats {
  /** The chat's state while the client has it. */
  get(key: string): ChatState | undefined;
  values(): Iterable<ChatState>;
  /** The gateway lost the chat's registration (`not_registered`): registered again. */
  reregister(state: ChatState): void;
  /** Hands the app what a stream gave out. */
  deliver(deliveries: Delivery[]): void;
  /** A chat being left is unregistered once its last write is settled. */
  finishLeaving(state: ChatState | undefined): void;
}

/**
 * The writes (send, edit, delete) from the outbox to their acks: each chat's in order, resent
 * with the same id until answered, settled by the gateway's answer.
 */
export class Writes {
  private readonly outbox: Outbox;
  /** Writes settled lately (`op:id`): a second answer for one (to a resend) is expected, not unhandled. */
  private readonly settledKeys = new Set<string>();
  /** Stored entries come first: nothing is sent before they are loaded. */
  private loaded = false;

  constructor(
    private readonly core: Core,
    storage: OutboxStorage,
    private readonly chats: WriteChats,
    /**
     * The storage is the client's own in-memory one (the app passed none): nothing reads it after
     * this client, so an entry given up on is removed from it rather than kept for a next client.
     */
    private readonly ownStorage = false,
  ) {
    this.outbox = new Outbox(storage, (err) => this.storageFailed(err));
    void this.outbox.loaded.then(() => {
      this.loaded = true;
      for (const state of this.chats.values()) this.noteOwnWrites(state);
      this.pump();
    });
  }

  write(state: ChatState, op: WriteOp, data: { id: string } & Record<string, unknown>): Promise<Ack> {
    const context = { op, id: data.id, chatId: state.chat.id };
    const ended = this.core.ended();
    if (ended) return Promise.reject(ended);
    if (state.status === 'gone' || state.leaving) return Promise.reject(new ClientError('closed', 'the chat was left', context));
    if (typeof data.id !== 'string' || !MESSAGE_ID.test(data.id)) return Promise.reject(new ClientError('bad_request', 'a message id is 1-64 characters [A-Za-z0-9_-]', context));
    if (op !== 'delete_message' && (typeof data.ciphertext !== 'string' || data.ciphertext === '')) {
      return Promise.reject(new ClientError('bad_request', 'ciphertext must be a non-empty string', context));
    }
    // What the gateway refuses before it can tell which request it was (so its error names no
    // request, and nothing could settle this one): refused here, never sent.
    let text: string;
    try {
      text = JSON.stringify({ type: op, chat_id: state.chat.id, data }, finiteOnly);
    } catch (err) {
      return Promise.reject(new ClientError('bad_request', `the content cannot be sent as JSON: ${errorText(err)}`, context));
    }
    const { maxFrameBytes } = this.core.cfg;
    if (utf8.encode(text).length > maxFrameBytes) return Promise.reject(new ClientError('too_large', `the frame is larger than ${maxFrameBytes} bytes`, context));
    const unfit = unfitValue(JSON.parse(text), MAX_DEPTH);
    if (unfit === 'deep') {
      return Promise.reject(new ClientError('bad_request', `the content is nested deeper than the gateway accepts (${MAX_DEPTH} levels, the frame itself and its data included)`, context));
    }
    if (unfit === 'number') {
      return Promise.reject(new ClientError('bad_request', 'the content holds a whole number beyond ±(2^53 − 1), which JSON does not carry exactly: send it as a string', context));
    }
    return new Promise<Ack>((resolve, reject) => {
      const item = this.outbox.add(op, state.chat.id, data, { resolve, reject });
      if (op === 'message') state.stream.noteSending(data.id);
      void this.outbox.store(item).then((stored) => {
        // Settled meanwhile (the client was closed or gave up): nothing more to say about it.
        if (this.core.ended() || !this.outbox.all().includes(item)) return;
        if (stored) return this.pump();
        this.fail(item, new ClientError('internal', 'the outbox storage failed', context));
      });
    });
  }

  /**
   * Sends what may go now: per chat only its oldest unacked write (so a retry never lets a
   * later write overtake it), once the chat is registered, at most `maxInFlight` at a time.
   */
  pump(): void {
    if (!this.core.isOpen() || !this.loaded) return;
    let inFlight = this.outbox.all().filter((p) => p.inFlight).length;
    const seen = new Set<string>();
    for (const item of this.outbox.all()) {
      const key = String(item.entry.chatId);
      if (seen.has(key)) continue;
      seen.add(key);
      if (item.inFlight || !item.stored || item.retryTimer !== null) continue;
      if (this.chats.get(key)?.status !== 'registered') continue;
      // An earlier write with the same op and id (an edit of the same message) may still be
      // answered (a send of it whose answer may come: see `Requests.resume`): its answer would be
      // taken for this one's. Sent once that send is answered or overdue (`requestTimeoutMs`).
      if (this.core.requests.awaitedElsewhere(item)) continue;
      if (inFlight >= this.core.cfg.maxInFlight) return;
      item.inFlight = true;
      item.attempts++;
      inFlight++;
      this.send(item);
    }
  }

  /** The write is waiting in the outbox (not settled). */
  isPending(item: Pending): boolean {
    return this.outbox.all().includes(item);
  }

  /** Some write to chat `key` is waiting in the outbox. */
  hasWritesTo(key: string): boolean {
    return this.outbox.all().some((p) => String(p.entry.chatId) === key);
  }

  /**
   * Messages of the chat waiting in the outbox — restored from storage after a restart too — are
   * this client's own: a replay of one (saved before the ack was lost) is not shown to it.
   */
  noteOwnWrites(state: ChatState): void {
    for (const p of this.outbox.all()) if (p.entry.op === 'message' && String(p.entry.chatId) === state.key) state.stream.noteSending(p.entry.data.id);
  }

  /**
   * Writes to chat `key` sent on this connection and not answered yet (each may own a hole in the
   * chat's stream until its ack brings the position); Infinity while the chat is not registered.
   */
  ownUnanswered(key: string): number {
    if (this.chats.get(key)?.status !== 'registered') return Infinity;
    let n = 0;
    const connectionNo = this.core.connectionNo();
    for (const p of this.outbox.all()) if (p.sentOn === connectionNo && String(p.entry.chatId) === key) n++;
    return n;
  }

  onAck(frame: Frame): void {
    const chat = String(frame.chat_id);
    const key = writeKey(chat, String(frame.op), String(frame.id));
    const request = this.core.requests.answered(key);
    const item = this.answeredWrite(request, String(frame.op), String(frame.id), chat, false);
    if (item === undefined) {
      // The second answer to a write sent twice (a resend after a drop or timeout) is expected;
      // the next write with the same key may have waited for it (see `pump`).
      if (request === undefined && !this.settledKeys.has(key)) this.core.emit('unhandled', frame);
      if (request !== undefined) this.pump();
      return;
    }
    const position = positionIn(frame);
    this.succeed(item, frame.duplicate === true, position?.seq, position?.epoch);
  }

  /**
   * A write answered with an error (`request`: the send it answers, if one was waiting). False
   * when it answers no write of this client's.
   */
  onError(request: Outstanding | undefined, op: string, id: string, chat: string | undefined, error: ClientError): boolean {
    const item = this.answeredWrite(request, op, id, chat, true);
    if (item) {
      this.refused(item, error);
      return true;
    }
    // A late answer to an earlier send of a write that is retried, or settled, already.
    if (request !== undefined) {
      this.pump();
      return true;
    }
    return this.wasSettled(op, id, chat) || this.sentWrite(op, id, chat, false) !== undefined;
  }

  /** The write was refused: retried if the gateway says so, kept while its chat registers again, else failed. */
  refused(item: Pending, error: ClientError): void {
    item.inFlight = false;
    const state = this.chats.get(String(item.entry.chatId));
    // The main API may have applied it after the gateway stopped waiting.
    if (error.code === 'upstream_unavailable') item.maybeApplied = true;
    if (error.retryable) {
      item.retryTimer = setTimeout(() => {
        item.retryTimer = null;
        this.pump();
      }, backoffDelay(item.attempts - 1, this.core.cfg.backoff));
      return;
    }
    // A delete resent after a lost ack finds its message gone: that is the delete having worked.
    if (error.code === 'not_found' && item.entry.op === 'delete_message' && item.maybeApplied) return this.succeed(item, true);
    // The registration is gone but is being restored (not_registered, or a token being renewed): keep it.
    const restoring = state !== undefined && state.status !== 'gone' && state.status !== 'registered';
    if (error.code === 'not_registered' && state?.status === 'registered') return this.chats.reregister(state);
    if (restoring && (error.code === 'not_registered' || error.code === 'unauthorized')) return;
    this.fail(item, error);
    this.pump();
  }

  /** The connection closed: what was in flight is sent again on the next one. */
  disconnected(code: number): void {
    const inFlight = this.outbox.all().filter((p) => p.inFlight);
    for (const item of inFlight) {
      item.inFlight = false;
      item.maybeApplied = true; // it may have been saved; the resend is answered `duplicate`
    }
    if (code === 1009) {
      // The gateway refused a frame as too large; the largest write in flight is the one — in
      // bytes on the wire (UTF-8), not in UTF-16 units: "é" is one unit but two bytes.
      const bytes = new Map(inFlight.map((p) => [p, utf8.encode(p.text).length]));
      const largest = inFlight.sort((a, b) => bytes.get(b)! - bytes.get(a)!)[0];
      if (largest) this.fail(largest, new ClientError('too_large', 'the gateway closed the connection: frame too large (1009)', { op: largest.entry.op, id: largest.entry.data.id, closeCode: code }));
    }
  }

  /** The chat cannot be registered: its writes fail (`removeStored` false: they stay in the storage). */
  failWritesTo(key: string, error: ClientError, removeStored = true): void {
    for (const item of [...this.outbox.all()]) if (String(item.entry.chatId) === key) this.fail(item, error, removeStored);
  }

  /**
   * The chat was left while it cannot register for now: its writes fail (`error` of each), staying
   * in the storage (unless it is the client's own, which nobody reads again: kept there, they
   * built up for the client's life) — one by one, until `stop()` says so: a `failed` listener may
   * open the chat again, and then its remaining writes are kept and sent once it registers.
   */
  abandonWritesTo(key: string, error: (item: Pending) => ClientError, stop: () => boolean): void {
    for (const item of [...this.outbox.all()]) {
      if (String(item.entry.chatId) !== key || !this.outbox.all().includes(item)) continue;
      if (stop()) return;
      this.fail(item, error(item), this.ownStorage);
    }
  }

  /** The client ended: every write fails, but stays in the storage (a persistent outbox sends it from the next client). */
  end(error: ClientError): void {
    for (const item of [...this.outbox.all()]) this.fail(item, error, false);
  }

  private send(item: Pending): void {
    item.sentOn = this.core.connectionNo();
    const track: Track = {
      key: writeKey(String(item.entry.chatId), item.entry.op, item.entry.data.id),
      owner: item,
      // Only while this attempt is the one in flight: a settled or retrying write is not resent.
      resend: () => void (item.inFlight && item.sentOn === this.core.connectionNo() && this.outbox.all().includes(item) && this.core.transmit(item.text, false, track)),
    };
    this.core.transmit(item.text, false, track);
  }

  /**
   * The write an answer belongs to: the entry of the send it answers (`request`), while that
   * entry is pending — an answer to an earlier entry with the same key that is settled is nobody's;
   * without a matching send, by `op` and `id`: the one in flight, else — for an ack — one sent on
   * this connection that is waiting to be retried (an earlier send of it was answered late).
   */
  private answeredWrite(request: Outstanding | undefined, op: string, id: string, chat: string | undefined, inFlightOnly: boolean): Pending | undefined {
    const owner = request?.owner;
    if (owner === undefined) return this.sentWrite(op, id, chat, inFlightOnly);
    if (owner.sentOn !== this.core.connectionNo() || !this.outbox.all().includes(owner)) return undefined;
    return inFlightOnly && !owner.inFlight ? undefined : owner;
  }

  /** `chat` undefined: an answer that names no chat, matched by op and id alone. */
  private sentWrite(op: string, id: string, chat: string | undefined, inFlightOnly: boolean): Pending | undefined {
    let fallback: Pending | undefined;
    const connectionNo = this.core.connectionNo();
    for (const p of this.outbox.all()) {
      if (p.entry.op !== op || p.entry.data.id !== id || p.sentOn !== connectionNo) continue;
      if (chat !== undefined && String(p.entry.chatId) !== chat) continue;
      if (p.inFlight) return p;
      fallback ??= p;
    }
    return inFlightOnly ? undefined : fallback;
  }

  private succeed(item: Pending, duplicate: boolean, seq?: number, epoch?: string): void {
    const { op, chatId, data } = item.entry;
    this.outbox.remove(item);
    this.noteSettled(item);
    const ack: Ack = { op, id: data.id, chatId, duplicate, ...(seq === undefined ? {} : { seq }), ...(epoch === undefined ? {} : { epoch }) };
    const state = this.chats.get(String(chatId));
    if (state !== undefined) {
      const out: Delivery[] = [];
      state.stream.noteAck(op, data.id, seq, epoch, out);
      this.chats.deliver(out);
    }
    item.settle?.resolve(ack);
    this.core.emit('sent', { chatId, ack });
    this.chats.finishLeaving(state);
    this.pump();
  }

  /** Settles an entry with an error; `removeStored` false keeps it in the storage. */
  private fail(item: Pending, error: ClientError, removeStored = true): void {
    if (removeStored) this.outbox.remove(item);
    else this.outbox.forget(item);
    this.noteSettled(item);
    const state = this.chats.get(String(item.entry.chatId));
    if (state !== undefined) {
      const out: Delivery[] = [];
      state.stream.noteFailed(out);
      this.chats.deliver(out);
    }
    item.settle?.reject(error);
    this.core.emit('failed', { chatId: item.entry.chatId, op: item.entry.op, id: item.entry.data.id, error });
    this.chats.finishLeaving(this.chats.get(String(item.entry.chatId))); // looked up again: a 'failed' handler may have left the chat
  }

  /** Whether a write of `op` and `id` (in `chat`, or in any chat when the answer names none) was settled lately. */
  private wasSettled(op: string, id: string, chat: string | undefined): boolean {
    if (chat !== undefined) return this.settledKeys.has(writeKey(chat, op, id));
    const prefix = writeKey('', op, id);
    for (const key of this.settledKeys) if (key.startsWith(prefix)) return true;
    return false;
  }

  private noteSettled(item: Pending): void {
    const key = writeKey(String(item.entry.chatId), item.entry.op, item.entry.data.id);
    this.settledKeys.delete(key);
    this.settledKeys.add(key);
    if (this.settledKeys.size > SETTLED_KEYS) this.settledKeys.delete(this.settledKeys.values().next().value!);
  }

  private storageFailed(err: unknown): void {
    if (this.core.ended()) return; // after close(): no more events (the storage keeps what it keeps)
    this.core.emit('error', { error: err, during: 'outbox storage' });
  }
}

/**
 * JSON would write NaN and ±Infinity as null: refused instead (the gateway could not tell) — also
 * boxed (`new Number(NaN)`), which JSON writes as its value: unwrapped first, and that is written.
 */
function finiteOnly(_key: string, value: unknown): unknown {
  const n = isNumberObject(value) ? Number(value) : value;
  if (typeof n === 'number' && !Number.isFinite(n)) throw new Error(`${n} is not a JSON number`);
  return n;
}

/** A Number object (from any realm: `instanceof` would miss another frame's), told without a throw per object. */
function isNumberObject(value: unknown): value is Number {
  return typeof value === 'object' && value !== null && Object.prototype.toString.call(value) === '[object Number]';
}

/**
 * What the gateway refuses in a frame, as it checks it: objects or arrays nested deeper than
 * `limit` levels, or a whole number beyond ±(2^53 − 1).
 */
function unfitValue(value: unknown, limit: number): 'deep' | 'number' | null {
  if (typeof value === 'number') return Number.isInteger(value) && !Number.isSafeInteger(value) ? 'number' : null;
  if (typeof value !== 'object' || value === null) return null;
  if (limit === 0) return 'deep';
  for (const key in value) {
    const unfit = unfitValue((value as Record<string, unknown>)[key], limit - 1);
    if (unfit !== null) return unfit;
  }
  return null;
}
