import { backoffDelay } from './backoff.js';
import { Chat, type ChatHost } from './chat.js';
import type { ChatState } from './chat-state.js';
import type { Core } from './core.js';
import { Emitter } from './emitter.js';
import { ClientError, errorText, type ClientErrorCode } from './errors.js';
import { isChatId, newId } from './ids.js';
import { resolveConfig, type ChatOptions, type ClientOptions, type Config } from './options.js';
import { MemoryStorage, WRITE_OPS } from './outbox.js';
import { Pacer } from './pacer.js';
import { Requests, writeKey, type Outgoing, type Track } from './requests.js';
import { Stream, positionIn, type Delivery } from './stream.js';
import { clearTimer, timerMs, type Timer } from './timers.js';
import { RefusedAgain, TokenKeeper } from './token.js';
import { TokenRefresh } from './token-refresh.js';
import { Writes } from './writes.js';
import type {
  ChatEvents,
  ChatId,
  ClientEvents,
  ConnectionState,
  Frame,
  Position,
  RegisteredEvent,
  StateEvent,
  UserId,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

// The SDK's tests reach these through this module.
export { jwtClaims, refreshDelay } from './jwt.js';

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
/** A hole in a chat's seqs that no write of ours can own is reported as a gap after this long. */
const HOLE_GRACE_MS = 2000;

export function createClient(options: ClientOptions): Client {
  return new Client(options);
}

/**
 * A connection to the gateway that survives disconnects: it reconnects with backoff,
 * re-registers every chat from its last position, resends unacked writes with the same ids,
 * and hands the app each broadcast once, in order.
 */
export class Client extends Emitter<ClientEvents> {
  private readonly WS: WebSocketConstructor;
  private readonly cfg: Config;
  private readonly chats = new Map<string, ChatState>();
  /** Chats left lately (bounded): their frames still on the way are expected, not `unhandled`. */
  private readonly left = new Set<string>();
  /** What removes each handle's listeners (`chat.on`): done once the handle is left for good. */
  private readonly handleListeners = new Map<Chat, Array<() => void>>();
  private readonly writes: Writes;
  private readonly host: ChatHost;

  private ws: WebSocketLike | null = null;
  private current: ConnectionState = 'disconnected';
  /** Set once the client is closed or gave up: nothing happens after it. */
  private ended: ClientError | null = null;
  /** Set once the client's final events are out: nothing is emitted any more. */
  private silenced = false;
  private reconnectAttempt = 0;
  private reconnectTimer: Timer | null = null;
  /** Abandons an attempt that has not opened in time. */
  private connectTimer: Timer | null = null;
  private openedAt = 0;
  private lastSocketError = '';

  /** After 4403: no new connection before the provider handed over a token other than the refused one. */
  private renewBeforeConnect = false;
  /** That token is being asked for (nothing connects meanwhile). */
  private renewing = false;

  private lastFrameAt = 0;
  private idleTimer: Timer | null = null;
  private pongTimer: Timer | null = null;
  /** Connections opened so far (a write remembers the one it was sent on). */
  private connectionNo = 0;
  /** Connection attempts so far (the `url` function's argument; the index into a URL list). */
  private attempts = 0;
  /** Entries of a URL list the WebSocket constructor refused (skipped from then on). */
  private readonly unusableUrls = new Set<string>();
  /** Causes of refused registers the app was told of since a chat last registered (see reportRetriedRegister). */
  private readonly registerRefusalsReported = new Set<'connections' | 'refused'>();

  private readonly requests: Requests;
  private readonly keeper: TokenKeeper;
  private readonly refresh: TokenRefresh;
  private holdTimer: Timer | null = null;

  constructor(private readonly options: ClientOptions) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) throw new TypeError('no WebSocket implementation: pass { WebSocket } (on Node 20: import { WebSocket } from "ws")');
    this.WS = WS;
    if (options.url === '' || (Array.isArray(options.url) && options.url.length === 0)) throw new TypeError('no gateway URL given');
    this.cfg = resolveConfig(options);
    const pacer = new Pacer<Outgoing>(this.cfg.rateLimit, (frame) => this.rawSend(frame));
    this.requests = new Requests(this.cfg.requestTimeoutMs, pacer, {
      isOpen: () => this.isOpen(),
      isPending: (write) => this.writes.isPending(write),
      writeRefused: (write, error) => this.writes.refused(write, error),
      writesMayGo: () => this.writes.pump(),
    });
    const core: Core = {
      cfg: this.cfg,
      emit: (type, event) => this.emit(type, event),
      ended: () => this.ended,
      giveUp: (error, code) => this.giveUp(error, code),
      isOpen: () => this.isOpen(),
      transmit: (text, droppable, track) => this.transmit(text, droppable, track),
      requests: this.requests,
      connectionNo: () => this.connectionNo,
    };
    this.keeper = new TokenKeeper(core, options.token, () => this.refresh.arm());
    this.refresh = new TokenRefresh(core, this.keeper, options.refreshLeadMs, {
      anyRegistered: () => [...this.chats.values()].some((state) => state.status === 'registered'),
      anyRegistering: () => [...this.chats.values()].some((state) => state.status === 'registering'),
    });
    this.writes = new Writes(core, options.storage ?? new MemoryStorage(), {
      get: (key) => this.chats.get(key),
      values: () => this.chats.values(),
      reregister: (state) => {
        state.status = 'idle';
        this.register(state);
      },
      deliver: (deliveries) => this.deliver(deliveries),
      finishLeaving: (state) => this.finishLeaving(state),
    });
    this.host = this.chatHost();
  }

  get state(): ConnectionState {
    return this.current;
  }

  /** The chat's handle; registers it (connecting if needed) unless it is already open. */
  chat(id: ChatId, options: ChatOptions = {}): Chat {
    if (this.ended) throw this.ended;
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
          if (existing.leaving || existing.status === 'gone' || this.ended) return;
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
      chat: new Chat(this.host, id),
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
    };
    this.chats.set(key, state);
    this.writes.noteOwnWrites(state);
    if (this.isOpen()) this.register(state);
    else this.connectSoon();
    return state.chat;
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
    } else if (state.status === 'registered' && this.isOpen()) {
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
        this.emit('error', { error: err, during: 'isKnownMessage' });
        return false;
      }
    };
  }

  /** Round trip of an application ping, in ms; rejects if the connection drops first. */
  ping(): Promise<number> {
    const started = Date.now();
    return new Promise((resolve, reject) => {
      if (!this.isOpen()) return reject(new ClientError('disconnected', 'not connected'));
      this.sendPing((answered) => (answered ? resolve(Date.now() - started) : reject(new ClientError('disconnected', 'no pong: the ping was refused or the connection dropped'))));
    });
  }

  /**
   * Sends a text frame verbatim (paced like every frame). A debugging aid: its answers reach
   * the app as `unhandled` events unless they belong to something the SDK tracks.
   */
  sendRaw(text: string): boolean {
    const sent = this.transmit(text);
    if (sent) this.requests.onRawSend();
    return sent;
  }

  /** Closes the connection for good; every pending promise rejects with `closed`. */
  close(): void {
    this.giveUp(new ClientError('closed', 'the client was closed'));
  }

  // --- connection ------------------------------------------------------------------------------

  private isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === 1 && this.current === 'connected';
  }

  /** A connection is kept only while some chat needs it. */
  private wanted(): boolean {
    for (const state of this.chats.values()) if (state.status !== 'gone') return true;
    return false;
  }

  private connectSoon(): void {
    if (this.ended || this.ws !== null || this.reconnectTimer !== null || this.renewing) return;
    this.connect();
  }

  private setState(event: StateEvent): void {
    this.current = event.state;
    this.emit('state', event);
  }

  /**
   * Opens a WebSocket. The token is fetched only once it is open (for the first register), so
   * an offline device just keeps reconnecting instead of counting failed token fetches.
   */
  private connect(): void {
    this.reconnectTimer = null;
    if (this.ended || this.ws !== null || this.renewing || !this.wanted()) return;
    if (this.renewBeforeConnect) return this.renewThenConnect();
    this.setState({ state: 'connecting' });
    let ws: WebSocketLike;
    let url = '';
    try {
      url = this.nextUrl();
    } catch (err) {
      // The app's `url` function failed (service discovery down?): a failed attempt, tried again.
      this.lastSocketError = `the url function failed: ${errorText(err)}`;
      return this.scheduleReconnect(1006, this.lastSocketError);
    }
    try {
      ws = new this.WS(url);
    } catch (err) {
      // A URL the runtime refuses will never work: a list moves on to its next entry (and skips
      // this one from now on), a function is asked again (a failed attempt); a single URL, or a
      // list with no usable entry left, ends the client.
      const error = new ClientError('disconnected', `cannot open ${url || 'the gateway URL'}: ${errorText(err)}`);
      const source = this.options.url;
      if (typeof source === 'string') return this.giveUp(error);
      if (typeof source !== 'function') {
        this.unusableUrls.add(url);
        if (source.every((u) => this.unusableUrls.has(u))) return this.giveUp(error);
      }
      this.lastSocketError = error.message;
      return this.scheduleReconnect(1006, this.lastSocketError);
    }
    this.ws = ws;
    this.lastSocketError = '';
    clearTimer(this.connectTimer);
    this.connectTimer = setTimeout(() => this.abandon(ws, 'connect timeout'), this.cfg.connectTimeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearTimer(this.connectTimer);
      this.connectTimer = null;
      this.onOpen();
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (this.ws === ws) this.onMessage(event.data);
    };
    ws.onerror = (event: { message?: unknown; error?: unknown }) => {
      if (this.ws === ws) this.lastSocketError = errorText(event.error ?? event.message ?? 'WebSocket error');
    };
    ws.onclose = (event: { code: number; reason: string }) => {
      if (this.ws === ws) this.onClose(event.code, event.reason || this.lastSocketError);
    };
  }

  /**
   * After 4403 the gateway would accept the same token again, but the backend said not to use
   * it: the provider is asked first, and only a different token leads to a new connection (the
   * same one counts as a refusal, see `freshToken`; failures wait a backoff delay and ask again).
   */
  private renewThenConnect(): void {
    this.renewing = true;
    this.keeper.fresh().then(
      () => {
        this.renewing = false;
        this.renewBeforeConnect = false;
        this.connect();
      },
      () => {
        this.renewing = false;
        if (!this.ended && this.wanted()) this.scheduleReconnect(4403, 'waiting for a new token');
      },
    );
  }

  /** The URL of this attempt: the string, the list's next entry, or the function's answer. */
  private nextUrl(): string {
    const source = this.options.url;
    const attempt = this.attempts++;
    let url: string;
    if (typeof source === 'function') url = source(attempt);
    else if (typeof source === 'string') url = source;
    else {
      // The next entry the runtime did not refuse (see `connect`).
      let i = attempt;
      while (this.unusableUrls.has(source[i % source.length]!) && i < attempt + source.length) i++;
      this.attempts += i - attempt;
      url = source[i % source.length]!;
    }
    // An empty answer (service discovery with nothing to offer for a moment) is a failed attempt.
    if (typeof url !== 'string' || url === '') throw new TypeError('no URL for this attempt');
    return url;
  }

  private onOpen(): void {
    this.openedAt = Date.now();
    this.lastFrameAt = this.openedAt;
    this.connectionNo++;
    this.requests.restart(this.openedAt);
    this.setState({ state: 'connected' });
    if (!this.isOpen()) return; // a listener closed the client or left the last chat
    this.armIdle();
    for (const state of this.chats.values()) {
      // `registering`: opened by a `state` listener above, its register already out.
      if (state.status === 'gone' || state.status === 'registering') continue;
      state.status = 'idle';
      this.register(state);
    }
  }

  /** Stops listening to `ws` (it may never report its close: a dead link) and treats it as closed. */
  private abandon(ws: WebSocketLike, why: string): void {
    if (this.ws !== ws) return;
    detach(ws);
    try {
      ws.close(4000, why);
    } catch {
      // already closing
    }
    this.onClose(1006, why);
  }

  private onClose(code: number, reason: string): void {
    const ws = this.ws;
    if (ws !== null) detach(ws);
    this.ws = null;
    this.stopConnectionTimers();
    if (this.openedAt !== 0 && Date.now() - this.openedAt >= this.cfg.stableAfterMs) this.reconnectAttempt = 0;
    this.openedAt = 0;
    this.dropOutstanding();
    this.refresh.abandon();
    for (const state of this.chats.values()) {
      if (state.status !== 'gone') state.status = 'idle';
      // The next connection registers it with its own position: nothing to reorder.
      state.registerAgain = false;
      state.reordering = null;
      clearTimer(state.retryTimer);
      state.retryTimer = null;
    }
    this.writes.disconnected(code);
    if (code === 1008) {
      this.giveUp(new ClientError('disconnected', `the gateway closed the connection for flooding (1008${reason ? `: ${reason}` : ''})`, { closeCode: code }), code, reason);
      return;
    }
    if (code === 4403) {
      // The backend disconnected the user (logout everywhere, a ban): never the same token again.
      const error = new ClientError('disconnected', `the server disconnected this user (4403${reason ? `: ${reason}` : ''}): a new token is needed`, { closeCode: code });
      if (this.keeper.provider === null) return this.giveUp(error, code, reason);
      this.renewBeforeConnect = true;
      this.keeper.revoked(error, code);
      if (this.ended) return;
    }
    // 4401 also follows five `forbidden` registers: those chats are dropped already and the
    // token is fine, so only refusals of the token itself make it a token problem.
    if (code === 4401 && this.keeper.lastRefusal !== 'forbidden') {
      this.keeper.refused(new ClientError('unauthorized', 'the gateway refused the token too often (4401): a new token is needed', { closeCode: code }), code);
      if (this.ended) return;
    }
    if (!this.wanted()) {
      this.setState({ state: 'disconnected', code, reason, retryInMs: null });
      return;
    }
    this.scheduleReconnect(code, reason);
  }

  private scheduleReconnect(code: number, reason: string): void {
    const delay = backoffDelay(this.reconnectAttempt++, this.cfg.backoff);
    // Armed before the event, so a listener that calls close() cancels it.
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
    this.setState({ state: 'disconnected', code, reason, retryInMs: delay });
  }

  /** Ends the client: no reconnect; every pending promise rejects with `error`. */
  private giveUp(error: ClientError, code?: number, reason?: string): void {
    if (this.ended) return;
    this.ended = error;
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      detach(ws);
      try {
        ws.close(1000, error.code === 'closed' ? 'bye' : 'giving up');
      } catch {
        // already closing
      }
    }
    this.stopConnectionTimers();
    this.keeper.end(error);
    clearTimer(this.reconnectTimer);
    clearTimer(this.holdTimer);
    this.reconnectTimer = this.holdTimer = null;
    this.refresh.stop();
    this.dropOutstanding();
    for (const state of this.chats.values()) {
      clearTimer(state.retryTimer);
      for (const w of state.waiters.splice(0)) w.reject(error);
    }
    this.writes.end(error);
    this.setState({ state: 'disconnected', retryInMs: null, error, ...(code === undefined ? {} : { code }), ...(reason ? { reason } : {}) });
    this.silenced = true;
  }

  /** After the final `disconnected` of `close()` or giving up, no event is emitted (late storage or timer callbacks included). */
  protected override emit<K extends keyof ClientEvents>(type: K, event: ClientEvents[K]): void {
    if (!this.silenced) super.emit(type, event);
  }

  private stopConnectionTimers(): void {
    clearTimer(this.connectTimer);
    clearTimer(this.idleTimer);
    clearTimer(this.pongTimer);
    this.connectTimer = this.idleTimer = this.pongTimer = null;
    this.requests.stop();
  }

  /** The connection is gone: nothing sent on it will be answered (pings are told so). */
  private dropOutstanding(): void {
    this.requests.drop();
  }

  // --- liveness --------------------------------------------------------------------------------

  /**
   * After `pingIdleMs` without a frame the client pings; if nothing at all arrives within
   * `pongTimeoutMs` the link is dead (runtimes hide WebSocket-level pings, and a dead TCP link
   * can take minutes to report) and the client reconnects.
   */
  private armIdle(): void {
    clearTimer(this.idleTimer);
    const due = this.lastFrameAt + this.cfg.pingIdleMs - Date.now();
    this.idleTimer = setTimeout(() => this.onIdle(), Math.max(due, 0));
  }

  private onIdle(): void {
    this.idleTimer = null;
    const ws = this.ws;
    if (ws === null || !this.isOpen()) return;
    if (Date.now() - this.lastFrameAt < this.cfg.pingIdleMs) return this.armIdle();
    this.sendPing();
    this.pongTimer = setTimeout(() => this.abandon(ws, 'no answer to ping'), this.cfg.pongTimeoutMs);
  }

  // --- outgoing frames -------------------------------------------------------------------------

  /**
   * Sends a frame within the client's token bucket; queued (in order) when out of tokens or
   * while the gateway is not reading, or dropped if `droppable` (typing). False when it was not
   * sent or queued. A `track`ed frame is a request: matched with its answer, resent if dropped.
   */
  private transmit(text: string, droppable = false, track?: Track): boolean {
    if (!this.isOpen()) return false;
    return this.requests.send({ text, track }, droppable);
  }

  private rawSend(frame: Outgoing): void {
    this.requests.onSend(frame.track);
    try {
      this.ws?.send(frame.text);
    } catch {
      // The socket is closing; its close event resends what is still unacked.
    }
  }

  private sendPing(onAnswer: (answered: boolean) => void = () => undefined): void {
    const track: Track = { key: 'p', onAnswer, resend: () => this.transmit('{"type":"ping"}', false, track) };
    this.transmit('{"type":"ping"}', false, track);
  }

  // --- chats -----------------------------------------------------------------------------------

  private register(state: ChatState): void {
    if (!this.isOpen() || state.status !== 'idle' || state.retryTimer !== null) return;
    const token = this.keeper.usable;
    if (token === null) {
      // The first register, or the token was refused: ask the provider (one call for all chats).
      this.keeper.fresh().then(
        () => this.register(state),
        (err: unknown) => {
          if (this.ended || state.status !== 'idle') return;
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
    const pending = this.requests.pending(`r:${state.key}`);
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
    this.transmit(JSON.stringify({ type: 'register', token, chat_id: state.chat.id, ...(since === null ? {} : { since }) }), false, { key: `r:${state.key}`, resend, since });
  }

  /** Registers `state` again after `delayMs` (default: the chat's next backoff delay; its register was refused for now). */
  private retryRegister(state: ChatState, delayMs = backoffDelay(state.registerAttempts++, this.cfg.backoff)): void {
    state.status = 'idle';
    clearTimer(state.retryTimer);
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      this.register(state);
    }, Math.max(0, delayMs));
  }

  /** Keeps the chat's online list; a chat being left is not told (its list stays true in case it is opened again). */
  private onPresence(state: ChatState, user: UserId, status: 'online' | 'offline'): void {
    if (status === 'online') state.online.set(String(user), user);
    else state.online.delete(String(user));
    if (!state.leaving) this.emit('presence', { chatId: state.chat.id, userId: user, status });
  }

  private onRegistered(state: ChatState, frame: Frame): void {
    if (state.registerAgain) {
      // The answer to its earlier handle's register, from another position: ask with its own.
      state.status = 'idle';
      return this.register(state);
    }
    state.status = 'registered';
    state.expiredWhileRegistering = false;
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
    if (!state.leaving) this.emit('registered', event);
    this.writes.pump();
  }

  /** A `register` answered with an error. */
  private registerRefused(state: ChatState, error: ClientError): void {
    if (state.status === 'gone' || this.ended) return;
    if (state.expiredWhileRegistering && error.code === 'unauthorized') {
      // The answer to a register whose registration expired meanwhile: registered again, the
      // expiry does not count toward maxAuthFailures.
      state.expiredWhileRegistering = false;
      return this.retryRegister(state, 0);
    }
    state.expiredWhileRegistering = false;
    this.keeper.registerRefused(error);
    if (RETRYABLE.has(error.code)) {
      this.reportRetriedRegister(state, error);
      return this.retryRegister(state);
    }
    if (error.code === 'unauthorized' && this.keeper.provider !== null) {
      this.keeper.refused(error);
      if (!this.ended) this.retryRegister(state);
      return;
    }
    this.drop(state, error);
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
    this.emit('error', { error: new ClientError(error.code, error.message, { ...error.details, chatId: state.chat.id }), during });
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
   */
  private onUnregistered(state: ChatState, reason: string): void {
    state.status = 'idle';
    const provider = this.keeper.provider !== null;
    if (reason === 'token_expired' && provider) {
      this.keeper.expired();
      // A register of it still out is answered `unauthorized` next: the expiry's echo, not a refusal.
      if (this.requests.pending(`r:${state.key}`) !== undefined) state.expiredWhileRegistering = true;
      this.register(state);
      return;
    }
    const chatId = state.chat.id;
    const error =
      reason === 'revoked' ? new ClientError('revoked', 'the backend revoked the membership of this chat', { chatId })
      : reason === 'token_expired' ? new ClientError('token_expired', 'the token expired (static token: it cannot be renewed)', { chatId })
      : new ClientError(reason === 'unauthorized' ? 'unauthorized' : 'forbidden', `the gateway ended the registration (${reason})`, { chatId });
    if (reason === 'unauthorized' && provider) {
      this.keeper.refused(error);
      if (!this.ended) this.register(state);
      return;
    }
    this.drop(state, error, reason);
  }

  /** A chat that cannot be (re)registered: its writes fail, and the app is told. */
  private drop(state: ChatState, error: ClientError, reason?: string): void {
    this.forget(state, error);
    this.writes.failWritesTo(state.key, error);
    this.emit('unregistered', { chatId: state.chat.id, error, ...(reason === undefined ? {} : { reason }) });
    this.closeIfIdle();
  }

  private forget(state: ChatState, error: ClientError): void {
    state.status = 'gone';
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
    this.finishLeaving(state);
  }

  private finishLeaving(state: ChatState | undefined): void {
    if (state === undefined || !state.leaving || this.writes.hasWritesTo(state.key)) return;
    // A register still out is unregistered when its answer comes (see onMessage, `registered`).
    if (state.status === 'registered') this.unregister(state.chat.id, state.key);
    this.forget(state, new ClientError('closed', 'left the chat', { chatId: state.chat.id }));
    this.closeIfIdle();
  }

  /** Ends the gateway's registration of a chat this client has left. */
  private unregister(chatId: ChatId, key: string): void {
    const text = JSON.stringify({ type: 'unregister', chat_id: chatId });
    const track: Track = {
      key: `u:${key}`,
      // Not if the chat was opened again meanwhile (that registration must stay).
      resend: () => void (this.chats.has(key) || this.transmit(text, false, track)),
    };
    this.transmit(text, false, track);
  }

  /** Without chats the gateway would close the connection (4408): close it first. */
  private closeIfIdle(): void {
    if (this.wanted() || this.ended) return;
    const reconnecting = this.reconnectTimer !== null;
    clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      detach(ws);
      try {
        ws.close(1000, 'no chats');
      } catch {
        // already closing
      }
    }
    this.stopConnectionTimers();
    clearTimer(this.holdTimer); // no chat holds an edit any more
    this.holdTimer = null;
    // No chat waits for a token: a provider call (or its pacing) is let go; the next chat asks anew.
    this.keeper.letGo();
    this.dropOutstanding();
    this.refresh.abandon();
    if (ws !== null || reconnecting) this.setState({ state: 'disconnected', code: 1000, reason: 'no chats', retryInMs: null });
  }

  private typing(state: ChatState): void {
    const now = Date.now();
    if (state.status !== 'registered' || state.leaving || now - state.lastTypingAt < TYPING_INTERVAL_MS) return;
    if (this.transmit(JSON.stringify({ type: 'typing', chat_id: state.chat.id }), true)) {
      state.lastTypingAt = now;
      state.lastTypingNo = this.requests.framesSent; // sent at once (droppable frames are never queued)
    }
  }

  // --- errors ---------------------------------------------------------------------------------

  private onError(frame: Frame): void {
    const op = typeof frame.op === 'string' ? frame.op : '';
    const code = String(frame.code) as ClientErrorCode;
    const details = {
      retryable: frame.retryable === true,
      op,
      ...(typeof frame.id === 'string' ? { id: frame.id } : {}),
      ...(frame.chat_id === undefined ? {} : { chatId: frame.chat_id as ChatId }),
    };
    const error = new ClientError(code, typeof frame.message === 'string' ? frame.message : code, details);
    const chatKey = String(frame.chat_id);
    const key =
      op === 'register' ? `r:${chatKey}`
      : op === 'unregister' ? `u:${chatKey}`
      : op === 'ping' ? 'p'
      : op === 'refresh' ? 'f'
      : WRITE_OPS.has(op) && typeof frame.id === 'string' ? writeKey(op, frame.id)
      : null;
    const request = key === null ? undefined : this.requests.answered(key);
    if (code === 'rate_limited' && isBucketPause(frame)) {
      // Which frame was refused tells which later ones the gateway may have dropped unread;
      // when it cannot be told (typing, a frame of sendRaw), every unanswered one is suspect.
      const no = request?.no ?? (op === 'typing' ? (this.chats.get(chatKey)?.lastTypingNo ?? 0) : 0);
      this.requests.rateLimited(no);
    }
    if (op === 'register') {
      const state = this.chats.get(chatKey);
      if (state?.status === 'registering') return this.registerRefused(state, error);
      if (request !== undefined) return; // a second answer to a register sent twice
    } else if (WRITE_OPS.has(op) && typeof frame.id === 'string') {
      if (this.writes.onError(request, op, frame.id, error)) return;
    } else if (op === 'ping') {
      // A refused ping gets no pong. (The error itself proves the link is alive.)
      return request?.onAnswer?.(false);
    } else if (op === 'refresh') {
      if (this.refresh.onError(error, request !== undefined, code === 'rate_limited' && refreshInProgress(frame))) return;
    } else if (op === 'typing' || op === 'unregister') {
      return; // typing is best effort; an unregistered chat is forgotten either way
    } else if (op === '' && !(code === 'rate_limited' && isBucketPause(frame))) {
      this.requests.onUnnamedError(error);
    }
    this.emit('unhandled', frame);
  }

  // --- incoming frames -------------------------------------------------------------------------

  private onMessage(data: unknown): void {
    this.lastFrameAt = Date.now();
    if (this.pongTimer !== null) {
      // Any frame proves the link is alive, not only the pong.
      clearTimer(this.pongTimer);
      this.pongTimer = null;
      this.armIdle();
    }
    if (typeof data !== 'string') return;
    let frame: Frame;
    try {
      frame = JSON.parse(data) as Frame;
    } catch {
      return;
    }
    if (typeof frame !== 'object' || frame === null || typeof frame.type !== 'string') return;
    const chatKey = String(frame.chat_id);
    const state = frame.chat_id === undefined ? undefined : this.chats.get(chatKey);
    // A chat being left gets no more events, but its registration still answers, and its stream
    // and presence are still kept (muted): opened again before the leave completes, it goes on.
    const open = state !== undefined && state.status !== 'gone' ? state : undefined;
    const live = open !== undefined && !open.leaving ? open : undefined;
    switch (frame.type) {
      case 'message':
      case 'edit_message':
      case 'delete_message':
      case 'event':
        if (open === undefined) break;
        if (open.reordering !== null) {
          if (open.reordering.length < MAX_REORDERING) open.reordering.push(frame);
          return;
        }
        this.deliver(open.stream.onBroadcast(frame, Date.now()));
        return;
      case 'presence':
        if (open === undefined) break;
        this.onPresence(open, frame.user_id as UserId, frame.status === 'online' ? 'online' : 'offline');
        return;
      case 'presence_batch':
        if (open === undefined) break;
        for (const user of Array.isArray(frame.online) ? (frame.online as UserId[]) : []) this.onPresence(open, user, 'online');
        for (const user of Array.isArray(frame.offline) ? (frame.offline as UserId[]) : []) this.onPresence(open, user, 'offline');
        return;
      case 'typing':
        if (live === undefined) break;
        this.emit('typing', { chatId: live.chat.id, userId: frame.user_id as UserId });
        return;
      case 'registered': {
        const request = this.requests.answered(`r:${chatKey}`);
        if (state === undefined || state.status === 'gone') {
          // The chat was left while its register was out: the gateway registered it all the same.
          if (request !== undefined && frame.chat_id !== undefined) return this.unregister(frame.chat_id as ChatId, chatKey);
          break;
        }
        // Also a second answer to a register sent twice (after a drop or a timeout), or one
        // that comes while a refused resend waits to be retried: as truthful as the first.
        return this.onRegistered(state, frame);
      }
      case 'unregistered':
        // Without a reason it answers our own `unregister`: the chat is already forgotten.
        if (typeof frame.reason !== 'string') return void this.requests.answered(`u:${chatKey}`);
        if (state === undefined || state.status === 'gone') break;
        return this.onUnregistered(state, frame.reason);
      case 'refreshed':
        if (this.refresh.onRefreshed()) return;
        break;
      case 'ack':
        return this.writes.onAck(frame);
      case 'error':
        return this.onError(frame);
      case 'pong': {
        const request = this.requests.answered('p');
        if (request === undefined) break;
        return request.onAnswer?.(true);
      }
    }
    // A chat being left, or left lately (a replay, or frames before its unregister's answer): expected.
    if (frame.chat_id !== undefined && (state?.leaving === true || (state === undefined && this.left.has(chatKey)))) return;
    this.emit('unhandled', frame);
  }

  private deliver(deliveries: Delivery[]): void {
    for (const d of deliveries) {
      switch (d.type) {
        case 'message':
          this.emit('message', d.event);
          break;
        case 'edit':
          this.emit('edit', d.event);
          break;
        case 'delete':
          this.emit('delete', d.event);
          break;
        case 'event':
          this.emit('event', d.event);
          break;
        case 'gap':
          this.emit('gap', d.event);
          break;
      }
    }
    this.armHoldTimer();
  }

  /** Hands over held edits when their time is up. */
  private armHoldTimer(): void {
    if (this.ended) return;
    let next = Infinity;
    for (const state of this.chats.values()) next = Math.min(next, state.stream.nextExpiry() ?? Infinity);
    clearTimer(this.holdTimer);
    this.holdTimer = null;
    if (next === Infinity) return;
    this.holdTimer = setTimeout(
      () => {
        this.holdTimer = null;
        const now = Date.now();
        for (const state of this.chats.values()) this.deliver(state.stream.expire(now));
        this.armHoldTimer();
      },
      Math.max(0, next - Date.now()),
    );
  }

  // --- the handle's view -----------------------------------------------------------------------

  private chatHost(): ChatHost {
    const stateOf = (chat: Chat): ChatState | undefined => {
      const state = this.chats.get(String(chat.id));
      return state?.chat === chat ? state : undefined;
    };
    return {
      write: (chat, op, data) => {
        const state = stateOf(chat);
        if (state !== undefined) return this.writes.write(state, op, data);
        return Promise.reject(this.ended ?? new ClientError('closed', 'the chat was left', { op, id: data.id, chatId: chat.id }));
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
        if (this.ended) return Promise.reject(this.ended);
        if (state === undefined) return Promise.reject(new ClientError('closed', 'the chat was left', { chatId: chat.id }));
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
        const off = this.on(type, (event) => {
          if (String((event as { chatId: ChatId }).chatId) !== key) return;
          // A handle left and replaced by a newer one for the same chat hears nothing more.
          const current = this.chats.get(key);
          if (current === undefined || current.chat === chat) listener(event);
        });
        let offs = this.handleListeners.get(chat);
        if (offs === undefined) this.handleListeners.set(chat, (offs = []));
        offs.push(off);
        return off;
      },
      newId,
    };
  }
}

/**
 * A `rate_limited` from the gateway's token bucket: it stops reading the connection and drops
 * what it had read with the refused frame. Such errors carry `retry_after_ms`; a gateway older
 * than that field is recognised by its message, and an error without `op` can only be the
 * bucket. Every other `rate_limited` (a register or refresh already in flight, the pending-writes
 * cap, a main-API 429) drops nothing and is an ordinary answer.
 */
function isBucketPause(frame: Frame): boolean {
  if (typeof frame.retry_after_ms === 'number') return true;
  return typeof frame.op !== 'string' || (typeof frame.message === 'string' && /too many requests/i.test(frame.message));
}

/** The answer to a `refresh` sent while another is verified: that one's answer is still to come. */
function refreshInProgress(frame: Frame): boolean {
  return !isBucketPause(frame) && typeof frame.message === 'string' && /already in progress/i.test(frame.message);
}

function samePosition(a: Position | null, b: Position | null): boolean {
  return a === b || (a !== null && b !== null && a.seq === b.seq && a.epoch === b.epoch);
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = null;
  // Some implementations (ws) throw on an 'error' event nobody listens to.
  ws.onerror = () => undefined;
}
