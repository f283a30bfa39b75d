/**
 * Development main API — a small, real HTTP server implementing the four calls the gateway
 * makes, plus fault knobs so the gateway's tests can exercise a misbehaving upstream.
 *
 * It is also the reference for how a *real* main API must answer the gateway:
 *
 *   verify  POST /auth/verify {"token","chat_id"}  → 200 {"user_id": <id>, ...}
 *           401 bad/expired token · 403 not a member of the chat
 *   save    POST /chat/massage <message data>        → 2xx (201 here) with the stored message
 *           401 · 422 malformed · 403 sender is not the token's user / not a member
 *           409 the message id was already saved (even if since deleted) — the gateway acks the
 *           resend as a duplicate and does NOT broadcast it again, so 409 must only ever mean
 *           "already saved".
 *   edit    PATCH  /chat/{chat_id}/messages/{id}     → 2xx · 401 · 403 not the sender · 404 · 422
 *   delete  DELETE /chat/{chat_id}/messages/{id}     → 2xx · 401 · 403 not the sender · 404
 *
 * For clients (the chat page in web/, not the gateway) it also keeps device public keys and lists
 * a chat's messages — see "Routes for clients" below; they are neither recorded nor faulted.
 *
 * Deleting a message keeps its id as a tombstone: a resend of a deleted id is 409 (never saved
 * and broadcast again), and edit/delete of it are 404 like an unknown id.
 *
 * The gateway maps upstream statuses to client error codes: 400/422 bad_request,
 * 401 unauthorized, 403 forbidden, 404 not_found, 413 too_large, 429 rate_limited and
 * 5xx / timeout / connection refused upstream_unavailable (retryable). Any other status is
 * therefore best avoided. See docs/dev-api.md.
 */
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID, webcrypto } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose';

// ---------------------------------------------------------------------------------------------
// Public types (the gateway's tests depend on these shapes)
// ---------------------------------------------------------------------------------------------

export type Op = 'verify' | 'save' | 'edit' | 'delete';

export interface RecordedRequest {
  method: string;
  /** Raw request path without the query string (still URL-encoded, as it went over the wire). */
  path: string;
  op: Op | 'other';
  /** Lower-cased header names, as Node delivers them; repeated headers are joined with ", ". */
  headers: Record<string, string | undefined>;
  /** Parsed JSON body; the raw text if it was not JSON; undefined if empty or too large. */
  body: unknown;
  /** Date.now() when the request was fully received. */
  at: number;
}

export interface Fault {
  /** Which call it applies to; undefined or 'any' = every verify/save/edit/delete call. */
  op?: Op | 'any';
  /** Wait this long before anything else. */
  delayMs?: number;
  /** HTTP status to answer with (200–599). */
  status?: number;
  /** Never answer; the socket stays open until the client gives up or close() is called. */
  hang?: boolean;
  /**
   * Response body. JSON-encoded, except a string, which is sent verbatim so that tests can
   * send malformed JSON or an HTML error page (pass '"text"' for a JSON string).
   * With no status, the answer is 200 with this body (a main API that "lies").
   */
  body?: unknown;
  /** Apply this many times, then remove the fault; undefined = forever. */
  times?: number;
}

export interface StoredMessage {
  id: string;
  chat_id: string | number;
  sender_id: string | number;
  ciphertext: string;
  saved_at: string;
  edited_at?: string;
  [field: string]: unknown;
}

/** A device's public key as published by a client (`PUT /devices/{device_id}/key`). */
export interface DeviceKey {
  device_id: string;
  user_id: string | number;
  /** Base64 of the raw (uncompressed, 65-byte) P-256 public point. */
  public_key: string;
  updated_at: string;
}

