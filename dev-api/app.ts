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
 *           resend as a duplicate and does not broadcast it again (unless the chat's history has
 *           no broadcast of that id: then the first gateway died before broadcasting), so 409
 *           must only ever mean "already saved".
 *   edit    PATCH  /chat/{chat_id}/messages/{id}     → 2xx · 401 · 403 not the sender · 404 · 422
 *   delete  DELETE /chat/{chat_id}/messages/{id}     → 2xx · 401 · 403 not the sender · 404; a
 *           second delete by the one who deleted it: 404 {"deleted":true,"chat_id","deleted_by"} —
 *           the gateway acks it as a duplicate and broadcasts the delete unless the chat's history
 *           shows it was (the first answer or broadcast was lost), so say "deleted" only then.
 *
 * For clients (the chat page in web/, not the gateway) it also keeps device public keys and lists
 * a chat's messages — see "Routes for clients" below; they are neither recorded nor faulted.
 *
 * Deleting a message keeps its id as a tombstone: a resend of a deleted id is 409 (never saved
 * and broadcast again), and edit/delete of it are 404 like an unknown id (the deleter's delete
 * with the body above).
 *
 * The gateway maps upstream statuses to client error codes: 400/422 bad_request,
 * 401 unauthorized, 403 forbidden, 404 not_found, 413 too_large, 429 rate_limited and
 * 5xx / timeout / connection refused upstream_unavailable (retryable). Any other status is
 * therefore best avoided. See docs/dev-api.md.
 *
 * Built on Fastify (like the gateway's server API): one route per call, hooks that record every
 * gateway call and apply the faults before any check, a body parser that keeps non-JSON text for
 * the record. The gateway's calls check in their handlers, in the contract's order (401 before
 * 422, edit's 404/403 before 422); the dev conveniences validate with TypeBox schemas.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID, webcrypto } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type SchemaOptions, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest, type FastifySchemaCompiler } from 'fastify';
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose';
import { MISDIRECTED, isLoopbackAddress, isLoopbackHostHeader } from './loopback.js';

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
   * Answer 200 at once, then send the body one byte every this many ms, never finishing (a main
   * API that is alive but stuck: every idle timeout is met, only a bound on the whole call ends it).
   */
  trickleMs?: number;
  /** Send `103 Early Hints` first, then answer as usual (a 1xx is not the answer). */
  earlyHints?: boolean;
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

/** What a deleted message leaves: its chat and who deleted it (a repeated delete is told, see DELETE). */
export interface Tombstone {
  chat_id: string | number;
  deleted_by: string | number;
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
  /** Tombstones: deleted messages' ids, with their chat and who deleted them. A save of one is 409; edit/delete of one is 404. */
  deleted: Map<string, Tombstone>;
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
/**
 * Bodies up to this are read to the end even when over BODY_LIMIT_BYTES, so the keep-alive socket
 * stays usable and the client reliably sees the 413 instead of a reset mid-upload. Past it
 * Fastify answers 413 itself and closes the connection.
 */
const READ_LIMIT_BYTES = 16 * BODY_LIMIT_BYTES;
const DEFAULT_TOKEN_TTL_SEC = 3600;
const DEFAULT_WAIT_MS = 2000;
/** Longer than the usual client idle timeout, so the gateway's pool, not us, closes idle sockets. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;

const OPS: readonly Op[] = ['verify', 'save', 'edit', 'delete'];
const FAULT_KEYS = new Set(['op', 'delayMs', 'status', 'hang', 'trickleMs', 'earlyHints', 'body', 'times']);

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

type JsonObject = Record<string, unknown>;

/** Answered as `{"error": message}` with `status` by the error handler. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function refuse(status: number, message: string): never {
  throw new HttpError(status, message);
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is string | number {
  return (typeof v === 'string' && v.length > 0) || (typeof v === 'number' && Number.isFinite(v));
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

function bearerToken(req: FastifyRequest): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m?.[1];
}

function flattenHeaders(req: FastifyRequest): Record<string, string | undefined> {
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
  const { op, delayMs, status, hang, trickleMs, earlyHints, body, times } = input;
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
  if (trickleMs !== undefined) {
    if (typeof trickleMs !== 'number' || !Number.isFinite(trickleMs) || trickleMs < 1) throw new TypeError('fault.trickleMs must be a number >= 1');
    fault.trickleMs = trickleMs;
  }
  if (earlyHints !== undefined) {
    if (typeof earlyHints !== 'boolean') throw new TypeError('fault.earlyHints must be a boolean');
    fault.earlyHints = earlyHints;
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

/** Answers a status/body fault: `status` (default 200) with `body`, a string verbatim. */
function sendFault(reply: FastifyReply, fault: Fault): FastifyReply {
  const status = fault.status ?? 200;
  // 204/304 must not carry a body.
  if (status === 204 || status === 304) return reply.code(status).send();
  const body = fault.body === undefined ? { error: STATUS_CODES[status] ?? 'injected fault' } : fault.body;
  return reply
    .code(status)
    .type('application/json; charset=utf-8')
    .send(typeof body === 'string' ? body : JSON.stringify(body));
}

// ---------------------------------------------------------------------------------------------
// Request body and validation
// ---------------------------------------------------------------------------------------------

/** A body that is not JSON (recorded as its text) or too large (recorded as undefined), then refused. */
class UnparsedBody {
  constructor(
    readonly text: string | undefined,
    readonly refusal: HttpError,
  ) {}
}

/** Every body is read as JSON whatever its content type (curl -d says form-urlencoded). */
function parseBody(raw: Buffer): unknown {
  if (raw.length > BODY_LIMIT_BYTES) return new UnparsedBody(undefined, new HttpError(413, `body larger than ${BODY_LIMIT_BYTES} bytes`));
  const text = raw.toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return new UnparsedBody(text, new HttpError(400, 'body is not valid JSON'));
  }
}

/** TypeBox checks; a failing body is 422 with the failing schema's `errorMessage`. */
const validatorCompiler: FastifySchemaCompiler<TSchema> = ({ schema }) => {
  const check = TypeCompiler.Compile(schema);
  return (value) => {
    if (check.Check(value)) return { value };
    const failed = check.Errors(value).First();
    return { error: new HttpError(422, String(failed?.schema.errorMessage ?? failed?.message ?? 'invalid body')) };
  };
};

/** What isId accepts. */
const Id = (options: SchemaOptions = {}) => Type.Union([Type.String({ minLength: 1 }), Type.Number()], options);

const USER_ID = { errorMessage: 'user_id (number or string) is required' };
const DevTokenBody = Type.Object(
  {
    user_id: Id(USER_ID),
    // null, like no value, is the default lifetime
    expires_in: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.Null()], { errorMessage: 'expires_in must be a positive number of seconds' })),
  },
  USER_ID, // a body that is no object has no user_id either
);

