import { randomUUID } from 'node:crypto';
import { Pool, type Dispatcher } from 'undici';
import type { Config } from '../config/index.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/index.js';
import { CancelledError, RequestError } from '../protocol/errors.js';
import { parseId, wireId, type IdKey } from '../protocol/ids.js';
import { errorCodeForStatus } from './status.js';
import { VerifyCache } from './verify-cache.js';
import { LogLimiter } from '../util/log-limit.js';
import type { Hold } from './scheduler.js';

export type UpstreamOp = 'verify' | 'save' | 'edit' | 'delete';

/**
 * The only code that talks to the main API. Every failure is a `RequestError`, or a
 * `CancelledError` when `signal` (the asking connection closing) aborted the call. A 401 or 403
 * from any call for a chat also forgets the cached verify of (token, chat).
 */
export interface MainApi {
  /** The verified user of `token` in `chat`. `hold`: given the end of a body still streaming in after the answer (a refusal is taken at its status line). */
  verify(token: string, chat: IdKey, signal?: AbortSignal, hold?: Hold): Promise<IdKey>;
  /** Whether a verify of (token, chat) would be answered from the cache, without asking the main API. */
  isCached(token: string, chat: IdKey): boolean;
  /** When the cached verify of (token, chat) expires (ms since the epoch): a TTL after the main API's answer. undefined when none is cached. */
  cachedUntil(token: string, chat: IdKey): number | undefined;
  /**
   * `duplicate` when the main API answered 409: already saved by an earlier send (a 409 whose
   * body names another chat or sender is `bad_request`: the id is another message's). `ownSaved`:
   * the 409's body says the saved message is `sender`'s, in `chat`, and not deleted — the only
   * case in which a resend may stand in for a broadcast that never happened (features/message.ts).
   * `message` is the body's JSON, serialized once by the caller (it broadcasts the same bytes).
   */
  save(token: string, chat: IdKey, sender: IdKey, message: string, hold?: Hold): Promise<{ duplicate: boolean; ownSaved: boolean }>;
  edit(token: string, chat: IdKey, messageId: string, body: object, hold?: Hold): Promise<void>;
  /**
   * `alreadyDeleted`: the main API answered 404 with a body saying the message is deleted, in
   * `chat`, by `user` — this delete's earlier send was carried out, and its answer or broadcast
   * may have been lost (features/delete-message.ts). Any other 404 is `not_found`.
   */
  remove(token: string, chat: IdKey, user: IdKey, messageId: string, hold?: Hold): Promise<{ alreadyDeleted: boolean }>;
  /** Forgets cached verifies of `user` (in `chat`, or everywhere when null): the next verify asks the main API. */
  forget(user: IdKey, chat: IdKey | null): void;
  /** The server API disconnected `user`: forgets its cached verifies, and remembers when (`disconnectedSince`). */
  disconnected(user: IdKey): void;
  /** Whether `disconnected(user)` came after `revision` was taken: a register under way must not bind a connection to it. */
  disconnectedSince(user: IdKey, revision: number): boolean;
  /** A mark to pass to `forgottenSince`: taken before a verify whose answer may go stale. */
  revision(): number;
  /** Whether `forget` covered (user, chat) after `revision` was taken: an answer read before it is stale. */
  forgottenSince(user: IdKey, chat: IdKey, revision: number): boolean;
  close(): Promise<void>;
}

/** The largest verify answer read; a longer one fails the call. */
const MAX_ANSWER_BYTES = 64 * 1024;

class AnswerTooLarge extends Error {
  constructor() {
    super(`main API answered with more than ${MAX_ANSWER_BYTES} bytes`);
  }
}

/** A body nobody reads, past this size, is not drained: the connection is dropped instead. */
class UnreadBodyTooLarge extends Error {
  constructor() {
    super(`main API sent more than ${MAX_ANSWER_BYTES} bytes of a body the gateway does not read`);
  }
}

