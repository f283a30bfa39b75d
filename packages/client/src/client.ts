import { backoffDelay } from './backoff.js';
import type { Chat } from './chat.js';
import { Chats } from './chats.js';
import type { Core } from './core.js';
import { Deliverer } from './delivery.js';
import { Dispatcher } from './dispatch.js';
import { Emitter } from './emitter.js';
import { ClientError, errorText } from './errors.js';
import { resolveConfig, type ChatOptions, type ClientOptions, type Config } from './options.js';
import { MemoryStorage } from './outbox.js';
import { Pacer } from './pacer.js';
import { Requests, type Outgoing, type Track } from './requests.js';
import { clearTimer, type Timer } from './timers.js';
import { TokenKeeper } from './token.js';
import { TokenRefresh } from './token-refresh.js';
import type { ChatId, ClientEvents, ConnectionState, StateEvent, WebSocketConstructor, WebSocketLike } from './types.js';
import { Writes } from './writes.js';

// The SDK's tests reach these through this module.
export { jwtClaims, refreshDelay } from './jwt.js';

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
  private readonly requests: Requests;
  private readonly keeper: TokenKeeper;
  private readonly refresh: TokenRefresh;
  private readonly deliverer: Deliverer;
  private readonly writes: Writes;
  private readonly chats: Chats;
  private readonly dispatcher: Dispatcher;

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

  constructor(private readonly options: ClientOptions) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) throw new TypeError('no WebSocket implementation: pass { WebSocket } (on Node 20: import { WebSocket } from "ws")');
    this.WS = WS;
    if (options.url === '' || (Array.isArray(options.url) && options.url.length === 0)) throw new TypeError('no gateway URL given');
    this.cfg = resolveConfig(options);
    // Arrows reach the parts made later: none is called before the constructor returns.
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
      anyRegistered: () => this.chats.anyRegistered(),
      anyRegistering: () => this.chats.anyRegistering(),
    });
    this.deliverer = new Deliverer(core, () => this.chats.streams());
    this.writes = new Writes(core, options.storage ?? new MemoryStorage(), {
      get: (key) => this.chats.get(key),
      values: () => this.chats.values(),
      reregister: (state) => this.chats.reregister(state),
      deliver: (deliveries) => this.deliverer.deliver(deliveries),
      finishLeaving: (state) => this.chats.finishLeaving(state),
    }, options.storage === undefined);
    this.chats = new Chats(core, options, this.keeper, this.writes, this.deliverer, {
      connectSoon: () => this.connectSoon(),
      closeIfIdle: () => this.closeIfIdle(),
      listen: (type, listener) => this.on(type, listener),
    });
    this.dispatcher = new Dispatcher(core, this.chats, this.writes, this.refresh);
  }

  get state(): ConnectionState {
    return this.current;
  }

  /** The chat's handle; registers it (connecting if needed) unless it is already open. */
  chat(id: ChatId, options: ChatOptions = {}): Chat {
    if (this.ended) throw this.ended;
    return this.chats.open(id, options);
  }

  /**
   * Round trip of an application ping, in ms; rejects `disconnected` if the connection drops
   * first, or with the client's end (`closed` after `close()`) if the client ends first.
   */
  ping(): Promise<number> {
    const started = Date.now();
    return new Promise((resolve, reject) => {
      if (this.ended) return reject(this.ended);
      if (!this.isOpen()) return reject(new ClientError('disconnected', 'not connected'));
      this.sendPing((answered) => {
        if (answered) resolve(Date.now() - started);
        else reject(this.ended ?? new ClientError('disconnected', 'no pong: the ping was refused or the connection dropped'));
      });
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
    if (this.ended || this.ws !== null || this.renewing || !this.chats.wanted()) return;
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
   * same one counts as a refusal, see `TokenKeeper.fresh`; failures wait a backoff delay and ask again).
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
        if (!this.ended && this.chats.wanted()) this.scheduleReconnect(4403, 'waiting for a new token');
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
    this.chats.connected();
  }

  /** Stops listening to `ws` (it may never report its close: a dead link) and treats it as closed. */
  private abandon(ws: WebSocketLike, why: string): void {
    if (this.ws !== ws) return;
    shut(ws, 4000, why);
    this.onClose(1006, why);
  }

  private onClose(code: number, reason: string): void {
    const ws = this.ws;
    if (ws !== null) detach(ws);
    this.ws = null;
    this.stopConnectionTimers();
    if (this.openedAt !== 0 && Date.now() - this.openedAt >= this.cfg.stableAfterMs) this.reconnectAttempt = 0;
    this.openedAt = 0;
    this.requests.drop();
    this.refresh.abandon();
    this.chats.disconnected();
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
      this.keeper.userDisconnected(error, code);
      if (this.ended) return;
    }
    // 4401 also follows five `forbidden` registers: those chats are dropped already and the
    // token is fine, so only refusals of the token itself make it a token problem.
    if (code === 4401 && this.keeper.lastRefusal !== 'forbidden') {
      this.keeper.refused(new ClientError('unauthorized', 'the gateway refused the token too often (4401): a new token is needed', { closeCode: code }), code);
      if (this.ended) return;
    }
    if (!this.chats.wanted()) {
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
    if (ws !== null) shut(ws, 1000, error.code === 'closed' ? 'bye' : 'giving up');
    this.stopConnectionTimers();
    this.keeper.end(error);
    clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    this.deliverer.stop();
    this.refresh.stop();
    this.requests.drop();
    this.chats.end(error);
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

  /** See `Core.transmit`. */
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
    // A resend that cannot go out (the connection is closing) will get no pong: told so at once.
    const track: Track = { key: 'p', onAnswer, resend: () => void (this.transmit('{"type":"ping"}', false, track) || onAnswer(false)) };
    this.transmit('{"type":"ping"}', false, track);
  }

  /** Without chats the gateway would close the connection (4408): close it first. */
  private closeIfIdle(): void {
    if (this.chats.wanted() || this.ended) return;
    const reconnecting = this.reconnectTimer !== null;
    clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) shut(ws, 1000, 'no chats');
    this.stopConnectionTimers();
    this.deliverer.stop(); // no chat holds an edit any more
    // No chat waits for a token: a provider call (or its pacing) is let go; the next chat asks anew.
    this.keeper.letGo();
    this.requests.drop();
    this.refresh.abandon();
    if (ws !== null || reconnecting) this.setState({ state: 'disconnected', code: 1000, reason: 'no chats', retryInMs: null });
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
    this.dispatcher.onMessage(data);
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = null;
  // Some implementations (ws) throw on an 'error' event nobody listens to.
  ws.onerror = () => undefined;
}

/** Stops listening to `ws` and closes it. */
function shut(ws: WebSocketLike, code: number, reason: string): void {
  detach(ws);
  try {
    ws.close(code, reason);
  } catch {
    // already closing
  }
}
