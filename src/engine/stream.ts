import { randomBytes } from 'node:crypto';
import type { IdKey } from '../protocol/ids.js';

/**
 * The chat stream: every message, edit and delete broadcast of a chat gets a `seq` (1, 2, 3 …
 * without gaps) within an `epoch` (a name for one unbroken run of that numbering). The engine
 * assigns both atomically with storing the broadcast in the chat's history, so `seq` order is the
 * one order every instance delivers in, and a client can resume from a position it has seen.
 */
export interface StreamPosition {
  readonly seq: number;
  readonly epoch: string;
}

export type RecoveryFailure = 'epoch_changed' | 'too_far_behind' | 'no_history';

export type Recovery =
  | { readonly recovered: true; readonly position: StreamPosition; readonly frames: readonly Buffer[] }
  | { readonly recovered: false; readonly position: StreamPosition; readonly reason: RecoveryFailure };

/**
 * A chat's sequence and epoch are kept this long after the chat was last used (both engines);
 * only then does its next broadcast start a new epoch. History entries go much sooner
 * (HISTORY_TTL_MS): a client resuming at the top of an idle chat has missed nothing and must be
 * told so, not sent to the main API for a gap that does not exist.
 */
export const STREAM_TTL_MS = 7 * 24 * 3600 * 1000;

export interface HistoryLimits {
  /** Broadcasts kept per chat; 0 keeps none (positions are still numbered). */
  readonly size: number;
  /** Entries older than this are not replayed. */
  readonly ttlMs: number;
}

/** One try of an append: see `ChatStream.append`. */
export interface AppendAttempt {
  readonly token: string;
  readonly retry: boolean;
  /** When the operation's first attempt was made (ms): older entries cannot be it. */
  readonly firstAt: number;
}

/** Where an append landed; `earlier`: an earlier attempt had appended it, and these are its numbered bytes (nothing was published now). */
export interface AppendResult extends StreamPosition {
  readonly earlier?: Buffer;
}

export interface ChatStream {
  /**
   * Numbers `frame` (a JSON object without `seq`/`epoch`) as the chat's next broadcast, stores
   * the numbered bytes in history and publishes them — one atomic step. Resolves with the
   * position it got (once delivered on this instance, like `publish`). `key` (a message id) is
   * stored with it for `contains`.
   *
   * `attempt` makes a retry idempotent: `token` names the operation (the same on every
   * attempt), and with `retry` set an operation already appended under that token (an earlier
   * attempt whose reply was lost, run after all) is not appended again — its position is
   * returned, only while the entry is in history (HISTORY_SIZE > 0). The memory engine, whose
   * append cannot fail half-way, keeps the token of a retry only: the server API's publishes
   * that carry an id are always made as one.
   */
  append(chat: IdKey, frame: Buffer, exceptConn: string | null, key?: string, attempt?: AppendAttempt): Promise<AppendResult>;
  /** Whether the chat's history still holds a broadcast appended with `key`. */
  contains(chat: IdKey, key: string): Promise<boolean>;
  /** The chat's current position; a chat without one gets a new epoch at seq 0. */
  position(chat: IdKey): Promise<StreamPosition>;
  /**
   * Every broadcast after `since`, if all of them are still in history under `since.epoch`, are
   * younger than the history TTL and together fit in `maxBytes`; else the reason why not.
   */
  recover(chat: IdKey, since: StreamPosition, maxBytes: number): Promise<Recovery>;
}

/** Random bytes drawn in bulk: the Redis engine offers a fresh epoch with every append (the script uses it only for a new stream), and one crypto call per message cost ~50 µs. */
const EPOCH_BYTES = 9;
let pool = Buffer.alloc(0);
let poolAt = 0;

/** A new epoch name: random, so a lost stream can never be mistaken for the old one. */
export function newEpoch(): string {
  if (poolAt + EPOCH_BYTES > pool.length) {
    pool = randomBytes(EPOCH_BYTES * 1024);
    poolAt = 0;
  }
  poolAt += EPOCH_BYTES;
  return pool.toString('base64url', poolAt - EPOCH_BYTES, poolAt);
}

/** Whether `at` is `position` or before it in the same epoch (another epoch is never "before"). */
export function atOrBefore(at: StreamPosition, position: StreamPosition): boolean {
  return at.epoch === position.epoch && at.seq <= position.seq;
}

const SEQ_PREFIX = Buffer.from('{"seq":');

/** `{"seq":N,"epoch":"E",` + the frame after its opening brace: the numbered bytes, built once. */
export function numberFrame(frame: Buffer, position: StreamPosition): Buffer {
  return Buffer.concat([Buffer.from(`{"seq":${position.seq},"epoch":"${position.epoch}",`), frame.subarray(1)]);
}

/** Whether `frame` is numbered (a stream broadcast): a prefix comparison, no parsing. */
function isNumbered(frame: Buffer): boolean {
  return frame.length >= SEQ_PREFIX.length && frame.compare(SEQ_PREFIX, 0, SEQ_PREFIX.length, 0, SEQ_PREFIX.length) === 0;
}

/**
 * Reads the position back from numbered bytes without parsing the JSON (only the prefix that
 * `numberFrame` and the Redis script write); null for frames outside the stream (presence, typing).
 */
export function positionOf(frame: Buffer): StreamPosition | null {
  if (!isNumbered(frame)) return null;
  const comma = frame.indexOf(0x2c, SEQ_PREFIX.length); // ,
  const seq = Number(frame.toString('latin1', SEQ_PREFIX.length, comma));
  const start = comma + '"epoch":"'.length + 1;
  const end = frame.indexOf(0x22, start); // "
  if (comma < 0 || end < 0 || !Number.isSafeInteger(seq)) return null;
  return { seq, epoch: frame.toString('latin1', start, end) };
}