export interface DevApi {
  url: string;
  port: number;
  secret: string;
  requests: RecordedRequest[];
  /** Live (not deleted) messages by id. */
  messages: Map<string, StoredMessage>;
  /** Tombstones: ids of deleted messages. A save of one is 409; edit/delete of one is 404. */
  deleted: Set<string>;
  /** Published device public keys by device id (the chat page's end-to-end encryption). */
  devices: Map<string, DeviceKey>;
  mintToken(userId: string | number, opts?: { expiresInSec?: number; expired?: boolean }): Promise<string>;
  /** An opaque (non-JWT) token for `userId`, valid until `revokeOpaqueToken`: the gateway must re-verify it. */
  mintOpaqueToken(userId: string | number): string;
  revokeOpaqueToken(token: string): void;
  setMembers(chatId: string | number, userIds: Array<string | number> | null): void;
  addFault(f: Fault): void;
  clearFaults(): void;
  reset(): void;
  waitForRequests(n: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface DevApiOptions {
  port?: number;
  host?: string;
  secret?: string;
  /** Called once per request with {method, path, status, ms, ...}; never gets headers or tokens. */
  log?: (line: object) => void;
}

export const DEFAULT_SECRET = 'dev-secret-change-me';

/** Largest accepted request body (the gateway's own frame limit is far below this). */
export const BODY_LIMIT_BYTES = 1024 * 1024;
/** Past this we stop draining an oversized body and drop the connection. */
const DRAIN_LIMIT_BYTES = 16 * BODY_LIMIT_BYTES;
const DEFAULT_TOKEN_TTL_SEC = 3600;
const DEFAULT_WAIT_MS = 2000;
/** Longer than the usual client idle timeout, so the gateway's pool, not us, closes idle sockets. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;

const OPS: readonly Op[] = ['verify', 'save', 'edit', 'delete'];
const FAULT_KEYS = new Set(['op', 'delayMs', 'status', 'hang', 'body', 'times']);

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

type JsonObject = Record<string, unknown>;

/** What a handler wants sent. `raw` is sent verbatim instead of JSON-encoding `body`. */
interface Reply {
  status: number;
  body?: unknown;
  raw?: string;
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is string | number {
  return (typeof v === 'string' && v.length > 0) || (typeof v === 'number' && Number.isFinite(v));
}

function error(status: number, message: string): Reply {
  return { status, body: { error: message } };
}

/**
 * The JSON form of a user id: a number when `sub` is a canonical non-negative safe integer
 * ("42" → 42), else the string. "007" stays a string so String(user_id) === sub always holds.
 */
export function userIdFromSub(sub: string): string | number {
  if (/^(0|[1-9][0-9]*)$/.test(sub)) {
    const n = Number(sub);
    if (Number.isSafeInteger(n)) return n;
  }
  return sub;
}

function bearerToken(req: IncomingMessage): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m?.[1];
}

function flattenHeaders(req: IncomingMessage): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/** Validates a fault (from code or from POST /__faults) and returns a private copy. */
export function parseFault(input: unknown): Fault {
  if (!isObject(input)) throw new TypeError('fault must be an object');
  for (const key of Object.keys(input)) {
    // Reject typos such as "delay" — a silently ignored knob makes a test pass for the wrong reason.
    if (!FAULT_KEYS.has(key)) throw new TypeError(`unknown fault field "${key}"`);
  }
  const { op, delayMs, status, hang, body, times } = input;
  const fault: Fault = {};
  if (op !== undefined) {
    if (op !== 'any' && !OPS.includes(op as Op)) throw new TypeError('fault.op must be verify|save|edit|delete|any');
    fault.op = op as Op | 'any';
  }
  if (delayMs !== undefined) {
    if (typeof delayMs !== 'number' || !Number.isFinite(delayMs) || delayMs < 0) {
      throw new TypeError('fault.delayMs must be a number >= 0');
    }
    fault.delayMs = delayMs;
  }
  if (status !== undefined) {
    if (typeof status !== 'number' || !Number.isInteger(status) || status < 200 || status > 599) {
      throw new TypeError('fault.status must be an integer 200-599');
    }
    fault.status = status;
  }
  if (hang !== undefined) {
    if (typeof hang !== 'boolean') throw new TypeError('fault.hang must be a boolean');
    fault.hang = hang;
  }
  if (body !== undefined) fault.body = body;
  if (times !== undefined) {
    if (typeof times !== 'number' || !Number.isInteger(times) || times < 1) {
      throw new TypeError('fault.times must be an integer >= 1');
    }
    fault.times = times;
  }
  return fault;
}

/** The reply a status/body fault produces, or undefined when the request proceeds normally. */
function faultReply(fault: Fault): Reply | undefined {
  if (fault.status === undefined && fault.body === undefined) return undefined;
  const status = fault.status ?? 200;
  const body = fault.body === undefined ? { error: STATUS_CODES[status] ?? 'injected fault' } : fault.body;
  return typeof body === 'string' ? { status, raw: body } : { status, body };
}

function send(res: ServerResponse, reply: Reply): void {
  if (res.headersSent || res.destroyed) return;
  // 204/304 must not carry a body (Node would drop it anyway, but the length header would lie).
  if (reply.status === 204 || reply.status === 304) {
    res.writeHead(reply.status).end();
    return;
  }
  const payload = reply.raw ?? (reply.body === undefined ? '' : JSON.stringify(reply.body));
  res.writeHead(reply.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(payload),
  });
  res.end(payload);
}

// ---------------------------------------------------------------------------------------------
// Request body
// ---------------------------------------------------------------------------------------------

interface ReceivedBody {
  text: string;
  tooLarge: boolean;
  /** The client went away (or sent far too much) before the body was complete. */
  aborted: boolean;
}

/**
 * Reads the whole body. An oversized body is drained (not buffered) so the keep-alive socket
 * stays usable and the client reliably sees the 413 instead of a reset mid-upload.
 */
function readBody(req: IncomingMessage): Promise<ReceivedBody> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (aborted: boolean): void => {
      if (done) return;
      done = true;
      const tooLarge = size > BODY_LIMIT_BYTES;
      resolve({ text: tooLarge ? '' : Buffer.concat(chunks).toString('utf8'), tooLarge, aborted });
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > DRAIN_LIMIT_BYTES) {
        req.destroy();
        finish(true);
      } else if (size <= BODY_LIMIT_BYTES) {
        chunks.push(chunk);
      }
    });
    req.on('end', () => finish(false));
    req.on('error', () => finish(true));
    req.on('close', () => finish(!req.complete));
  });
}

