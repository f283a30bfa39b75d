import { backoffDelay } from './backoff.js';
import { Chat, type ChatHost } from './chat.js';
import type { ChatState } from './chat-state.js';
import type { Core } from './core.js';
import type { Deliverer } from './delivery.js';
import { ClientError } from './errors.js';
import { isChatId, newId } from './ids.js';
import type { ChatOptions, ClientOptions } from './options.js';
import type { Track } from './requests.js';
import { Stream, positionIn, type Delivery } from './stream.js';
import { clearTimer, timerMs } from './timers.js';
import { RefusedAgain, type TokenKeeper } from './token.js';
import type { ChatEvents, ChatId, Frame, Position, RegisteredEvent, UserId } from './types.js';
import type { Writes } from './writes.js';

const TYPING_INTERVAL_MS = 1000;
/** Broadcasts kept per chat while it registers again from an older position (see `reordering`). */
const MAX_REORDERING = 10_000;
/**
 * Deliveries kept per chat while it is being left (see `leave`); past it nothing more is kept
 * and its position stands still: opened again, the chat resumes from there with a register.
 */
const MAX_KEPT_WHILE_LEAVING = 10_000;
/** Chats left lately whose frames are still expected (see `left`). */
const LEFT_KEYS = 1000;
const RETRYABLE = new Set(['rate_limited', 'upstream_unavailable']);
/** The gateway's refusal of a register past MAX_CHATS_PER_CONNECTION. */
const CHAT_LIMIT = /at most \d+ chats/;
/** A hole in a chat's seqs that no write of ours can own is reported as a gap after this long. */
const HOLE_GRACE_MS = 2000;

/** What the chats need of the connection they are registered on. */
export interface ChatsHost {
  /** A chat was opened while there is no connection: connect, unless under way. */
  connectSoon(): void;
  /** The last chat is gone: close the connection. */
  closeIfIdle(): void;
  /** The client's `on` (a handle's listeners are the client's, filtered by chat). */
  listen: <K extends keyof ChatEvents>(type: K, listener: (event: ChatEvents[K]) => void) => () => void;
}

/**
 * The client's chats: each registered on every connection from its last position until it is
 * left or refused for good; what its handle (`Chat`) sees.
 */
export class Chats {
  private readonly chats = new Map<string, ChatState>();
  /** Chats left lately (bounded): their frames still on the way are expected, not `unhandled`. */
  private readonly left = new Set<string>();
  /**
   * What removes each handle's listeners (`chat.on`): done once the handle is left for good. A
   * listener the app removes itself goes from here too (else each one, and all it holds, stayed
   * until the chat was left).
   */
  private readonly handleListeners = new Map<Chat, Set<() => void>>();
  /** Causes of refused registers the app was told of since a chat last registered (see reportRetriedRegister). */
  private readonly registerRefusalsReported = new Set<'connections' | 'refused'>();
  private readonly handleHost: ChatHost;
  /** Handles whose chat is gone, with why (its state and stream are not kept for them). */
  private readonly goneHandles = new WeakMap<Chat, ClientError>();

  constructor(
    private readonly core: Core,
    private readonly options: Pick<ClientOptions, 'hold' | 'isKnownMessage' | 'acceptDelete'>,
    private readonly keeper: TokenKeeper,
    private readonly writes: Writes,
    private readonly deliverer: Deliverer,
    private readonly host: ChatsHost,
  ) {
    this.handleHost = this.chatHost();
  }