/** A call that outlived UPSTREAM_TIMEOUT_MS as a whole (see `CallDeadlines`). */
class CallTimeout extends Error {
  override readonly name = 'TimeoutError';
  constructor(ms: number) {
    super(`main API call took longer than ${ms} ms`);
  }
}

const SWEEP_MS = (timeoutMs: number) => Math.min(250, Math.max(20, Math.floor(timeoutMs / 10)));

/** A call in flight as the deadline sweep sees it. */
interface Deadline {
  due: number;
  /** Set by the sweep: the call is aborted as soon as it can be. */
  expired: CallTimeout | null;
  controller: Dispatcher.DispatchController | null;
}

/**
 * UPSTREAM_TIMEOUT_MS bounds a whole call, not only each phase: undici's headers and body
 * timeouts measure idle time, so a main API trickling one byte a second held a save — and a
 * drain waiting for it — forever. One coarse sweep (a tenth of the timeout, between 20 and
 * 250 ms: a call ends at most 250 ms past its due time) aborts calls past their due time;
 * calls start in time order, so it stops at the first that is not due. No timer per call: the
 * interval runs only while calls are in flight, and stops itself.
 */
class CallDeadlines {
  private readonly calls = new Set<Deadline>();
  private sweep: NodeJS.Timeout | null = null;

  constructor(private readonly timeoutMs: number) {}

  start(): Deadline {
    const deadline: Deadline = { due: performance.now() + this.timeoutMs, expired: null, controller: null };
    this.calls.add(deadline);
    this.sweep ??= setInterval(() => this.expire(), SWEEP_MS(this.timeoutMs)).unref();
    return deadline;
  }

  done(deadline: Deadline): void {
    this.calls.delete(deadline);
  }

  private expire(): void {
    const now = performance.now();
    for (const deadline of this.calls) {
      if (deadline.due > now) return;
      this.calls.delete(deadline);
      deadline.expired = new CallTimeout(this.timeoutMs);
      deadline.controller?.abort(deadline.expired);
    }
    if (this.sweep !== null) clearInterval(this.sweep);
    this.sweep = null;
  }
}

interface Answer {
  status: number;
  body: string;
}