type ParsedBody = { ok: true; value: unknown } | { ok: false };

function parseJson(text: string): ParsedBody {
  if (text.trim() === '') return { ok: true, value: undefined };
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    return { ok: false };
  }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

interface OpRoute {
  op: Op;
  /** Still URL-encoded; decoded by the handler so a bad escape becomes a 400, not a crash. */
  rawChatId?: string;
  rawMessageId?: string;
}

function matchOp(method: string, segments: string[]): OpRoute | undefined {
  const [, first, second, third, fourth, ...rest] = segments;
  if (segments.length === 3 && first === 'auth' && second === 'verify' && method === 'POST') return { op: 'verify' };
  if (segments.length === 3 && first === 'chat' && second === 'massage' && method === 'POST') return { op: 'save' };
  const isMessagePath = rest.length === 0 && first === 'chat' && third === 'messages';
  if (!isMessagePath || !second || !fourth) return undefined;
  if (method === 'PATCH') return { op: 'edit', rawChatId: second, rawMessageId: fourth };
  if (method === 'DELETE') return { op: 'delete', rawChatId: second, rawMessageId: fourth };
  return undefined;
}

/** Control-plane paths are neither recorded nor subject to faults. */
function isControlPath(path: string): boolean {
  return path === '/healthz' || path === '/dev/token' || path.startsWith('/__');
}