  /** The chat's handle; registers it (connecting if needed) unless it is already open. */
  open(id: ChatId, options: ChatOptions): Chat {
    // The gateway refuses such an id without being able to name the chat in its error: the
    // register could never be answered. Refused here, at once.
    if (!isChatId(id)) throw new ClientError('bad_request', `not a chat id: ${JSON.stringify(id) ?? String(id)} (a safe integer ≥ 1, or 1-64 characters [A-Za-z0-9_.:-], not only dots)`, { op: 'register' });
    const key = String(id);
    const existing = this.chats.get(key);
    if (existing !== undefined && existing.status !== 'gone') {
      if (existing.leaving) {
        // Opened again before its leave completed: what reached it meanwhile is handed over
        // (after this call returns, so the app can listen first) — unless it is left again.
        existing.leaving = false;
        queueMicrotask(() => {
          if (existing.leaving || existing.status === 'gone' || this.core.ended()) return;
          // More reached it than was kept: the rest comes from the gateway, from where it stood.
          const resume = existing.stream.overflowed;
          this.deliver(existing.stream.unmute());
          if (resume) this.resumeKept(existing);
        });
      }
      return existing.chat;
    }
    const hold = this.options.hold ?? {};
    this.left.delete(key);
    const state: ChatState = {
      chat: new Chat(this.handleHost, id),
      key,
      stream: new Stream(id, options.since ?? null, {
        holdMs: timerMs(hold.ms ?? 10_000),
        maxHeld: hold.max ?? 1000,
        maxIds: 10_000,
        maxUnfilled: 1000,
        maxDeferred: MAX_KEPT_WHILE_LEAVING,
        ownUnanswered: () => this.writes.ownUnanswered(key),
        holeGraceMs: HOLE_GRACE_MS,
        isKnown: this.guardedIsKnown(),
        acceptDelete: this.guardedAcceptDelete(),
      }),
      status: 'idle',
      leaving: false,
      askedSince: false,
      registerAttempts: 0,
      retryTimer: null,
      lastTypingAt: 0,
      online: new Map(),
      waiters: [],
      lastRegistered: null,
      lastTypingNo: 0,
      registerAgain: false,
      reordering: null,
      expiredWhileRegistering: false,
      waitsForLeave: false,
    };
    this.chats.set(key, state);
    this.writes.noteOwnWrites(state);
    if (this.core.isOpen()) this.register(state);
    else this.host.connectSoon();
    return state.chat;
  }

  /** The chat's state while the client has it. */
  get(key: string): ChatState | undefined {
    return this.chats.get(key);
  }

  values(): IterableIterator<ChatState> {
    return this.chats.values();
  }

  /** Every chat's stream, read live. */
  *streams(): IterableIterator<Stream> {
    for (const state of this.chats.values()) yield state.stream;
  }

  /** A connection is kept only while some chat needs it. */
  wanted(): boolean {
    for (const state of this.chats.values()) if (state.status !== 'gone') return true;
    return false;
  }

  anyRegistered(): boolean {
    return [...this.chats.values()].some((state) => state.status === 'registered');
  }

  anyRegistering(): boolean {
    return [...this.chats.values()].some((state) => state.status === 'registering');
  }

  /** The chat was left lately: its frames still on the way are expected. */
  leftLately(key: string): boolean {
    return this.left.has(key);
  }

  /** A connection opened: every chat registers on it. */
  connected(): void {
    for (const state of this.chats.values()) {
      // `registering`: opened by a listener of this connection's `state` event, its register already out.
      if (state.status === 'gone' || state.status === 'registering') continue;
      state.status = 'idle';
      this.register(state);
    }
  }

  /** The connection closed: every chat registers again on the next one. */
  disconnected(): void {
    for (const state of this.chats.values()) {
      if (state.status !== 'gone') state.status = 'idle';
      // The next connection registers it with its own position: nothing to reorder.
      state.registerAgain = false;
      state.reordering = null;
      state.waitsForLeave = false; // the gateway let go of every registration of that connection
      // The register whose `unauthorized` was to be an expiry's echo went with that connection: a
      // refusal on the next one is a refusal (counted toward maxAuthFailures), not an echo.
      state.expiredWhileRegistering = false;
      clearTimer(state.retryTimer);
      state.retryTimer = null;
    }
  }

  /** The client ended: nothing is retried, and whoever waits for a chat's `registered` is told. */
  end(error: ClientError): void {
    for (const state of this.chats.values()) {
      clearTimer(state.retryTimer);
      for (const w of state.waiters.splice(0)) w.reject(error);
    }
  }

  deliver(deliveries: Delivery[]): void {
    this.deliverer.deliver(deliveries);
  }

  /** A broadcast of the chat (a chat being left keeps it, muted). */
  onBroadcast(state: ChatState, frame: Frame): void {
    if (state.reordering !== null) {
      if (state.reordering.length < MAX_REORDERING) state.reordering.push(frame);
      return;
    }
    this.deliver(state.stream.onBroadcast(frame, Date.now()));
  }