export function createMainApi(config: Config, log: Logger, metrics: Metrics): MainApi {
  const pool = new Pool(config.authHost, {
    connections: config.upstreamConnections,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    headersTimeout: config.upstreamTimeoutMs,
    bodyTimeout: config.upstreamTimeoutMs,
    connectTimeout: config.upstreamTimeoutMs,
  });
  const cache = new VerifyCache(config.authCacheTtlMs);
  const deadlines = new CallDeadlines(config.upstreamTimeoutMs);
  // A main API that is down fails every call: one line per call and outcome every 10 s, not one per frame.
  const logLimit = new LogLimiter();
  // A save's 409 or a delete's 404 may echo the stored message: read up to twice the largest one
  // (its JSON escaping grows it) before taking the answer as saying nothing.
  const maxWriteAnswerBytes = Math.max(MAX_ANSWER_BYTES, 2 * config.maxMessageBytes);

  /**
   * `body`: an object to send as JSON, or JSON already serialized. `hold`: given the end of a body
   * still streaming in after the answer (see `exchange`), so the pool place stays taken until then.
   */
  async function call(op: UpstreamOp, method: 'POST' | 'PATCH' | 'DELETE', path: string, token: string, body?: object | string, cancel?: AbortSignal, hold?: Hold): Promise<Answer> {
    const requestId = randomUUID();
    const started = performance.now();
    let outcome = 'error';
    try {
      const headers: Record<string, string> = { authorization: `Bearer ${token}`, 'x-request-id': requestId, accept: 'application/json' };
      if (body !== undefined) headers['content-type'] = 'application/json';
      const payload = body === undefined ? null : typeof body === 'string' ? body : JSON.stringify(body);
      // Only a verify's answer body is read (a 2xx: a refusal or an outage is its status, whatever
      // page a proxy sends with it), a save's 409 (what it says was saved) and a delete's 404
      // (whether it says "deleted").
      const readBody = op === 'verify' ? ok : op === 'save' ? (status: number) => status === 409 : op === 'delete' ? (status: number) => status === 404 : () => false;
      const answer = await exchange({ method, path, headers, body: payload }, readBody, op === 'verify' ? MAX_ANSWER_BYTES : maxWriteAnswerBytes, op === 'verify', cancel, hold);
      outcome = String(answer.status);
      if (answer.status >= 500) logLimit.log(log, 'warn', `${op} ${answer.status}`, { op, status: answer.status, requestId }, 'main API error');
      return answer;
    } catch (err) {
      if (cancel?.aborted) {
        outcome = 'cancelled';
        throw new CancelledError();
      }
      if (err instanceof AnswerTooLarge) {
        outcome = 'too_large';
        logLimit.log(log, 'error', `${op} too large`, { op, requestId }, err.message);
        throw new RequestError('internal', err.message);
      }
      outcome = isTimeout(err) ? 'timeout' : 'unreachable';
      const what = outcome === 'timeout' ? 'main API timed out' : 'main API unreachable';
      logLimit.log(log, 'warn', `${op} ${outcome}`, { op, requestId, outcome, err: (err as Error).message }, what);
      throw new RequestError('upstream_unavailable', what);
    } finally {
      metrics.upstreamLatency.observe({ op, outcome }, (performance.now() - started) / 1000);
    }
  }

  /**
   * One request on the pool through undici's handler interface rather than `pool.request`: no
   * response stream and no promise per body chunk (≈ 20 % of a call's CPU on the message path).
   * UPSTREAM_TIMEOUT_MS is enforced by the pool (connect, headers and body timeouts; calls never
   * wait for a pool connection: the fair scheduler runs at most that many) and, for the call as a
   * whole, by `deadlines`. No per-call timer on the hot path, only the connection's own signal
   * when it may close.
   */
  function exchange(
    request: Dispatcher.DispatchOptions,
    readBody: (status: number) => boolean,
    maxBytes: number,
    refuseOversize: boolean,
    cancel?: AbortSignal,
    hold?: Hold,
  ): Promise<Answer> {
    return new Promise<Answer>((resolve, reject) => {
      let status = 0;
      let reading = false;
      let chunks: Buffer[] | null = null;
      let size = 0;
      let controller: Dispatcher.DispatchController | null = null;
      const deadline = deadlines.start();
      const onAbort = () => controller?.abort(cancel!.reason);
      let drained: (() => void) | null = null;
      const settle = () => {
        deadlines.done(deadline);
        cancel?.removeEventListener('abort', onAbort);
        drained?.();
      };
      /** Answered before the body ended: the pool connection stays busy until it does (the fair scheduler keeps its place). */
      const answerEarly = (answer: Answer) => {
        hold?.(new Promise<void>((r) => (drained = r)));
        resolve(answer);
      };
      if (cancel !== undefined) {
        if (cancel.aborted) {
          settle();
          return reject(cancel.reason);
        }
        // Listening from the start: a call still connecting is aborted as soon as it can be.
        cancel.addEventListener('abort', onAbort, { once: true });
      }
      pool.dispatch(request, {
        onRequestStart(started) {
          controller = deadline.controller = started;
          if (cancel?.aborted === true) started.abort(cancel.reason);
          else if (deadline.expired !== null) started.abort(deadline.expired);
        },
        onResponseStart(_controller, statusCode) {
          // A 1xx (103 Early Hints) comes before the answer: it is not the answer.
          if (statusCode < 200) return;
          status = statusCode;
          reading = readBody(statusCode);
          // Where the body is not read, the status is the whole answer: a 201 whose body then
          // trickles, never ends or is cut off was still carried out, and is reported so (it
          // used to fail as unreachable, and the saved message was never broadcast). The body
          // drains behind it, within the call's deadline.
          if (!reading) answerEarly({ status, body: '' });
        },
        onResponseData(controller, chunk) {
          size += chunk.length;
          if (!reading) {
            if (size > MAX_ANSWER_BYTES) controller.abort(new UnreadBodyTooLarge());
            return;
          }
          if (size > maxBytes) {
            // A verify answered with megabytes is a lying main API: refused rather than held. A
            // save's 409 or a delete's 404 past its bound stays what its status says, read as saying nothing.
            if (refuseOversize) return controller.abort(new AnswerTooLarge());
            answerEarly({ status, body: '' });
            return controller.abort(new UnreadBodyTooLarge());
          }
          (chunks ??= []).push(chunk);
        },
        onResponseEnd() {
          settle();
          resolve({ status, body: chunks === null ? '' : Buffer.concat(chunks, size).toString('utf8') });
        },
        onResponseError(_controller, err) {
          settle();
          reject(err);
        },
      });
    });
  }

  /** Throws the client's error for a refusal; a 401/403 also forgets the cached verify of (token, chat). */
  function fail(op: UpstreamOp, status: number, token: string, chat: IdKey): never {
    if (status === 401 || status === 403) cache.delete(token, chat);
    throw new RequestError(errorCodeForStatus(status), `main API refused ${op} (${status})`);
  }

  function messagePath(chat: IdKey, messageId: string): string {
    return config.messagePath
      .replace('{chat_id}', encodeURIComponent(chat))
      .replace('{message_id}', encodeURIComponent(messageId));
  }

  return {
    isCached: (token, chat) => cache.get(token, chat) !== undefined,
    cachedUntil: (token, chat) => cache.expiresAt(token, chat),
    async verify(token, chat, signal, hold) {
      const cached = cache.get(token, chat);
      if (cached !== undefined) return cached;
      const asked = cache.revision;
      // A refusal is answered at its status line: its body, still streaming in, holds the place (`hold`).
      const { status, body } = await call('verify', 'POST', config.authVerifyPath, token, { token, chat_id: wireId(chat) }, signal, hold);
      if (!ok(status)) fail('verify', status, token, chat);
      const user = userIdFromVerify(body);
      if (user === null) {
        logLimit.log(log, 'error', 'verify no user', { op: 'verify', status }, 'main API verify answer has no usable user id');
        throw new RequestError('internal', 'main API answered verify without a usable user id');
      }
      if (!answersFor(body, chat)) {
        // A misrouted or mixed-up answer about another chat admits nobody to this one.
        logLimit.log(log, 'error', 'verify another chat', { op: 'verify', status, chat }, 'main API verify answer names another chat');
        throw new RequestError('internal', 'main API answered verify for another chat');
      }
      // An answer the server API revoked while it was on its way must not be cached.
      if (!cache.forgottenSince(user, chat, asked)) cache.set(token, chat, user);
      return user;
    },
    async save(token, chat, sender, message, hold) {
      const { status, body } = await call('save', 'POST', config.messageSavePath, token, message, undefined, hold);
      if (status === 409) {
        const saved = savedAs(body, sender, chat);
        // Taken by another message: this one was never saved, and an ack would say it was.
        if (saved === 'elsewhere') throw new RequestError('bad_request', 'message id already used, in another chat or by another sender: make ids unique across all chats');
        return { duplicate: true, ownSaved: saved === 'own' };
      }
      if (!ok(status)) fail('save', status, token, chat);
      return { duplicate: false, ownSaved: false };
    },
    async edit(token, chat, messageId, body, hold) {
      const { status } = await call('edit', 'PATCH', messagePath(chat, messageId), token, body, undefined, hold);
      if (!ok(status)) fail('edit', status, token, chat);
    },
    async remove(token, chat, user, messageId, hold) {
      const { status, body } = await call('delete', 'DELETE', messagePath(chat, messageId), token, undefined, undefined, hold);
      if (status === 404 && deletedBy(body, user, chat)) return { alreadyDeleted: true };
      if (!ok(status)) fail('delete', status, token, chat);
      return { alreadyDeleted: false };
    },
    forget: (user, chat) => cache.forgetUser(user, chat),
    disconnected: (user) => cache.disconnectUser(user),
    disconnectedSince: (user, since) => cache.disconnectedSince(user, since),
    revision: () => cache.revision,
    forgottenSince: (user, chat, since) => cache.forgottenSince(user, chat, since),
    async close() {
      // Calls are bounded (deadlines), so this is short; a pool that still will not close is cut.
      const closed = pool.close().then(() => true);
      if (!(await Promise.race([closed, new Promise<boolean>((r) => setTimeout(() => r(false), 1000).unref())]))) await pool.destroy();
    },
  };
}