/**
 * Routes for clients (the chat page), not for the gateway: never recorded in `requests` (which
 * shows what the gateway sent) and never faulted. `/chats/…`, plural, is not the gateway's `/chat/…`.
 */
function isClientPath(path: string): boolean {
  return path.startsWith('/devices/') || path.startsWith('/chats/');
}

/** Device ids as the page makes them (UUIDs); also the keys of a message's `envelopes`. */
const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A base64 raw P-256 point that WebCrypto accepts as an ECDH public key. */
async function isP256PublicKey(value: unknown): Promise<boolean> {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]{86}[A-Za-z0-9+/=]{2}$/.test(value)) return false;
  const raw = Buffer.from(value, 'base64');
  if (raw.length !== 65 || raw[0] !== 4) return false;
  try {
    await webcrypto.subtle.importKey('raw', raw, { name: 'ECDH', namedCurve: 'P-256' }, true, []);
    return true;
  } catch {
    return false; // not a point on the curve
  }
}

function decodeParam(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

type AuthResult = { ok: true; sub: string } | { ok: false; reply: Reply };

interface Waiter {
  n: number;
  resolve: () => void;
}

export async function startDevApi(opts: DevApiOptions = {}): Promise<DevApi> {
  const secret = opts.secret ?? DEFAULT_SECRET;
  const key = new TextEncoder().encode(secret);
  const userLog = opts.log;
  /** A throwing log callback must not take the server down from inside a socket event. */
  const log = (line: object): void => {
    try {
      userLog?.(line);
    } catch {
      // ignored on purpose: logging is best-effort here
    }
  };

  const requests: RecordedRequest[] = [];
  const messages = new Map<string, StoredMessage>();
  /**
   * Ids of deleted messages, kept for as long as messages are (until reset(); neither is
   * bounded — this is a dev server). Without them a resend of a deleted id would be saved and
   * broadcast again.
   */
  const deleted = new Set<string>();
  const members = new Map<string, Set<string>>();
  /** Device public keys by device id, and who joined each open chat (a successful verify). */
  const devices = new Map<string, DeviceKey>();
  const participants = new Map<string, Set<string>>();
  let faults: Fault[] = [];
  const waiters = new Set<Waiter>();
  const timers = new Set<NodeJS.Timeout>();
  let closing: Promise<void> | undefined;

  // --- state helpers -----------------------------------------------------------------------

  function record(entry: RecordedRequest): void {
    requests.push(entry);
    for (const w of waiters) {
      if (requests.length >= w.n) {
        waiters.delete(w);
        w.resolve();
      }
    }
  }

  /** First matching fault wins; its `times` counts down and it disappears at 0. */
  function takeFault(op: Op): Fault | undefined {
    const index = faults.findIndex((f) => f.op === undefined || f.op === 'any' || f.op === op);
    const fault = faults[index];
    if (!fault) return undefined;
    if (fault.times !== undefined) {
      fault.times -= 1;
      if (fault.times <= 0) faults.splice(index, 1);
    }
    return fault;
  }

  /** A delay that close() cancels: the request then simply never continues. */
  function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        timers.delete(timer);
        resolve();
      }, ms);
      timers.add(timer);
    });
  }

  function setMembers(chatId: string | number, userIds: Array<string | number> | null): void {
    if (userIds === null) members.delete(String(chatId));
    else members.set(String(chatId), new Set(userIds.map(String)));
  }

  function addFault(f: Fault): void {
    faults.push(parseFault(f)); // a copy: counting `times` down must not mutate the caller's object
  }

  function clearFaults(): void {
    faults = [];
  }

  function reset(): void {
    requests.length = 0; // in place: tests may hold a reference to the array
    faults = [];
    messages.clear();
    deleted.clear();
    members.clear();
    devices.clear();
    participants.clear();
  }

  function isMember(chatId: unknown, sub: string): boolean {
    const list = members.get(String(chatId));
    return list === undefined || list.has(sub); // no list = open chat
  }

  async function mintToken(
    userId: string | number,
    tokenOpts: { expiresInSec?: number; expired?: boolean } = {},
  ): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const ttl = tokenOpts.expiresInSec ?? DEFAULT_TOKEN_TTL_SEC;
    const exp = tokenOpts.expired ? now - 60 : now + ttl;
    return new SignJWT({})
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(String(userId))
      .setIssuedAt(Math.min(now, exp - 1))
      .setExpirationTime(exp)
      // A fresh jti makes every minted token distinct, so caches keyed by token behave as in prod.
      .setJti(randomUUID())
      .sign(key);
  }

  /** Opaque tokens (the gateway cannot read an expiry from them) → their user. */
  const opaqueTokens = new Map<string, string>();
  function mintOpaqueToken(userId: string | number): string {
    const token = `opaque-${randomUUID()}`;
    opaqueTokens.set(token, String(userId));
    return token;
  }

  async function authenticate(token: string | undefined): Promise<AuthResult> {
    if (!token) return { ok: false, reply: error(401, 'missing token') };
    if (token.startsWith('opaque-')) {
      const sub = opaqueTokens.get(token);
      return sub === undefined ? { ok: false, reply: error(401, 'invalid token') } : { ok: true, sub };
    }
    try {
      const { payload } = await jwtVerify(token, key, { algorithms: ['HS256'] });
      if (typeof payload.sub !== 'string' || payload.sub === '') {
        return { ok: false, reply: error(401, 'token has no subject') };
      }
      return { ok: true, sub: payload.sub };
    } catch (err) {
      const message = err instanceof joseErrors.JWTExpired ? 'token expired' : 'invalid token';
      return { ok: false, reply: error(401, message) };
    }
  }

  // --- the four calls the gateway makes ------------------------------------------------------

  async function handleVerify(req: IncomingMessage, body: unknown): Promise<Reply> {
    const data = isObject(body) ? body : {};
    // The body token is the contract; the header is a fallback for clients that only send that.
    const token = typeof data.token === 'string' && data.token !== '' ? data.token : bearerToken(req);
    const auth = await authenticate(token);
    if (!auth.ok) return auth.reply;
    if (!isId(data.chat_id)) return error(422, 'chat_id is required');
    if (!isMember(data.chat_id, auth.sub)) return error(403, 'not a member of this chat');
    const joined = participants.get(String(data.chat_id)) ?? new Set<string>();
    participants.set(String(data.chat_id), joined.add(auth.sub)); // whose devices get envelopes
    return { status: 200, body: { user_id: userIdFromSub(auth.sub), chat_id: data.chat_id } };
  }

  async function handleSave(req: IncomingMessage, body: unknown): Promise<Reply> {
    const auth = await authenticate(bearerToken(req));
    if (!auth.ok) return auth.reply;
    if (!isObject(body)) return error(422, 'body must be a JSON object');
    if (typeof body.id !== 'string' || body.id === '') return error(422, 'id must be a non-empty string');
    if (typeof body.ciphertext !== 'string') return error(422, 'ciphertext must be a string');
    if (!isId(body.chat_id)) return error(422, 'chat_id is required');
    if (!isId(body.sender_id)) return error(422, 'sender_id is required');
    if (String(body.sender_id) !== auth.sub) return error(403, 'sender_id is not the token user');
    if (!isMember(body.chat_id, auth.sub)) return error(403, 'not a member of this chat');
    // 409 means exactly "already saved": the gateway then acks the resend without broadcasting.
    // A deleted id was saved once too, so a late resend of it must not resurrect the message.
    if (messages.has(body.id) || deleted.has(body.id)) return error(409, 'duplicate');
    const stored: StoredMessage = {
      ...body,
      id: body.id,
      chat_id: body.chat_id,
      sender_id: body.sender_id,
      ciphertext: body.ciphertext,
      saved_at: new Date().toISOString(),
    };
    messages.set(stored.id, stored);
    return { status: 201, body: stored };
  }

  /** Shared 401/404/403 checks of edit and delete; returns the message when the user may change it. */
  async function authorizeChange(
    req: IncomingMessage,
    route: OpRoute,
  ): Promise<{ ok: true; message: StoredMessage } | { ok: false; reply: Reply }> {
    const chatId = decodeParam(route.rawChatId);
    const messageId = decodeParam(route.rawMessageId);
    if (chatId === undefined || messageId === undefined) {
      return { ok: false, reply: error(400, 'malformed URL encoding in path') };
    }
    const auth = await authenticate(bearerToken(req));
    if (!auth.ok) return auth;
    // A deleted message (tombstone) is not in `messages`, so edit/delete of it are 404 too.
    const message = messages.get(messageId);
    // A message in another chat is reported as missing: the caller must not learn it exists.
    if (!message || String(message.chat_id) !== chatId) {
      return { ok: false, reply: error(404, 'message not found') };
    }
    if (String(message.sender_id) !== auth.sub) {
      return { ok: false, reply: error(403, 'only the sender may change this message') };
    }
    if (!isMember(chatId, auth.sub)) return { ok: false, reply: error(403, 'not a member of this chat') };
    return { ok: true, message };
  }

  async function handleEdit(req: IncomingMessage, route: OpRoute, body: unknown): Promise<Reply> {
    const check = await authorizeChange(req, route);
    if (!check.ok) return check.reply;
    const data = isObject(body) ? body : {};
    if (typeof data.ciphertext !== 'string') return error(422, 'ciphertext must be a string');
    const { message } = check;
    message.ciphertext = data.ciphertext;
    if ('nonce' in data) message.nonce = data.nonce;
    if ('envelopes' in data) message.envelopes = data.envelopes;
    if (data.message_type !== undefined) message.message_type = data.message_type;
    message.edited_at = typeof data.edited_at === 'string' ? data.edited_at : new Date().toISOString();
    return { status: 200, body: message };
  }

  async function handleDelete(req: IncomingMessage, route: OpRoute): Promise<Reply> {
    const check = await authorizeChange(req, route);
    if (!check.ok) return check.reply;
    messages.delete(check.message.id);
    deleted.add(check.message.id); // tombstone: the id stays taken for save (409)
    return { status: 200, body: { id: check.message.id, deleted: true } };
  }

  function handleOp(req: IncomingMessage, route: OpRoute, body: unknown): Promise<Reply> {
    switch (route.op) {
      case 'verify':
        return handleVerify(req, body);
      case 'save':
        return handleSave(req, body);
      case 'edit':
        return handleEdit(req, route, body);
      case 'delete':
        return handleDelete(req, route);
    }
  }

  // --- routes for clients: device keys and a chat's history ------------------------------------
  //
  //   PUT /devices/{device_id}/key {"public_key"}  → 200 the stored key · 401 · 403 the device is
  //       another user's · 422 not a base64 raw P-256 point · 400 bad device id
  //   GET /chats/{chat_id}/devices   → 200 {"chat_id","devices":[{device_id,user_id,public_key}]}:
  //       the devices of the chat's members (its member list, or for an open chat everyone who
  //       joined it — a successful verify — plus the caller) · 401 · 403 not a member
  //   GET /chats/{chat_id}/messages  → 200 {"chat_id","messages":[…]}: the stored (encrypted)
  //       messages of the chat in save order, deleted ones left out · 401 · 403 not a member

  async function handleClient(req: IncomingMessage, method: string, path: string, body: unknown): Promise<Reply> {
    const devicePath = /^\/devices\/([^/]+)\/key$/.exec(path);
    const chatPath = /^\/chats\/([^/]+)\/(devices|messages)$/.exec(path);
    const allowed = (devicePath && method === 'PUT') || (chatPath && method === 'GET');
    if (!allowed) return error(404, `no route for ${method} ${path}`);
    const param = decodeParam(devicePath?.[1] ?? chatPath?.[1]);
    if (param === undefined || param === '') return error(400, 'malformed URL encoding in path');
    const auth = await authenticate(bearerToken(req));
    if (!auth.ok) return auth.reply;

    if (devicePath) {
      if (!DEVICE_ID.test(param)) return error(400, 'device id must be 1-64 characters [A-Za-z0-9_-]');
      const publicKey = isObject(body) ? body.public_key : undefined;
      if (!(await isP256PublicKey(publicKey))) return error(422, 'public_key must be base64 of a raw P-256 public key (65 bytes)');
      const owner = devices.get(param);
      if (owner && String(owner.user_id) !== auth.sub) return error(403, 'this device belongs to another user');
      const device: DeviceKey = { device_id: param, user_id: userIdFromSub(auth.sub), public_key: publicKey as string, updated_at: new Date().toISOString() };
      devices.set(param, device);
      return { status: 200, body: device };
    }

    if (!isMember(param, auth.sub)) return error(403, 'not a member of this chat');
    if (chatPath?.[2] === 'messages') {
      const list = [...messages.values()].filter((m) => String(m.chat_id) === param);
      return { status: 200, body: { chat_id: param, messages: list } };
    }
    const users = new Set(members.get(param) ?? participants.get(param) ?? []).add(auth.sub);
    const list = [...devices.values()]
      .filter((d) => users.has(String(d.user_id)))
      .map(({ device_id, user_id, public_key }) => ({ device_id, user_id, public_key }));
    return { status: 200, body: { chat_id: param, devices: list } };
  }

  // --- dev conveniences and fault knobs over HTTP ---------------------------------------------

  async function handleDevToken(body: unknown): Promise<Reply> {
    const data = isObject(body) ? body : {};
    if (!isId(data.user_id)) return error(422, 'user_id (number or string) is required');
    const expiresIn = data.expires_in ?? DEFAULT_TOKEN_TTL_SEC;
    if (typeof expiresIn !== 'number' || !Number.isFinite(expiresIn) || expiresIn <= 0) {
      return error(422, 'expires_in must be a positive number of seconds');
    }
    return { status: 200, body: { token: await mintToken(data.user_id, { expiresInSec: expiresIn }) } };
  }

  function handleSetMembers(rawChatId: string, body: unknown): Reply {
    const chatId = decodeParam(rawChatId);
    if (chatId === undefined || chatId === '') return error(400, 'bad chat id in path');
    const userIds = isObject(body) ? body.user_ids : undefined;
    if (userIds === null) {
      setMembers(chatId, null);
      return { status: 200, body: { chat_id: chatId, user_ids: null } };
    }
    if (!Array.isArray(userIds) || !userIds.every(isId)) {
      return error(422, 'user_ids must be an array of ids, or null for an open chat');
    }
    setMembers(chatId, userIds);
    return { status: 200, body: { chat_id: chatId, user_ids: userIds.map(String) } };
  }

  async function handleControl(method: string, path: string, body: unknown): Promise<Reply> {
    const route = `${method} ${path}`;
    if (route === 'GET /healthz') return { status: 200, body: { ok: true } };
    if (route === 'POST /dev/token') return handleDevToken(body);
    if (route === 'POST /__faults') {
      try {
        addFault(parseFault(body));
      } catch (err) {
        return error(422, err instanceof Error ? err.message : 'bad fault');
      }
      return { status: 201, body: { faults: faults.length } };
    }
    if (route === 'GET /__faults') return { status: 200, body: faults };
    if (route === 'DELETE /__faults') {
      clearFaults();
      return { status: 200, body: { faults: 0 } };
    }
    if (route === 'GET /__requests') return { status: 200, body: requests };
    if (route === 'DELETE /__requests') {
      requests.length = 0;
      return { status: 200, body: { requests: 0 } };
    }
    if (route === 'GET /__messages') return { status: 200, body: [...messages.values()] };
    if (route === 'POST /__reset') {
      reset();
      return { status: 200, body: { ok: true } };
    }
    const membersPath = /^\/__chats\/([^/]+)\/members$/.exec(path);
    if (method === 'PUT' && membersPath?.[1] !== undefined) return handleSetMembers(membersPath[1], body);
    return error(404, `no route for ${method} ${path}`);
  }

  // --- request pipeline ----------------------------------------------------------------------

  function logWhenDone(req: IncomingMessage, res: ServerResponse, path: string, op: Op | 'other' | undefined): void {
    const started = performance.now();
    res.on('close', () => {
      const finished = res.writableFinished;
      log({
        time: new Date().toISOString(),
        method: req.method,
        path, // no query string, no headers: tokens must never reach a log
        status: finished ? res.statusCode : null,
        ms: Math.round((performance.now() - started) * 10) / 10,
        ...(op ? { op } : {}),
        ...(req.headers['x-request-id'] ? { request_id: req.headers['x-request-id'] } : {}),
        ...(finished ? {} : { aborted: true }),
      });
    });
  }

  async function handleRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const control = isControlPath(path);
    const forClient = !control && isClientPath(path);
    const route = control || forClient ? undefined : matchOp(method, path.split('/'));
    logWhenDone(req, res, path, control || forClient ? undefined : (route?.op ?? 'other'));

    const received = await readBody(req);
    if (received.aborted) return;
    const parsed = parseJson(received.text);

    if (!control && !forClient) {
      record({
        method,
        path,
        op: route?.op ?? 'other',
        headers: flattenHeaders(req),
        body: parsed.ok ? parsed.value : received.text,
        at: Date.now(),
      });
      // Faults stand in for the network and the upstream, so they act before any validation.
      const fault = route ? takeFault(route.op) : undefined;
      if (fault) {
        if (fault.delayMs) await sleep(fault.delayMs);
        if (fault.hang) return; // keep the socket open; close() destroys it
        const injected = faultReply(fault);
        if (injected) return send(res, injected);
      }
    }

    if (received.tooLarge) return send(res, error(413, `body larger than ${BODY_LIMIT_BYTES} bytes`));
    if (!parsed.ok) return send(res, error(400, 'body is not valid JSON'));
    if (control) return send(res, await handleControl(method, path, parsed.value));
    if (forClient) return send(res, await handleClient(req, method, path, parsed.value));
    if (!route) return send(res, error(404, `no route for ${method} ${path}`));
    send(res, await handleOp(req, route, parsed.value));
  }

  const server: Server = createServer((req, res) => {
    handleRequest(req, res).catch((err: unknown) => {
      log({ level: 'error', msg: 'dev-api handler failed', error: err instanceof Error ? err.message : String(err) });
      send(res, error(500, 'internal error'));
    });
  });
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  // Must exceed keepAliveTimeout, or a request arriving on an idle socket can race its close.
  server.headersTimeout = KEEP_ALIVE_TIMEOUT_MS + 1000;

  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;

  const api: DevApi = {
    url: `http://${clientHost(host)}:${port}`,
    port,
    secret,
    requests,
    messages,
    deleted,
    devices,
    mintToken,
    mintOpaqueToken,
    revokeOpaqueToken: (token) => void opaqueTokens.delete(token),
    setMembers,
    addFault,
    clearFaults,
    reset,
    waitForRequests(n, timeoutMs = DEFAULT_WAIT_MS) {
      if (requests.length >= n) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const waiter: Waiter = {
          n,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`waitForRequests: wanted ${n} request(s), got ${requests.length} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(waiter);
      });
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer);
        timers.clear();
        server.close(() => resolve());
        // Hanging and keep-alive sockets would otherwise hold server.close() open indefinitely.
        server.closeAllConnections();
      });
      return closing;
    },
  };
  return api;
}

/** The address a client should use: a wildcard bind is reachable on loopback. */
function clientHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}