  /** Keeps the chat's online list; a chat being left is not told (its list stays true in case it is opened again). */
  onPresence(state: ChatState, user: UserId, status: 'online' | 'offline'): void {
    if (status === 'online') state.online.set(String(user), user);
    else state.online.delete(String(user));
    if (!state.leaving) this.core.emit('presence', { chatId: state.chat.id, userId: user, status });
  }

  register(state: ChatState): void {
    if (!this.core.isOpen() || state.status !== 'idle' || state.retryTimer !== null) return;
    const token = this.keeper.usable;
    if (token === null) {
      // The first register, or the token was refused: ask the provider (one call for all chats).
      this.keeper.fresh().then(
        () => this.register(state),
        (err: unknown) => {
          if (this.core.ended() || state.status !== 'idle') return;
          if (state.leaving) return this.abandonLeaving(state, 'no token');
          // A failed provider call paces the next one itself; a refused token waits the chat's backoff.
          this.retryRegister(state, err instanceof RefusedAgain ? undefined : this.keeper.retryAt - Date.now());
        },
      );
      return;
    }
    state.status = 'registering';
    const since = state.stream.resumeFrom;
    state.askedSince = since !== null;
    // The chat was left and opened again while its earlier register is still out: that one's
    // answer registers it (a second register of a chat in flight is refused by the gateway) —
    // and if this one resumes from another position, it registers again after that answer.
    const pending = this.core.requests.pending(`r:${state.key}`);
    if (pending !== undefined) {
      state.registerAgain = since !== null && !samePosition(since, pending.since ?? null);
      if (state.registerAgain) state.reordering = [];
      return;
    }
    state.registerAgain = false;
    const resend = () => {
      // Still waiting for this chat's answer — this state's, or that of the chat opened again
      // since, which counts on this register — : ask again (a register is idempotent).
      const current = this.chats.get(state.key);
      if (current === undefined || current.status !== 'registering') return;
      current.status = 'idle';
      this.register(current);
    };
    this.core.transmit(JSON.stringify({ type: 'register', token, chat_id: state.chat.id, ...(since === null ? {} : { since }) }), false, { key: `r:${state.key}`, resend, since });
  }

  /** The gateway lost the chat's registration (`not_registered` to a write): registered again. */
  reregister(state: ChatState): void {
    state.status = 'idle';
    this.register(state);
  }

  onRegistered(state: ChatState, frame: Frame): void {
    if (state.registerAgain) {
      // The answer to its earlier handle's register, from another position: ask with its own.
      state.status = 'idle';
      return this.register(state);
    }
    state.status = 'registered';
    state.expiredWhileRegistering = false;
    state.waitsForLeave = false;
    this.registerRefusalsReported.clear(); // a later outage is told again
    clearTimer(state.retryTimer);
    state.retryTimer = null;
    state.registerAttempts = 0;
    this.keeper.accepted();
    const position = positionIn(frame);
    const recovered = typeof frame.recovered === 'boolean' ? frame.recovered : undefined;
    const reason = typeof frame.reason === 'string' ? frame.reason : undefined;
    if (state.reordering !== null) {
      const kept = state.reordering.sort((x, y) => Number(x.seq ?? 0) - Number(y.seq ?? 0));
      state.reordering = null;
      for (const f of kept) this.deliver(state.stream.onBroadcast(f, Date.now()));
    }
    this.deliver(state.stream.onRegistered(position, recovered, reason, state.askedSince));
    state.online = new Map((Array.isArray(frame.online) ? (frame.online as UserId[]) : []).map((u) => [String(u), u]));
    const event: RegisteredEvent = {
      chatId: state.chat.id,
      userId: frame.user_id as UserId,
      online: [...state.online.values()],
      ...(position === null ? {} : { position }),
      ...(recovered === undefined ? {} : { recovered }),
    };
    state.lastRegistered = event;
    for (const w of state.waiters.splice(0)) w.resolve(event);
    if (!state.leaving) this.core.emit('registered', event);
    this.writes.pump();
  }