const ok = (status: number) => status >= 200 && status < 300;

function isTimeout(err: unknown): boolean {
  const e = err as { name?: string; code?: string };
  return e.name === 'TimeoutError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT' || e.code === 'UND_ERR_CONNECT_TIMEOUT';
}

/**
 * What a save's 409 body (`{"sender_id", "chat_id", "deleted"?}`, as the main-API guide asks) says
 * of the message saved under the id: `elsewhere` — it names another chat or another sender, so
 * the id is another message's and this send was not saved; `own` — `sender`'s, in `chat`, still
 * there; `unknown` — anything else (no body, a deleted one, ids that cannot be read exactly): a
 * duplicate. Only `own` may stand in for a broadcast that never happened: a client must never get
 * one out of another user's id, or bring back a deleted message, by resending it.
 */
function savedAs(body: string, sender: IdKey, chat: IdKey): 'own' | 'elsewhere' | 'unknown' {
  const v = jsonObject(body);
  if (v === null) return 'unknown';
  const [savedChat, savedSender] = [parseId(v.chat_id), parseId(v.sender_id)];
  if ((savedChat !== null && savedChat !== chat) || (savedSender !== null && savedSender !== sender)) return 'elsewhere';
  // "Not deleted" only when it says so or says nothing: a "true", 1 or "1" must not bring it back.
  return savedChat === chat && savedSender === sender && (v.deleted === undefined || v.deleted === false) ? 'own' : 'unknown';
}

