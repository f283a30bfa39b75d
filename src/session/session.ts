import type { WebSocket } from 'ws';
import { EngineUnavailableError } from '../engine/types.js';
import { checkFrame, parseFrame, type RawFrame } from '../protocol/codec.js';
import { CLOSE, CancelledError, MAX_AUTH_FAILURES_IN_A_ROW, RequestError, isAuthRefusal } from '../protocol/errors.js';
import { MESSAGE_ID_PATTERN, idKey, parseId, type IdKey, type WireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import type { Feature, Outcome } from '../features/feature.js';
import { textFrame, type Outgoing } from '../hub/outgoing.js';
import { writeInTurn, type WriteTurnMark } from './write-turn.js';
import type { Socket } from 'node:net';
import type { GatewayContext } from './context.js';
import type { Connection, Registration } from './registration.js';
import { Chats } from './chats.js';
import { RateLimit } from './rate-limit.js';
import { Slots } from './slots.js';
import { jwtExpiryMs } from '../upstream/verify-cache.js';
import type { Hold } from '../upstream/scheduler.js';
import { whenSettled } from '../util/settled.js';


/** A request that names its target chat at the top level or inside `data`. */
export interface ChatTargeted {
  chat_id?: WireId | undefined;
  data?: { chat_id?: WireId | undefined } | undefined;
}

const MESSAGE_ID_RE = new RegExp(MESSAGE_ID_PATTERN);
const resolved = Promise.resolve();
/** How long a connection over its rate limit is not read. */
const THROTTLE_MS = 1000;
/**
 * A rejection streak is forgiven after this long without a rejection. It must outlast the
 * throttle: the first frames read after a pause arrive exactly THROTTLE_MS after the last
 * rejection, and a flood must not be forgiven for having been paused.
 */
const FORGIVE_MS = 2 * THROTTLE_MS;
/** How long a socket the gateway closed may take to complete the close handshake before it is dropped. */
const CLOSE_GRACE_MS = 1000;
/** What a socket the gateway closed may still send (its close reply, frames already in flight) before it is dropped. */
const CLOSE_READ_LIMIT = 64 * 1024;
/** A re-verify the main API could not answer is tried again this soon. */
const REVERIFY_RETRY_MS = 5000;

/**
 * One WebSocket connection's life: decode at the edge, rate limit, dispatch to a feature,
 * keep each chat's operations in the order sent, answer with exactly one frame per request.
 *
 * What one connection may cost is bounded: every frame takes a token from its bucket; at most
 * one register per chat and MAX_PENDING_WRITES writes wait at a time; at most
 * MAX_UPSTREAM_PER_CONNECTION main-API calls run at once; and when it closes, everything still
 * queued is dropped (no main-API call, no presence change) and an in-flight verify is aborted.
 * Writes already at the main API finish and are broadcast: they may have been saved.
 */
export class Session implements Connection, WriteTurnMark {
  user: IdKey | null = null;
  readonly chats = new Chats();
  closed = false;

  private chains: Map<IdKey, Promise<unknown>> | null = null;
  /** The rate limit's token bucket, as ctx.rateLimit keeps it (one number). */
  private bucket = RateLimit.FULL;
  /** The connection's share of the main-API pool; made by a call, let go once none runs or waits. */
  private slots: Slots | null = null;
  /** Aborts in-flight reads (verify) when the connection closes. */
  private closing: AbortController | null = null;
  /** Closed, or refused too often: no further main-API call starts. */
  private aborted = false;
  /** Verifies in flight; the AbortController (~750 bytes once its signal is read) lives only while one is. */
  private verifying = 0;
  /** `socket.bytesRead` when the last ping went out; -1: no ping yet. */
  private readAtPing = -1;
  private rejectedInARow = 0;
  /** Over the limit: the socket is not read for THROTTLE_MS. */
  private paused = false;
  /** 0 until the first rejection (never -Infinity: that would be a 16-byte heap number per connection). */
  private lastRejectedAt = 0;
  private authFailuresInARow = 0;
  private pendingWrites = 0;
  private registerTimer: NodeJS.Timeout | null = null;
  /** write-turn.ts's mark: this socket's writes within one event-loop turn are coalesced. */
  writeTurn = -1;
  /**
   * The chats a `refresh` in flight (one at a time) is for: an expiry of one of them that comes
   * meanwhile waits for its outcome (see credentialsDue). null when none is.
   */
  refreshing: ReadonlySet<IdKey> | null = null;
  /**
   * Frames carrying a token (register, refresh) received so far: a registration keeps the token
   * of the latest of them it accepted (Registration.tokenFrame), whichever verify ends first.
   */
  tokenFrames = 0;
  /** `performance.now()` before which a `refresh` is refused: see refresh.ts. */
  refreshPacedUntil = 0;
  /**
   * While a handler's synchronous part runs (onFrame): null until `targetChat` resolves the
   * request's chat, then that chat. undefined at any other time. Read back right after the call,
   * so an error sent later names the chat the request targeted when it arrived.
   */
  private resolvedTarget: IdKey | null | undefined = undefined;

  constructor(
    readonly id: string,
    private readonly ws: WebSocket,
    readonly ctx: GatewayContext,
  ) {
    this.armRegisterTimer();
  }

  /** The connection's TCP socket (`ws` keeps it as `_socket`), for writing pre-framed broadcasts. */
  private get socket(): Socket {
    return (this.ws as unknown as { _socket: Socket })._socket;
  }

  /** Aborted when the connection closes. */
  get signal(): AbortSignal {
    return (this.closing ??= new AbortController()).signal;
  }

  get maxBufferedBytes(): number {
    return this.ctx.config.maxBufferedBytes;
  }

  /** A slow consumer: closed 1013 and dropped at once, so its backlog is freed now. */
  overflow(): void {
    this.ctx.metrics.slowConsumerCloses.inc();
    this.ctx.connectionLogLimit.log(this.ctx.log, 'info', 'slow-consumer', { conn: this.id, buffered: this.ws.bufferedAmount }, 'slow consumer closed');
    this.close(CLOSE.tryAgainLater, 'slow consumer', true);
  }

  /**
   * Queues an encoded text frame; closes the connection 1013 instead of letting it hoard memory.
   * Framed here into one buffer and written like a broadcast: one `write` instead of `ws`'s
   * cork, header write, payload write and uncork (an ack per message is on the hot path). Several
   * frames in one turn (a replay, then `registered`) leave as one `writev` (write-turn.ts).
   */
  send(frame: Buffer): void {
    if (this.mayQueue(frame.length)) writeInTurn(this, this.socket, textFrame(frame));
  }

  /**
   * Writes a broadcast's WebSocket frame, built once for all receivers, straight to the socket
   * (coalesced with this socket's other writes of the turn): no framing or allocation per
   * receiver. Safe beside `ws`'s own writes because, without compression, `ws` writes each frame
   * whole and at once, never interleaved, and its cork nests inside ours.
   */
  sendFramed(frame: Outgoing): void {
    if (this.mayQueue(frame.wire.length)) writeInTurn(this, this.socket, frame.wire);
  }

  /** Open and with room for `bytes` more; past MAX_BUFFERED_BYTES the connection is closed 1013. */
  private mayQueue(bytes: number): boolean {
    if (this.closed || this.ws.readyState !== 1) return false;
    if (this.ws.bufferedAmount + bytes <= this.ctx.config.maxBufferedBytes) return true;
    this.overflow();
    return false;
  }

  /**
   * Every frame — valid or not, of any type — costs one token. Frames that arrive while the
   * connection is paused for being over its limit were read before the pause took effect: they
   * are dropped unparsed and unanswered (they count as rejections), so a flood costs the gateway
   * no JSON work at all.
   */
  onFrame(data: Buffer, isBinary: boolean): void {
    if (this.closed) return;
    if (this.paused) {
      this.ctx.metrics.ops.inc({ type: 'invalid', result: 'rate_limited' });
      this.noteRejection(performance.now());
      return;
    }
    let raw: RawFrame | undefined;
    let feature: Feature | undefined;
    let charged = false;
    let target: IdKey | undefined;
    try {
      if (isBinary) throw new RequestError('bad_request', 'binary frames are not supported; send JSON text frames');
      raw = parseFrame(data.toString('utf8'));
      const entry = this.ctx.features.get(raw.type);
      if (entry === undefined) throw new RequestError('unsupported_type', 'unknown frame type');
      feature = entry.feature;
      charged = true;
      this.charge();
      // Before anything reads a field below the top ones; its error still names the request.
      checkFrame(raw);
      const decoded = entry.validator.decode(raw);
      let result: ReturnType<Feature['handle']>;
      this.resolvedTarget = null;
      try {
        result = feature.handle(this, decoded);
      } finally {
        target = this.resolvedTarget ?? undefined;
        this.resolvedTarget = undefined;
      }
      if (result instanceof Promise) {
        const [type, frame, chat] = [feature.type, raw, target];
        void this.ctx.track(result.then((outcome) => this.count(type, outcome), (err: unknown) => this.reject(err, entry.feature, frame, chat)));
      } else {
        this.count(feature.type, result);
      }
    } catch (err) {
      // A frame that failed before its charge (not JSON, unknown type, …) still costs its token.
      if (!charged) {
        try {
          this.charge();
        } catch (limited) {
          err = limited;
        }
      }
      // Refused while it arrives: the chat it would target is the connection's only chat now.
      this.reject(err, feature, raw, target ?? (feature?.impliedChat ? this.onlyChat() : undefined));
    }
  }

  /**
   * Takes a token or throws `rate_limited`. Over the limit, the gateway also stops reading the
   * connection for THROTTLE_MS (TCP backpressure: the client's further frames wait in its own
   * buffers instead of costing the gateway CPU).
   */
  private charge(): void {
    const now = performance.now();
    const bucket = this.ctx.rateLimit.take(this.bucket);
    if (bucket !== null) {
      this.bucket = bucket;
      if (now - this.lastRejectedAt > FORGIVE_MS) this.rejectedInARow = 0;
      return;
    }
    this.noteRejection(now);
    if (!this.closed) {
      this.paused = true;
      this.ws.pause();
      setTimeout(() => {
        this.paused = false;
        if (!this.closed) this.ws.resume();
      }, THROTTLE_MS).unref();
    }
    throw new RequestError('rate_limited', 'too many requests; slow down', THROTTLE_MS);
  }

  /**
   * A connection that keeps sending while limited is closed 1008 after 10 × RATE_LIMIT_BURST
   * rejections "in a row": the count survives the odd request let through by the refill and
   * resets only after FORGIVE_MS without a rejection, so a steady flood is cut off while a client
   * that backs off is not.
   */
  private noteRejection(now: number): void {
    this.lastRejectedAt = now;
    if (++this.rejectedInARow > 10 * this.ctx.config.rateLimitBurst) this.close(CLOSE.policy, 'rate limit exceeded');
  }

  private count(type: string, outcome: Outcome): void {
    this.ctx.metrics.ops.inc({ type, result: outcome });
  }

  /**
   * `implied`: the chat a request that may omit `chat_id` targets, resolved when it arrived (see
   * `errorContext`); never worked out again here, where the connection's chats may have changed.
   */
  private reject(err: unknown, feature: Feature | undefined, raw: RawFrame | undefined, implied: IdKey | undefined): void {
    if (err instanceof CancelledError) {
      this.count(feature?.type ?? 'invalid', 'cancelled');
      return;
    }
    let error: RequestError;
    if (err instanceof RequestError) error = err;
    else if (err instanceof EngineUnavailableError) error = new RequestError('upstream_unavailable', 'engine unavailable; retry shortly');
    else {
      this.ctx.log.error({ conn: this.id, type: feature?.type, err: (err as Error)?.stack ?? String(err) }, 'request failed');
      error = new RequestError('internal', 'internal error');
    }
    // Metric labels stay a closed set: unknown types count as "invalid".
    this.ctx.metrics.ops.inc({ type: feature?.type ?? 'invalid', result: error.code });
    if (this.ctx.debug) this.debug('request refused', { type: feature?.type ?? 'invalid', code: error.code, chat: implied ?? loggableId(raw?.chat_id) });
    this.send(out.error(error.code, error.message, { ...this.errorContext(feature, raw, implied), retryAfterMs: error.retryAfterMs }));
    if (this.authFailuresInARow >= MAX_AUTH_FAILURES_IN_A_ROW) {
      this.ctx.connectionLogLimit.log(this.ctx.log, 'info', 'auth-failures', { conn: this.id }, 'too many refused registers; connection closed');
      this.close(CLOSE.authFailures, 'too many refused registrations');
    }
  }

  /**
   * Echoes what identifies the request: its type, the message id, and the chat it named — or,
   * for a request that may omit `chat_id` and did, `implied`: the chat it targeted when it
   * arrived (the connection's only chat then). Never the connection's chats at the time of the
   * error: by then a refused write may have ended the registration, or another chat may have
   * been registered, and the error would name no chat or the wrong one.
   */
  private errorContext(feature: Feature | undefined, raw: RawFrame | undefined, implied: IdKey | undefined): out.ErrorContext {
    if (raw === undefined) return {};
    const data = typeof raw.data === 'object' && raw.data !== null ? (raw.data as Record<string, unknown>) : undefined;
    const id = typeof data?.id === 'string' && MESSAGE_ID_RE.test(data.id) ? data.id : undefined;
    let chat = parseId(raw.chat_id) ?? parseId(data?.chat_id) ?? undefined;
    const named = raw.chat_id !== undefined || data?.chat_id !== undefined;
    if (chat === undefined && !named && feature?.impliedChat) chat = implied;
    const op = feature?.type ?? (raw.type.length <= 64 ? raw.type : undefined);
    return { op, id, chat };
  }

  /** The connection's only registered chat, if it has exactly one. */
  private onlyChat(): IdKey | undefined {
    return this.chats.size === 1 ? (this.chats.keys().next().value as IdKey) : undefined;
  }

  /**
   * The chat a request targets: explicit, or the connection's only chat. Called by a handler
   * before it awaits anything; the chat is noted (see `resolvedTarget`) for the request's error.
   */
  targetChat(frame: ChatTargeted): IdKey {
    const top = frame.chat_id;
    const inData = frame.data?.chat_id;
    if (top !== undefined && inData !== undefined && idKey(top) !== idKey(inData)) {
      throw new RequestError('bad_request', 'chat_id and data.chat_id disagree');
    }
    const explicit = top ?? inData;
    const chat = explicit !== undefined ? idKey(explicit) : this.onlyChat();
    if (chat === undefined) {
      if (this.chats.size === 0) throw new RequestError('not_registered', 'register to a chat first');
      throw new RequestError('bad_request', 'chat_id is required when the connection is registered to several chats');
    }
    if (this.resolvedTarget === null) this.resolvedTarget = chat;
    return chat;
  }

  registration(chat: IdKey): Registration {
    const reg = this.chats.get(chat);
    if (reg === undefined) throw new RequestError('not_registered', 'not registered to this chat');
    return reg;
  }

  /** Refuses new work that needs the main API or the engine while draining or disconnected. */
  requireAccepting(): void {
    if (this.ctx.isDraining()) throw new RequestError('upstream_unavailable', 'gateway is shutting down; reconnect');
    this.requireEngine();
  }

  requireEngine(): void {
    if (!this.ctx.engine.isReady()) throw new RequestError('upstream_unavailable', 'engine unavailable; retry shortly');
  }

  /**
   * Queues a write (message, edit, delete) in `reg`'s chat. Checked when received (draining,
   * engine, MAX_PENDING_WRITES) and again when it runs: an `unregister` queued before it, a
   * closed connection or an engine that went away in the meantime refuse it before anything is
   * saved. A 401 or 403 from the main API re-checks the registration (see `recheck`).
   */
  enqueueWrite<T>(reg: Registration, task: () => Promise<T>): Promise<T> {
    this.requireAccepting();
    const max = this.ctx.config.maxPendingWrites;
    if (this.pendingWrites >= max) {
      throw new RequestError('rate_limited', `${max} writes are already waiting for the main API; wait for their acks`);
    }
    this.pendingWrites++;
    const arrivedAt = performance.now();
    const run = this.enqueue(reg.chat, async () => {
      if (this.chats.get(reg.chat) !== reg) throw new RequestError('not_registered', 'not registered to this chat');
      this.requireEngine();
      // Behind slow writes (a main API slow to answer, an engine failing while a publish is
      // retried), a write would wait for each in turn (up to MAX_PENDING_WRITES of them: minutes
      // with a hanging main API, long past a client's own timeout, whose resends would then be
      // refused as too many). One that waited its turn for UPSTREAM_TIMEOUT_MS is refused, unsent.
      if (performance.now() - arrivedAt >= this.ctx.config.upstreamTimeoutMs) {
        throw new RequestError('upstream_unavailable', 'earlier writes of this chat are still pending; retry');
      }
      try {
        return await task();
      } catch (err) {
        if (isAuthRefusal(err)) await this.recheck(reg);
        throw err;
      }
    });
    const done = () => void this.pendingWrites--;
    run.then(done, done);
    return run;
  }

  /**
   * Runs `task` after every earlier operation of this connection in `chat` has finished —
   * unless the connection has closed by then: queued work dies with its connection.
   */
  enqueue<T>(chat: IdKey, task: () => Promise<T>): Promise<T> {
    const chains = (this.chains ??= new Map());
    const previous = chains.get(chat) ?? resolved;
    const next = previous.then(() => {
      if (this.closed) throw new CancelledError();
      return task();
    });
    const settled = next.then(
      () => undefined,
      () => undefined,
    );
    chains.set(chat, settled);
    void settled.then(() => {
      if (this.chains !== null && this.chains.get(chat) === settled) {
        this.chains.delete(chat);
        if (this.chains.size === 0) this.chains = null;
      }
    });
    return next;
  }

  /**
   * A main-API call within this connection's share (MAX_UPSTREAM_PER_CONNECTION) and its user's
   * fair turn in the pool. Checked again when it starts: a connection closed (or about to be,
   * after five refused registers) makes no more calls.
   */
  upstream<T>(call: (hold: Hold) => Promise<T>): Promise<T> {
    // Before its first register a connection is its own anonymous party ("#": never in a user id).
    const anonymous = this.user === null;
    const party = this.user ?? `#${this.id}`;
    // Let go once idle (an idle Slots is the same as a new one): idle connections keep none (~40 bytes each).
    this.slots ??= new Slots(this.ctx.config.maxUpstreamPerConnection, (idle) => {
      if (this.slots === idle) this.slots = null;
    });
    return this.slots.run((holdSlot) =>
      this.ctx.upstreamScheduler.run(party, anonymous, (holdPlace) => {
        if (this.closed || this.aborted) throw new CancelledError();
        // A body still streaming in after the answer keeps both the pool place and the connection's slot.
        return call((drained) => (holdPlace(drained), holdSlot(drained)));
      }),
    );
  }

  /** Verifies `token` for `chat` with the main API (or its cache), aborted if the connection closes. */
  verify(token: string, chat: IdKey): Promise<IdKey> {
    this.verifying++;
    return whenSettled(
      () => this.upstream((hold) => this.ctx.api.verify(token, chat, this.signal, hold)),
      () => {
        if (--this.verifying === 0 && !this.aborted) this.closing = null;
      },
    );
  }

  /**
   * After the main API refused a write with 401 or 403 (its cached verify is already dropped):
   * asks the main API again whether the registration still holds, and ends it when it does not,
   * so a user removed from a chat stops receiving it. A refusal of one operation by a member
   * (editing someone else's message) keeps the registration. If the main API cannot be reached
   * the registration is kept: the next refused write checks again.
   */
  private async recheck(reg: Registration): Promise<void> {
    try {
      const user = await this.verify(reg.token, reg.chat);
      if (user !== reg.user) this.endRegistration(reg, 'forbidden');
    } catch (err) {
      if (isAuthRefusal(err)) this.endRegistration(reg, err.code);
      else if (!(err instanceof CancelledError)) this.ctx.connectionLogLimit.log(this.ctx.log, 'warn', 'recheck-failed', { conn: this.id, chat: reg.chat, err: (err as Error).message }, 'registration re-check failed');
    }
  }

  /**
   * Counts registers and refreshes the main API refused in a row. At the fifth, every other
   * main-API call of the connection is stopped at once; its error is then followed by close 4401
   * (see `reject`). Only an acceptance the main API was asked for breaks the row (`askedMainApi`):
   * one served from the verify cache costs nothing, so it cannot buy further guesses.
   */
  noteAuthResult(refused: boolean, askedMainApi = true): void {
    if (!refused && !askedMainApi) return;
    this.authFailuresInARow = refused ? this.authFailuresInARow + 1 : 0;
    if (this.authFailuresInARow >= MAX_AUTH_FAILURES_IN_A_ROW) {
      this.aborted = true;
      this.closing?.abort();
      this.slots?.cancel();
    }
  }

  /** Leaves one chat (unregister, or the main API no longer admits it); `offline` if it was the user's last connection. */
  async removeRegistration(reg: Registration): Promise<void> {
    if (this.chats.get(reg.chat) !== reg) return;
    this.chats.delete(reg.chat);
    this.retire(reg);
    if (this.chats.size === 0) this.armRegisterTimer();
    await this.ctx.hub.leave(reg.chat, reg.user, reg, reg.onlineAnnounced);
  }

  /**
   * A registration never outlives its credentials. A JWT's registration ends (`token_expired`)
   * when its `exp` passes, unless a `refresh` replaced the token first (which calls this again).
   * An opaque token is verified with the main API again every AUTH_CACHE_TTL_MS (plus up to 10 %
   * jitter, so registrations made together do not re-verify together); a 401/403 ends the
   * registration like a refused write's re-check. AUTH_CACHE_TTL_MS=0 turns re-verifying off.
   */
  watchCredentials(reg: Registration): void {
    const { deadlines } = this.ctx;
    deadlines.clear(reg);
    if (this.closed || this.chats.get(reg.chat) !== reg) return;
    const exp = jwtExpiryMs(reg.token);
    if (exp !== null) return deadlines.set(reg, exp);
    const ttl = this.ctx.config.authCacheTtlMs;
    if (ttl === 0) return;
    // Counted from the main API's answer: a token accepted from the verify cache was last
    // verified when that entry was made, up to a TTL ago, so its re-verify is due when the entry expires.
    const verified = this.ctx.api.cachedUntil(reg.token, reg.chat) ?? Date.now() + ttl;
    deadlines.set(reg, verified + Math.random() * ttl * 0.1);
  }

  /** The deadline `watchCredentials` set for `reg` has come (ctx.deadlines: within a second of it). */
  credentialsDue(reg: Registration): void {
    if (this.closed || this.chats.get(reg.chat) !== reg) return;
    const exp = jwtExpiryMs(reg.token);
    if (exp !== null && Date.now() < exp) return this.watchCredentials(reg);
    // A refresh under way for this chat may replace the token: the old one's re-verify or expiry
    // waits until it has had its say (it re-arms the deadline when it switches) — an expiry not
    // past UPSTREAM_TIMEOUT_MS after `exp` (a refresh covering many chats verifies them a few at a
    // time, and may take longer).
    if (this.refreshing?.has(reg.chat) && (exp === null || Date.now() < exp + this.ctx.config.upstreamTimeoutMs)) return this.ctx.deadlines.set(reg, Date.now());
    if (exp === null) return void this.ctx.track(this.reverify(reg, reg.token));
    this.ctx.connectionLogLimit.log(this.ctx.log, 'info', 'token-expired', { conn: this.id, chat: reg.chat }, 'token expired; registration ended');
    this.endRegistration(reg, 'token_expired');
  }

  private async reverify(reg: Registration, token: string): Promise<void> {
    if (this.closed || this.chats.get(reg.chat) !== reg) return;
    try {
      const user = await this.verify(token, reg.chat);
      if (reg.token !== token) return; // refreshed meanwhile: the refresh re-armed it
      if (user !== reg.user) this.endRegistration(reg, 'forbidden');
      else this.watchCredentials(reg);
    } catch (err) {
      if (reg.token !== token || this.chats.get(reg.chat) !== reg) return;
      if (isAuthRefusal(err)) this.endRegistration(reg, err.code);
      else if (!(err instanceof CancelledError)) {
        this.ctx.connectionLogLimit.log(this.ctx.log, 'warn', 'reverify-failed', { conn: this.id, chat: reg.chat, err: (err as Error).message }, 'token re-verify failed; trying again');
        this.ctx.deadlines.set(reg, Date.now() + REVERIFY_RETRY_MS);
      }
    }
  }

  /** A registration leaving this connection: no credentials deadline, nothing more delivered through it. */
  private retire(reg: Registration): void {
    this.ctx.deadlines.clear(reg);
    reg.end();
  }

  /**
   * A line of this connection's life at LOG_LEVEL=debug (opened, registered, refused, ended,
   * closed): ids and outcomes only, never a token or content. At the usual levels it costs a call
   * and the caller's fields, once per connection or registration; the per-frame caller (a refused
   * request) checks `ctx.debug` itself, and so must a caller whose fields cost memory to read
   * (a socket's remoteAddress is cached on it for good).
   */
  debug(msg: string, fields?: Record<string, unknown>): void {
    if (this.ctx.debug) this.ctx.log.debug({ conn: this.id, ...fields }, msg);
  }

  /** Ends a registration the gateway has to take away, telling the client why. */
  endRegistration(reg: Registration, reason: out.UnregisterReason): void {
    if (this.chats.get(reg.chat) !== reg) return;
    reg.endedFor = reason;
    void this.ctx.track(this.removeRegistration(reg));
    this.send(out.unregistered(reg.chat, reason));
    this.debug('registration ended by the gateway', { chat: reg.chat, reason });
  }

  /** Closes 4408 unless a chat is registered within REGISTER_TIMEOUT_MS. */
  private armRegisterTimer(): void {
    if (this.closed || this.registerTimer !== null) return;
    this.registerTimer = setTimeout(() => {
      this.registerTimer = null;
      if (this.chats.size === 0) this.close(CLOSE.registerTimeout, 'register timeout');
    }, this.ctx.config.registerTimeoutMs);
    this.registerTimer.unref();
  }

  registeredOnce(): void {
    if (this.registerTimer !== null) {
      clearTimeout(this.registerTimer);
      this.registerTimer = null;
    }
  }

  /**
   * Liveness sweep: a peer that sent nothing since the previous ping — not even its pong — is
   * dropped. Counting any bytes read, not only pongs, spares every connection a 'pong' listener.
   */
  heartbeat(): void {
    if (this.closed) return;
    const read = this.socket.bytesRead;
    if (read === this.readAtPing) {
      this.ctx.connectionLogLimit.log(this.ctx.log, 'info', 'no-pong', { conn: this.id }, 'no pong; connection dropped');
      // Dropped without a close frame: the peer sees 1006, and so does the metric.
      this.ctx.metrics.closes.inc({ code: '1006' });
      this.terminate();
      return;
    }
    this.readAtPing = read;
    this.ws.ping();
  }

  /**
   * Closes with `code`. `terminate` drops the socket at once (slow consumers: the backlog is
   * freed now rather than after the peer reads it).
   */
  close(code: number, reason: string, terminate = false): void {
    if (this.closed) return;
    this.ctx.metrics.closes.inc({ code: String(code) });
    this.ws.close(code, reason);
    if (terminate) this.ws.terminate();
    else {
      // The socket is still read, so a peer's close reply ends the connection at once (a paused
      // socket would hide it, and every client would see our close only at the grace period's
      // end). What a peer sends after our close is not acted on (`closed`); a peer that keeps
      // sending — a flooder ignoring the close frame — is dropped once it sent CLOSE_READ_LIMIT
      // more, and every socket after the grace period, never ws's 30 s close timeout.
      const readAtClose = this.socket.bytesRead;
      this.socket.on('data', () => {
        if (this.socket.bytesRead - readAtClose > CLOSE_READ_LIMIT) this.ws.terminate();
      });
      setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS).unref();
    }
    this.onClosed();
  }

  terminate(): void {
    this.ws.terminate();
    this.onClosed();
  }

  /** Idempotent cleanup when the socket is gone (by either side): queued work is dropped here. */
  onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.debug('connection ended', { user: this.user, chats: this.chats.size });
    if (this.user !== null) this.ctx.userConnections.unbind(this.user);
    this.registeredOnce();
    this.aborted = true;
    this.closing?.abort();
    this.slots?.cancel();
    const regs = [...this.chats.values()];
    this.chats.clear();
    for (const reg of regs) {
      this.retire(reg);
      void this.ctx.track(this.ctx.hub.leave(reg.chat, reg.user, reg, reg.onlineAnnounced));
    }
  }
}

/**
 * A client-sent id as a log field: a valid id as sent; anything else `<invalid>` (or left out when
 * absent) — a client that puts a token where an id goes must not have it logged.
 */
function loggableId(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  return parseId(value) ?? '<invalid>';
}