  /**
   * A `register` refused by the gateway's token bucket: not read, so neither a refusal of the
   * chat nor one for now — sent again once the gateway reads again (the pacer holds it back
   * meanwhile), as the requests dropped with it are; no backoff, and the app is not told. A chat
   * being left stays in its leave: its writes are sent once it registers, then it is unregistered.
   */
  registerUnread(state: ChatState, request: Track | undefined): void {
    // The register whose answer was to be its registration's expiry (`unauthorized`) was not read.
    state.expiredWhileRegistering = false;
    if (request !== undefined) return request.resend();
    state.status = 'idle';
    this.register(state);
  }

  /** A `register` answered with an error. */
  registerRefused(state: ChatState, error: ClientError): void {
    if (state.status === 'gone' || this.core.ended()) return;
    if (state.expiredWhileRegistering && error.code === 'unauthorized') {
      // The answer to a register whose registration expired meanwhile: registered again, the
      // expiry does not count toward maxAuthFailures.
      state.expiredWhileRegistering = false;
      return this.retryRegister(state, 0);
    }
    state.expiredWhileRegistering = false;
    this.keeper.registerRefused(error);
    if (RETRYABLE.has(error.code)) {
      if (state.leaving) return this.abandonLeaving(state, error.code);
      this.reportRetriedRegister(state, error);
      return this.retryRegister(state);
    }
    if (error.code === 'unauthorized' && this.keeper.provider !== null) {
      this.keeper.refused(error);
      if (this.core.ended()) return;
      if (state.leaving) return this.abandonLeaving(state, error.code);
      this.retryRegister(state);
      return;
    }
    // Past the gateway's chats per connection while chats this client is leaving still count
    // there (a leave waits for its writes' answers): refused for now, registered again once a
    // leave completes (or after its backoff). Past the limit with none being left: final.
    if (error.code === 'bad_request' && CHAT_LIMIT.test(error.message) && !state.leaving && this.leavesUnderWay()) {
      state.waitsForLeave = true;
      return this.retryRegister(state);
    }
    this.drop(state, error);
  }

  /**
   * Chats this client is leaving still hold a registration at the gateway (or are about to):
   * registered or registering while their writes are answered, their `unregister` not yet
   * answered, or left while their register was out (forgotten here, registered there until that
   * register's answer is followed by an `unregister`).
   */
  private leavesUnderWay(): boolean {
    for (const state of this.chats.values()) if (state.leaving && (state.status === 'registered' || state.status === 'registering')) return true;
    return this.core.requests.anyPending((key) => key.startsWith('u:') || (key.startsWith('r:') && this.chats.get(key.slice(2))?.status !== 'registering'));
  }

  /**
   * The gateway let go of a registration (answered an `unregister`, or refused the register of a
   * chat left meanwhile): a chat waiting for a free place registers now.
   */
  placeFreed(): void {
    for (const state of this.chats.values()) {
      if (!state.waitsForLeave || state.status !== 'idle' || state.retryTimer === null) continue;
      state.waitsForLeave = false;
      clearTimer(state.retryTimer);
      state.retryTimer = null;
      this.register(state);
    }
  }

  /**
   * The gateway ended a registration itself (`unregistered` with a reason):
   * - `revoked`: the backend took the user out of the chat. Final: registering again would
   *   work (the main API may still admit the user) but is exactly what must not happen.
   * - `token_expired`: with a provider, registered again (with `since`: nothing is lost) with a
   *   token that has not expired — the current one if a refresh replaced the expired one, else
   *   the provider's; with a static token final for the chat.
   * - `unauthorized`: the token was refused (also by a periodic re-verify of an opaque token):
   *   with a provider it is asked for a new one; with a static token final for the chat.
   * - `forbidden` (and anything else): final for the chat.
   * Once final, the place the registration held at the gateway is free for a chat waiting for one.
   */
  onUnregistered(state: ChatState, reason: string): void {
    state.status = 'idle';
    const provider = this.keeper.provider !== null;
    if (reason === 'token_expired' && provider) {
      this.keeper.registrationExpired();
      // A register of it still out is answered `unauthorized` next: the expiry's echo, not a refusal.
      if (this.core.requests.pending(`r:${state.key}`) !== undefined) state.expiredWhileRegistering = true;
      this.register(state);
      return;
    }
    // Not before the chat is settled below: a chat woken now could take the place a re-register needs.
    queueMicrotask(() => state.status === 'gone' && this.placeFreed());
    const chatId = state.chat.id;
    const error =
      reason === 'revoked' ? new ClientError('revoked', 'the backend revoked the membership of this chat', { chatId })
      : reason === 'token_expired' ? new ClientError('token_expired', 'the token expired (static token: it cannot be renewed)', { chatId })
      : new ClientError(reason === 'unauthorized' ? 'unauthorized' : 'forbidden', `the gateway ended the registration (${reason})`, { chatId });
    if (reason === 'unauthorized' && provider) {
      this.keeper.refused(error);
      if (!this.core.ended()) this.register(state);
      return;
    }
    this.drop(state, error, reason);
  }