const USER_IDS = { errorMessage: 'user_ids must be an array of ids, or null for an open chat' };
const MembersBody = Type.Object({ user_ids: Type.Union([Type.Array(Id()), Type.Null()], USER_IDS) }, USER_IDS);
const ChatIdParams = Type.Object({ chat_id: Type.String() });

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

declare module 'fastify' {
  interface FastifyContextConfig {
    /** dev-api: the gateway call a route answers, recorded and faulted as such. */
    op?: Op;
  }
}

/** Raw request path without the query string (still URL-encoded). */
function pathOf(req: { url?: string }): string {
  return (req.url ?? '/').split('?')[0] ?? '/';
}

/**
 * Control paths (`/__*`, `/healthz`, `/dev/token`) and the clients' routes (`/devices/…`, `/chats/…`,
 * plural — not the gateway's `/chat/…`) are neither recorded nor faulted: `requests` shows what the
 * gateway sent. Every other request is, as its route's op or `other`.
 */
function isGatewayPath(path: string): boolean {
  const control = path === '/healthz' || path === '/dev/token' || path.startsWith('/__');
  return !control && !path.startsWith('/devices/') && !path.startsWith('/chats/');
}

/** The op of a gateway route (set in its config); `other` for any other path the gateway may call. */
function opOf(req: FastifyRequest): Op | 'other' | undefined {
  if (!isGatewayPath(pathOf(req))) return undefined;
  return req.routeOptions.config.op ?? 'other';
}

/** `(.+)`: an empty segment is no id, so `/chat//messages/x` is no route (404). */
const MESSAGE_PATH = '/chat/:chat_id(.+)/messages/:message_id(.+)';
type MessageParams = { Params: { chat_id: string; message_id: string } };
type ChatParams = { Params: { chat_id: string } };