/**
 * Whether a delete's 404 body (`{"deleted": true, "chat_id", "deleted_by"}`, as the main-API
 * guide asks) says the message was deleted, in `chat`, by `user`. Anything else is an ordinary
 * 404: a client must never get a broadcast out of a delete it did not make.
 */
function deletedBy(body: string, user: IdKey, chat: IdKey): boolean {
  const v = jsonObject(body);
  return v !== null && v.deleted === true && parseId(v.chat_id) === chat && parseId(v.deleted_by) === user;
}

/** Whether a verify answer is about `chat`: it names no chat (most do not), or names this one. */
function answersFor(body: string, chat: IdKey): boolean {
  const named = jsonObject(body)?.chat_id;
  if (named === undefined || named === null) return true;
  // A 64-bit id echoed as a JSON number past 2^53 cannot be read exactly: not "another chat".
  if (typeof named === 'number' && !Number.isSafeInteger(named)) return Number(chat) === named;
  return parseId(named) === chat;
}

/** `user_id`, else `id`, `sub`, or `user.id`. */
export function userIdFromVerify(body: string): IdKey | null {
  const v = jsonObject(body);
  if (v === null) return null;
  const user = v.user;
  const nested = typeof user === 'object' && user !== null ? (user as Record<string, unknown>).id : undefined;
  for (const candidate of [v.user_id, v.id, v.sub, nested]) {
    if (candidate !== undefined && candidate !== null) return parseId(candidate);
  }
  return null;
}

/** A main-API answer body as a JSON object; null for anything else (empty, not JSON, not an object). */
function jsonObject(body: string): Record<string, unknown> | null {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return null;
  }
  return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : null;
}