  /** Ends the gateway's registration of a chat this client has left. */
  unregister(chatId: ChatId, key: string): void {
    const text = JSON.stringify({ type: 'unregister', chat_id: chatId });
    const track: Track = {
      key: `u:${key}`,
      // Not if the chat was opened again meanwhile (that registration must stay).
      resend: () => void (this.chats.has(key) || this.core.transmit(text, false, track)),
    };
    this.core.transmit(text, false, track);
  }

  /** A chat being left is forgotten (and unregistered) once its last write is settled. */
  finishLeaving(state: ChatState | undefined): void {
    if (state === undefined || !state.leaving || this.writes.hasWritesTo(state.key)) return;
    // A register still out is unregistered when its answer comes (see `Dispatcher`, `registered`).
    if (state.status === 'registered') this.unregister(state.chat.id, state.key);
    this.forget(state, new ClientError('closed', 'left the chat', { chatId: state.chat.id }));
    this.host.closeIfIdle();
  }

  /**
   * A chat opened again after more reached it while it was being left than was kept: its stream
   * stood still, so it registers again from its position (the gateway replays the rest, or a gap
   * is reported), keeping its broadcasts until the answer and handing them over in `seq` order.
   * A register already out was sent from the same position, but what it replayed was not kept:
   * its answer is followed by another register.
   */
  private resumeKept(state: ChatState): void {
    if (state.status === 'registering') {
      state.registerAgain = true;
      state.reordering ??= [];
    } else if (state.status === 'registered' && this.core.isOpen()) {
      state.status = 'idle';
      state.reordering = [];
      this.register(state);
    }
    // idle: its next register (a reconnect, a retry) resumes from the position anyway.
  }

  /** The app's `isKnownMessage`; one that throws is reported and answers "not known". */
  private guardedIsKnown(): ((chatId: ChatId, messageId: string) => boolean) | undefined {
    const isKnown = this.options.isKnownMessage;
    if (isKnown === undefined) return undefined;
    return (chatId, messageId) => {
      try {
        return Boolean(isKnown(chatId, messageId));
      } catch (err) {
        this.core.emit('error', { error: err, during: 'isKnownMessage' });
        return false;
      }
    };
  }

  /** The app's `acceptDelete`; one that throws is reported and accepts the delete. */
  private guardedAcceptDelete(): ((chatId: ChatId, messageId: string, deletedBy: UserId | undefined) => boolean) | undefined {
    const accept = this.options.acceptDelete;
    if (accept === undefined) return undefined;
    return (chatId, messageId, deletedBy) => {
      try {
        return Boolean(accept(chatId, messageId, deletedBy));
      } catch (err) {
        this.core.emit('error', { error: err, during: 'acceptDelete' });
        return true;
      }
    };
  }