/** Device ids as the page makes them (UUIDs); also the keys of a message's `envelopes`. */
const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Devices kept per user. Every device of a chat costs ~141 bytes in each message's envelopes, and
 * the gateway's frame limit (64 KiB) allows ~460: without a bound one member publishing hundreds of
 * devices would stop everyone in the chat from sending. A user's next device evicts its least
 * recently published one (a login publishes again), rather than being refused: a refusal would
 * lock out for good a user who cleared ten browsers, and eviction only ever costs that user's own
 * stale devices (docs/dev-api.md). The chat page keeps at most as many per user (web/model.ts).
 */
export const MAX_DEVICES_PER_USER = 10;

/** The most messages `GET /chats/{id}/messages` answers (the newest; `more` says there are older). */
export const HISTORY_LIMIT = 1000;

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

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

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
  const deleted = new Map<string, Tombstone>();
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

  /** The token's user (its `sub`); 401 when the token is missing, invalid or expired. */
  async function authenticate(token: string | undefined): Promise<string> {
    if (!token) refuse(401, 'missing token');
    if (token.startsWith('opaque-')) return opaqueTokens.get(token) ?? refuse(401, 'invalid token');
    let sub: unknown;
    try {
      ({ sub } = (await jwtVerify(token, key, { algorithms: ['HS256'] })).payload);
    } catch (err) {
      refuse(401, err instanceof joseErrors.JWTExpired ? 'token expired' : 'invalid token');
    }
    if (typeof sub !== 'string' || sub === '') refuse(401, 'token has no subject');
    return sub;
  }

  // --- the server: body parser, hooks, errors -------------------------------------------------

  const app = Fastify({
    logger: false,
    bodyLimit: READ_LIMIT_BYTES,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    // close() destroys every connection, hanging ones included, so shutting down never blocks.
    forceCloseConnections: true,
    // Only the routes below: HEAD /healthz is no route, as OPTIONS is.
    exposeHeadRoutes: false,
    // A 64-character id URL-encodes to 192 (chat ids may hold ':'); the header limit bounds the URL anyway.
    routerOptions: { maxParamLength: 16 * 1024 },
    // A malformed %-escape fails the whole path before routing (not recorded; the gateway always encodes ids).
    frameworkErrors: (err, req, reply: FastifyReply) => {
      logWhenDone(req.raw, reply.raw, pathOf(req), isGatewayPath(pathOf(req)) ? 'other' : undefined);
      void reply.code(400).send({ error: err.code === 'FST_ERR_BAD_URL' ? 'malformed URL encoding in path' : err.message });
    },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  // Must exceed keepAliveTimeout, or a request arriving on an idle socket can race its close.
  app.server.headersTimeout = KEEP_ALIVE_TIMEOUT_MS + 1000;

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, async (_req: FastifyRequest, raw: Buffer) => parseBody(raw));

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

  app.addHook('onRequest', async (req, reply) => logWhenDone(req.raw, reply.raw, pathOf(req), opOf(req)));
  // DNS rebinding (dev-api/loopback.ts): bound to a loopback address, the server answers only
  // requests addressed to a loopback name; a web page under a rebound name gets 421 (neither
  // recorded nor faulted). Bound elsewhere (docker compose: HOST=0.0.0.0, the gateway calls
  // http://dev-api:8000) there is no check: other machines reach it under names of their own.
  const host = opts.host ?? '127.0.0.1';
  if (isLoopbackAddress(host)) {
    app.addHook('onRequest', async (req, reply) => {
      if (!isLoopbackHostHeader(req.headers.host)) return reply.code(MISDIRECTED.status).send({ error: MISDIRECTED.error });
    });
  }
  // The control routes are for tests and curl, never for a browser: a request with an Origin
  // header is one, and any web page the developer has open could otherwise reset the store or
  // inject faults with a simple cross-site POST (bodies are read as JSON whatever their type).
  app.addHook('onRequest', async (req, reply) => {
    // By the route the router matched: it decodes the path (`/%5F%5Freset` is `/__reset`).
    if (req.routeOptions.url?.startsWith('/__') === true && req.headers.origin !== undefined) {
      return reply.code(403).send({ error: 'control routes do not answer browsers (a request with an Origin header)' });
    }
  });

  // Runs once the body is read, for every route and for unknown ones.
  app.addHook('preValidation', async (req, reply) => {
    const op = opOf(req);
    const unparsed = req.body instanceof UnparsedBody ? req.body : undefined;
    if (op !== undefined) {
      const body = unparsed ? unparsed.text : req.body;
      record({ method: req.method, path: pathOf(req), op, headers: flattenHeaders(req), body, at: Date.now() });
      // Faults stand in for the network and the upstream, so they act before any validation.
      const fault = op === 'other' ? undefined : takeFault(op);
      if (fault) {
        if (fault.earlyHints) reply.raw.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
        if (fault.delayMs) await sleep(fault.delayMs);
        if (fault.hang) await new Promise(() => {}); // never answers; close() destroys the socket
        if (fault.trickleMs !== undefined) return trickle(reply, fault.trickleMs, fault.status ?? 200);
        if (fault.status !== undefined || fault.body !== undefined) return sendFault(reply, fault);
      }
    }
    if (unparsed) throw unparsed.refusal;
  });

  app.setNotFoundHandler(async (req) => refuse(404, `no route for ${req.method} ${pathOf(req)}`));

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (err instanceof HttpError) return reply.code(err.status).send({ error: err.message });
    // Fastify's own refusals, e.g. 413 past READ_LIMIT_BYTES, 415 for a malformed Content-Type.
    if (err.statusCode !== undefined && err.statusCode < 500) return reply.code(err.statusCode).send({ error: err.message });
    log({ level: 'error', msg: 'dev-api handler failed', error: err instanceof Error ? err.message : String(err) });
    return reply.code(500).send({ error: 'internal error' });
  });

  /** Headers now, then one body byte per `everyMs`, until the client goes away (or close() destroys the socket). */
  async function trickle(reply: FastifyReply, everyMs: number, status: number): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(status, { 'content-type': 'application/json' });
    res.write('{');
    const timer = setInterval(() => res.write(' '), everyMs);
    res.once('close', () => clearInterval(timer));
  }

  // --- the four calls the gateway makes ------------------------------------------------------

  app.post('/auth/verify', { config: { op: 'verify' } }, async (req) => {
    const data = isObject(req.body) ? req.body : {};
    // The body token is the contract; the header is a fallback for clients that only send that.
    const sub = await authenticate(typeof data.token === 'string' && data.token !== '' ? data.token : bearerToken(req));
    if (!isId(data.chat_id)) refuse(422, 'chat_id is required');
    if (!isMember(data.chat_id, sub)) refuse(403, 'not a member of this chat');
    const joined = participants.get(String(data.chat_id)) ?? new Set<string>();
    participants.set(String(data.chat_id), joined.add(sub)); // whose devices get envelopes
    return { user_id: userIdFromSub(sub), chat_id: data.chat_id };
  });

  app.post('/chat/massage', { config: { op: 'save' } }, async (req, reply) => {
    const sub = await authenticate(bearerToken(req));
    const body = req.body;
    if (!isObject(body)) refuse(422, 'body must be a JSON object');
    if (typeof body.id !== 'string' || body.id === '') refuse(422, 'id must be a non-empty string');
    if (typeof body.ciphertext !== 'string') refuse(422, 'ciphertext must be a string');
    if (!isId(body.chat_id)) refuse(422, 'chat_id is required');
    if (!isId(body.sender_id)) refuse(422, 'sender_id is required');
    if (String(body.sender_id) !== sub) refuse(403, 'sender_id is not the token user');
    if (!isMember(body.chat_id, sub)) refuse(403, 'not a member of this chat');
    // 409 means exactly "already saved": the gateway then acks the resend as a duplicate. The
    // body says whose it is, where, and whether it was deleted since: the gateway broadcasts a
    // resend in place of a lost broadcast only for the same sender and chat, never a deleted one.
    const existing = messages.get(body.id);
    if (existing !== undefined) return reply.code(409).send({ error: 'duplicate', sender_id: existing.sender_id, chat_id: existing.chat_id, deleted: false });
    if (deleted.has(body.id)) return reply.code(409).send({ error: 'duplicate', deleted: true });
    // A new message has not been edited: a sender's own edited_at would show it as edited in
    // the history (only an edit sets it). Every other field is stored as received.
    const { edited_at: _notEdited, ...fields } = body;
    const stored: StoredMessage = {
      ...fields,
      id: body.id,
      chat_id: body.chat_id,
      sender_id: body.sender_id,
      ciphertext: body.ciphertext,
      saved_at: new Date().toISOString(),
    };
    messages.set(stored.id, stored);
    return reply.code(201).send(stored);
  });

  /** Shared 401/404/403 checks of edit and delete; returns the message when the user may change it. */
  async function authorizeChange(req: FastifyRequest<MessageParams>): Promise<StoredMessage> {
    const sub = await authenticate(bearerToken(req));
    const { chat_id: chatId, message_id: messageId } = req.params; // URL-decoded by the router
    // A deleted message (tombstone) is not in `messages`, so edit/delete of it are 404 too.
    const message = messages.get(messageId);
    // A message in another chat is reported as missing: the caller must not learn it exists.
    if (!message || String(message.chat_id) !== chatId) refuse(404, 'message not found');
    if (String(message.sender_id) !== sub) refuse(403, 'only the sender may change this message');
    if (!isMember(chatId, sub)) refuse(403, 'not a member of this chat');
    return message;
  }

  app.patch<MessageParams>(MESSAGE_PATH, { config: { op: 'edit' } }, async (req) => {
    const message = await authorizeChange(req);
    const data = isObject(req.body) ? req.body : {};
    if (typeof data.ciphertext !== 'string') refuse(422, 'ciphertext must be a string');
    message.ciphertext = data.ciphertext;
    if ('nonce' in data) message.nonce = data.nonce;
    if ('envelopes' in data) message.envelopes = data.envelopes;
    if (data.message_type !== undefined) message.message_type = data.message_type;
    message.edited_at = typeof data.edited_at === 'string' ? data.edited_at : new Date().toISOString();
    return message;
  });

  app.delete<MessageParams>(MESSAGE_PATH, { config: { op: 'delete' } }, async (req, reply) => {
    // Deleted already, by this caller: the gateway's resend after a lost answer. The body says
    // so (only to the deleter, in its chat), and the gateway broadcasts it if nobody heard it.
    const deletedByCaller = async (): Promise<Tombstone | undefined> => {
      const tomb = deleted.get(req.params.message_id);
      if (tomb === undefined || String(tomb.chat_id) !== req.params.chat_id) return undefined;
      const sub = await authenticate(bearerToken(req));
      return String(tomb.deleted_by) === sub && isMember(req.params.chat_id, sub) ? tomb : undefined;
    };
    const said = (tomb: Tombstone) => reply.code(404).send({ error: 'deleted', deleted: true, chat_id: tomb.chat_id, deleted_by: tomb.deleted_by });
    const before = await deletedByCaller();
    if (before !== undefined) return said(before);
    let message: StoredMessage;
    try {
      message = await authorizeChange(req);
    } catch (err) {
      // Two deletes at once: the other one deleted it while this one authenticated (as a
      // database's transaction would tell, this one is answered "deleted", not "not found").
      const meanwhile = await deletedByCaller();
      if (meanwhile !== undefined) return said(meanwhile);
      throw err;
    }
    messages.delete(message.id);
    deleted.set(message.id, { chat_id: message.chat_id, deleted_by: message.sender_id }); // tombstone: the id stays taken for save (409)
    return { id: message.id, deleted: true };
  });

  // --- routes for clients: device keys and a chat's history ------------------------------------
  //
  //   PUT /devices/{device_id}/key {"public_key"}  → 200 the stored key · 401 · 403 the device is
  //       another user's · 422 not a base64 raw P-256 point · 400 bad device id
  //   GET /chats/{chat_id}/devices   → 200 {"chat_id","devices":[{device_id,user_id,public_key}]}:
  //       the devices of the chat's members (its member list, or for an open chat everyone who
  //       joined it — a successful verify — plus the caller) · 401 · 403 not a member
  //   GET /chats/{chat_id}/messages[?limit=N]  → 200 {"chat_id","messages":[…],"more"}: the
  //       newest N (default and at most HISTORY_LIMIT) stored (encrypted) messages of the chat in
  //       save order, deleted ones left out; more: it has older ones · 401 · 403 not a member ·
  //       400 bad limit

  app.put<{ Params: { device_id: string } }>('/devices/:device_id(.+)/key', async (req) => {
    const sub = await authenticate(bearerToken(req));
    const deviceId = req.params.device_id;
    if (!DEVICE_ID.test(deviceId)) refuse(400, 'device id must be 1-64 characters [A-Za-z0-9_-]');
    const publicKey = isObject(req.body) ? req.body.public_key : undefined;
    if (!(await isP256PublicKey(publicKey))) refuse(422, 'public_key must be base64 of a raw P-256 public key (65 bytes)');
    const owner = devices.get(deviceId);
    if (owner && String(owner.user_id) !== sub) refuse(403, 'this device belongs to another user');
    const device: DeviceKey = { device_id: deviceId, user_id: userIdFromSub(sub), public_key: publicKey as string, updated_at: new Date().toISOString() };
    // Map order is publish order: a device published again moves to the end, and the user's
    // devices past MAX_DEVICES_PER_USER go from the front (the least recently published).
    devices.delete(deviceId);
    devices.set(deviceId, device);
    const own = [...devices.values()].filter((d) => String(d.user_id) === sub);
    for (const stale of own.slice(0, Math.max(0, own.length - MAX_DEVICES_PER_USER))) devices.delete(stale.device_id);
    return device;
  });

  /** The caller of a chat route, who must be a member of the chat. */
  async function chatMember(req: FastifyRequest<ChatParams>): Promise<string> {
    const sub = await authenticate(bearerToken(req));
    if (!isMember(req.params.chat_id, sub)) refuse(403, 'not a member of this chat');
    return sub;
  }

  app.get<ChatParams>('/chats/:chat_id(.+)/devices', async (req) => {
    const chatId = req.params.chat_id;
    const users = new Set(members.get(chatId) ?? participants.get(chatId) ?? []).add(await chatMember(req));
    const list = [...devices.values()]
      .filter((d) => users.has(String(d.user_id)))
      .map(({ device_id, user_id, public_key }) => ({ device_id, user_id, public_key }));
    return { chat_id: chatId, devices: list };
  });

  // Pages back with `before` (the oldest id of the page before): a client that missed more than
  // one page — a gap after a long time offline — fills all of it, not only the newest page.
  app.get<ChatParams & { Querystring: { limit?: string; before?: string } }>('/chats/:chat_id(.+)/messages', async (req) => {
    await chatMember(req);
    const raw = req.query.limit;
    const limit = raw === undefined ? HISTORY_LIMIT : /^[1-9][0-9]{0,5}$/.test(raw) && Number(raw) <= HISTORY_LIMIT ? Number(raw) : refuse(400, `limit must be an integer 1-${HISTORY_LIMIT}`);
    const chatId = req.params.chat_id;
    const all = [...messages.values()].filter((m) => String(m.chat_id) === chatId);
    let end = all.length;
    if (req.query.before !== undefined) {
      end = all.findIndex((m) => m.id === req.query.before);
      if (end < 0) refuse(404, 'before: no such message in this chat (deleted since? start again from the newest)');
    }
    const start = Math.max(0, end - limit);
    return { chat_id: chatId, messages: all.slice(start, end), more: start > 0 };
  });

  // --- dev conveniences and fault knobs over HTTP ---------------------------------------------

  app.get('/healthz', async () => ({ ok: true }));
  app.post('/dev/token', { schema: { body: DevTokenBody } }, async (req) => ({
    token: await mintToken(req.body.user_id, { expiresInSec: req.body.expires_in ?? DEFAULT_TOKEN_TTL_SEC }),
  }));
  app.post('/__faults', async (req, reply) => {
    try {
      addFault(req.body as Fault); // validated by parseFault
    } catch (err) {
      refuse(422, err instanceof Error ? err.message : 'bad fault');
    }
    return reply.code(201).send({ faults: faults.length });
  });
  app.get('/__faults', async () => faults);
  app.delete('/__faults', async () => {
    clearFaults();
    return { faults: 0 };
  });
  app.get('/__requests', async () => requests);
  app.delete('/__requests', async () => {
    requests.length = 0;
    return { requests: 0 };
  });
  app.get('/__messages', async () => [...messages.values()]);
  app.post('/__reset', async () => {
    reset();
    return { ok: true };
  });
  app.put('/__chats/:chat_id(.+)/members', { schema: { params: ChatIdParams, body: MembersBody } }, async (req) => {
    const chatId = req.params.chat_id;
    const userIds = req.body.user_ids;
    setMembers(chatId, userIds);
    return { chat_id: chatId, user_ids: userIds === null ? null : userIds.map(String) };
  });

  await app.listen({ port: opts.port ?? 0, host });
  const port = (app.server.address() as AddressInfo).port;

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
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      closing ??= app.close();
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
