import { DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
import type { OutboxStorage } from './outbox.js';
import { timerMs } from './timers.js';
import type { ChatId, Position, UserId, WebSocketConstructor } from './types.js';

/**
 * A token, or a function the SDK calls for one: for the first register, again after the gateway
 * refused the token (`unauthorized`, 4401) or the backend disconnected the user (4403), after a
 * registration's token expired, and ahead of a JWT's `exp` to refresh it (see `refreshLeadMs`).
 */
export type TokenSource = string | (() => string | Promise<string>);

/**
 * Where to connect: one URL; several (each lost or failed connection moves on to the next, so a
 * client whose instance died reconnects to another); or a function asked on every attempt.
 */
export type UrlSource = string | readonly string[] | ((attempt: number) => string);

export interface ClientOptions {
  /**
   * The gateway's WebSocket URL, e.g. `wss://chat.example.com/ws`; or a list of them (tried in
   * turn: after a lost or failed connection the next one); or `(attempt) => url`, called for
   * every connection attempt (`attempt` counts them from 0).
   */
  url: UrlSource;
  token: TokenSource;
  /** Required where there is no global `WebSocket` (Node 20: `import { WebSocket } from 'ws'`). */
  WebSocket?: WebSocketConstructor;
  /** Where unacked writes are kept (default: memory). */
  storage?: OutboxStorage;
  /** Reconnect delays: full jitter in [0, min(maxDelayMs, minDelayMs·2^n)]; default 250 ms → 30 s. */
  reconnect?: Partial<BackoffOptions> & {
    /** A connection open this long resets the backoff (default 10 s). */
    stableAfterMs?: number;
  };
  /** Give up on a connection attempt that has not opened after this (default 10 s). */
  connectTimeoutMs?: number;
  /** Send a `ping` after this long without any frame from the gateway (default 15 s). */
  pingIdleMs?: number;
  /** …and drop the connection if nothing arrives within this after the ping (default 10 s). */
  pongTimeoutMs?: number;
  /**
   * Client-side pacing of every frame, below the gateway's bucket (20/s, burst 50), so that
   * re-registering many chats after a reconnect is not refused (default 18/s, burst 40).
   */
  rateLimit?: { perSec: number; burst: number };
  /** Writes in flight at once on a connection, below the gateway's 16 (default 8). */
  maxInFlight?: number;
  /**
   * A request (write, register, ping, unregister, refresh) without an answer for this long is sent again
   * with the same id (default 30 s). A safety net: the gateway answers every request it reads,
   * and the frames it drops unread after a `rate_limited` are resent as soon as it reads again.
   */
  requestTimeoutMs?: number;
  /** Writes larger than this are refused `too_large` without sending (the gateway's MAX_MESSAGE_BYTES, default 65536). */
  maxFrameBytes?: number;
  /**
   * Refused tokens in a row before giving up (default 3). A 4403 counts, and so does a provider
   * handing back the very token that was just refused.
   */
  maxAuthFailures?: number;
  /** A token provider call that has not answered after this is abandoned and asked again later (default 10 s). */
  tokenTimeoutMs?: number;
  /**
   * A token provider that keeps failing (throws, times out, returns no string) is asked again
   * with the reconnect backoff; after failing for this long in a row the client gives up
   * (default 60 s). A provider that throws a `ClientError` with code `unauthorized` or
   * `forbidden` (the user is logged out) ends the client at once.
   */
  tokenGiveUpMs?: number;
  /**
   * With a token provider and a JWT token (one with `exp`): how long before `exp` the SDK asks
   * the provider for a new token and hands it to the gateway (`refresh`), so registrations never
   * expire. Default: 30 s, or 10 % of the token's lifetime when that is shorter; a value given
   * here is capped at half the lifetime. Static tokens are never refreshed.
   */
  refreshLeadMs?: number;
  /** Edits of a message not seen yet are held this long, at most `max` per chat (default 10 s, 1000). */
  hold?: { ms?: number; max?: number };
  /** Tells the SDK the app already has a message (e.g. from history), so its edits are not held. */
  isKnownMessage?: (chatId: ChatId, messageId: string) => boolean;
  /**
   * Asked for every broadcast delete (`deletedBy`: the gateway's `deleted_by`) before it is
   * applied (default: every one is). A refused delete is not applied: no `delete` event, no
   * tombstone, so the message and its later edits are still delivered (its place in the stream
   * counts as delivered). Lets an app that checks authorship itself ignore a delete by someone
   * else than the author without losing the author's later edits. One that throws is reported
   * (`error` event) and the delete accepted. The client's own deletes are not asked about.
   */
  acceptDelete?: (chatId: ChatId, messageId: string, deletedBy: UserId | undefined) => boolean;
}

export interface ChatOptions {
  /** Resume after this position (persisted from `chat.position`): what was missed is replayed or reported as a gap. */
  since?: Position;
}

/** The options a client works with: defaults filled in, every duration one `setTimeout` takes as given. */
export interface Config
  extends Required<Pick<ClientOptions, 'connectTimeoutMs' | 'pingIdleMs' | 'pongTimeoutMs' | 'rateLimit' | 'maxInFlight' | 'maxFrameBytes' | 'maxAuthFailures' | 'requestTimeoutMs' | 'tokenTimeoutMs' | 'tokenGiveUpMs'>> {
  stableAfterMs: number;
  /** Reconnect delays; also those of retried registers, writes and token provider calls. */
  backoff: BackoffOptions;
}

export function resolveConfig(options: ClientOptions): Config {
  const backoff = { ...DEFAULT_BACKOFF, ...options.reconnect };
  // Longer durations, even Infinity, would make `setTimeout` fire at once.
  return {
    connectTimeoutMs: timerMs(options.connectTimeoutMs ?? 10_000),
    pingIdleMs: timerMs(options.pingIdleMs ?? 15_000),
    pongTimeoutMs: timerMs(options.pongTimeoutMs ?? 10_000),
    rateLimit: options.rateLimit ?? { perSec: 18, burst: 40 },
    maxInFlight: options.maxInFlight ?? 8,
    requestTimeoutMs: timerMs(options.requestTimeoutMs ?? 30_000),
    maxFrameBytes: options.maxFrameBytes ?? 65_536,
    maxAuthFailures: options.maxAuthFailures ?? 3,
    tokenTimeoutMs: timerMs(options.tokenTimeoutMs ?? 10_000),
    tokenGiveUpMs: options.tokenGiveUpMs ?? 60_000,
    stableAfterMs: options.reconnect?.stableAfterMs ?? 10_000,
    backoff: { ...backoff, minDelayMs: timerMs(backoff.minDelayMs), maxDelayMs: timerMs(backoff.maxDelayMs) },
  };
}