  /** Registers `state` again after `delayMs` (default: the chat's next backoff delay; its register was refused for now). */
  private retryRegister(state: ChatState, delayMs = backoffDelay(state.registerAttempts++, this.core.cfg.backoff)): void {
    state.status = 'idle';
    clearTimer(state.retryTimer);
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      this.register(state);
    }, Math.max(0, delayMs));
  }

  /**
   * A register refused for now is retried with backoff, for as long as it takes; the app is told
   * once per cause until a chat registers (one fact, not one event per chat, nor per reconnect): at
   * once when the user has too many connections on the instance (MAX_CONNECTIONS_PER_USER: only
   * closing one helps), else from a chat's third refusal in a row (a main API down or answering 429).
   */
  private reportRetriedRegister(state: ChatState, error: ClientError): void {
    if (state.leaving) return;
    const tooManyConnections = error.code === 'rate_limited' && /MAX_CONNECTIONS_PER_USER|connections on this instance/.test(error.message);
    if (!tooManyConnections && state.registerAttempts < 2) return;
    const cause = tooManyConnections ? 'connections' : 'refused';
    if (this.registerRefusalsReported.has(cause)) return;
    this.registerRefusalsReported.add(cause);
    const during = tooManyConnections
      ? "register (this user's connections on the gateway instance are at MAX_CONNECTIONS_PER_USER: retried with backoff until one closes)"
      : 'register (refused for now: retried with backoff)';
    this.core.emit('error', { error: new ClientError(error.code, error.message, { ...error.details, chatId: state.chat.id }), during });
  }

  /**
   * A chat that cannot be (re)registered: its writes fail, and the app is told. One the app left
   * meanwhile answers later calls on its handle `closed`, as every chat the app left (its writes
   * made before the leave fail with the refusal: that is their outcome).
   */
  private drop(state: ChatState, error: ClientError, reason?: string): void {
    this.forget(state, state.leaving ? new ClientError('closed', 'the chat was left', { chatId: state.chat.id }) : error);
    this.writes.failWritesTo(state.key, error);
    this.core.emit('unregistered', { chatId: state.chat.id, error, ...(reason === undefined ? {} : { reason }) });
    this.host.closeIfIdle();
  }

  private forget(state: ChatState, error: ClientError): void {
    state.status = 'gone';
    this.goneHandles.set(state.chat, error);
    clearTimer(state.retryTimer);
    state.retryTimer = null;
    for (const w of state.waiters.splice(0)) w.reject(error);
    if (this.chats.get(state.key) === state) this.chats.delete(state.key);
    this.left.add(state.key);
    if (this.left.size > LEFT_KEYS) this.left.delete(this.left.values().next().value!);
    // The handle's listeners hear the events of this turn (`unregistered`, `failed`), then go.
    queueMicrotask(() => {
      for (const off of this.handleListeners.get(state.chat) ?? []) off();
      this.handleListeners.delete(state.chat);
    });
  }

  /**
   * Stops the chat's events at once; writes already made are still sent and answered (as the
   * gateway would do with writes queued before an `unregister`), then the chat is unregistered.
   */
  private leave(state: ChatState): void {
    if (state.status === 'gone' || state.leaving) return;
    state.leaving = true;
    // Its broadcasts are still read (and kept back): opened again before the leave completes,
    // the chat hands them over; otherwise they go with it.
    state.stream.mute();
    for (const w of state.waiters.splice(0)) w.reject(new ClientError('closed', 'left the chat', { chatId: state.chat.id }));
    // Waiting to register again after a refusal for now (a main API down): the app stops trying.
    if (state.status === 'idle' && state.retryTimer !== null) return this.abandonLeaving(state, 'refused for now');
    this.finishLeaving(state);
  }

  /**
   * A chat being left that cannot register for now (its register refused `upstream_unavailable`,
   * `rate_limited` — the main API's 429, MAX_CONNECTIONS_PER_USER: refusals that may last, unlike
   * the token bucket's, which is resent after its pause —, its token refused or not to be had) is
   * not registered again: `leave()` is how the app stops trying. Its writes fail `closed` — not
   * sent since it could not register, but one sent before (its ack lost with a connection) may
   * have been saved: `maybeApplied` — and stay in the storage (as with `close()`: a persistent
   * outbox sends them from the next client); then the leave completes.
   */
  private abandonLeaving(state: ChatState, why: string): void {
    clearTimer(state.retryTimer);
    state.retryTimer = null;
    state.status = 'idle';
    const chatId = state.chat.id;
    const current = () => this.chats.get(state.key) === state && state.status !== 'gone' && !this.core.ended();
    // A `failed` listener may open the chat again (`client.chat(id)`, the same handle): its
    // writes not failed by then are the app's again, sent once it registers.
    this.writes.abandonWritesTo(
      state.key,
      (item) => {
        const context = { op: item.entry.op, id: item.entry.data.id, chatId };
        // Sent before (its answer lost with a connection, or restored from the storage: an
        // earlier client may have sent it): the main API may have saved it.
        if (item.maybeApplied || item.inFlight) return new ClientError('closed', `the chat was left while it could not be registered (${why}): the write was sent before and may have been saved (its answer was lost)`, { ...context, maybeApplied: true });
        return new ClientError('closed', `the chat was left while it could not be registered (${why}): the write was not sent`, context);
      },
      () => !state.leaving || !current(),
    );
    if (!current()) return; // its last failed write completed the leave (see `Writes.fail`)
    if (state.leaving) return this.finishLeaving(state); // it had no writes
    // Opened again meanwhile: it registers again, after its backoff (refused for now), unless a
    // listener's call already started that.
    if (state.status === 'idle' && state.retryTimer === null) this.retryRegister(state);
  }

  private typing(state: ChatState): void {
    const now = Date.now();
    if (state.status !== 'registered' || state.leaving || now - state.lastTypingAt < TYPING_INTERVAL_MS) return;
    if (this.core.transmit(JSON.stringify({ type: 'typing', chat_id: state.chat.id }), true)) {
      state.lastTypingAt = now;
      state.lastTypingNo = this.core.requests.framesSent; // sent at once (droppable frames are never queued)
    }
  }

  /** The handle's view of its chat. */
  private chatHost(): ChatHost {
    const stateOf = (chat: Chat): ChatState | undefined => {
      const state = this.chats.get(String(chat.id));
      return state?.chat === chat ? state : undefined;
    };
    /** Why the handle's chat is gone (left, refused, revoked…), for what is asked of it since. */
    const goneError = (chat: Chat, context: { op?: string; id?: string }): ClientError => {
      const ended = this.goneHandles.get(chat);
      if (ended === undefined) return new ClientError('closed', 'the chat was left', { ...context, chatId: chat.id });
      return new ClientError(ended.code, ended.message, { ...ended.details, ...context, chatId: chat.id });
    };
    return {
      write: (chat, op, data) => {
        const state = stateOf(chat);
        if (state !== undefined) return this.writes.write(state, op, data);
        return Promise.reject(this.core.ended() ?? goneError(chat, { op, id: data.id }));
      },
      typing: (chat) => {
        const state = stateOf(chat);
        if (state) this.typing(state);
      },
      leave: (chat) => {
        const state = stateOf(chat);
        if (state) this.leave(state);
      },
      ready: (chat) => {
        const state = stateOf(chat);
        const ended = this.core.ended();
        if (ended) return Promise.reject(ended);
        if (state === undefined) return Promise.reject(goneError(chat, {}));
        // Left, its leave waiting for the answers to its earlier writes: as a write made now.
        if (state.leaving) return Promise.reject(new ClientError('closed', 'the chat was left', { chatId: chat.id }));
        if (state.status === 'registered' && state.lastRegistered) return Promise.resolve(state.lastRegistered);
        return new Promise((resolve, reject) => state.waiters.push({ resolve, reject }));
      },
      position: (chat) => stateOf(chat)?.stream.position ?? null,
      online: (chat) => [...(stateOf(chat)?.online.values() ?? [])],
      listen: <K extends keyof ChatEvents>(chat: Chat, type: K, listener: (event: ChatEvents[K]) => void) => {
        const key = String(chat.id);
        // A handle already left (not the chat's current one) hears nothing, and keeps nothing.
        const current = this.chats.get(key);
        if (current === undefined ? !this.handleListeners.has(chat) : current.chat !== chat) return () => undefined;
        const off = this.host.listen(type, (event) => {
          if (String((event as { chatId: ChatId }).chatId) !== key) return;
          // A handle left and replaced by a newer one for the same chat hears nothing more.
          const current = this.chats.get(key);
          if (current === undefined || current.chat === chat) listener(event);
        });
        let offs = this.handleListeners.get(chat);
        if (offs === undefined) this.handleListeners.set(chat, (offs = new Set()));
        offs.add(off);
        const remove = offs;
        return () => {
          off();
          remove.delete(off);
        };
      },
      newId,
    };
  }
}

function samePosition(a: Position | null, b: Position | null): boolean {
  return a === b || (a !== null && b !== null && a.seq === b.seq && a.epoch === b.epoch);
}
