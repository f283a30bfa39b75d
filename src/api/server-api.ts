import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import swagger from '@fastify/swagger';
import { Type } from '@sinclair/typebox';
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { Engine } from '../engine/types.js';
import { EngineUnavailableError } from '../engine/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/index.js';
import { MAX_DEPTH, UNFIT_NUMBER, unfitValue } from '../protocol/codec.js';
import { idKey, wireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { LogLimiter } from '../util/log-limit.js';
import { ChatParams, DisconnectAnswer, DisconnectBody, ErrorAnswer, PresenceAnswer, PublishAnswer, PublishBody, RevokeAnswer, RevokeBody, UserParams } from './schemas.js';

export const API_PREFIX = '/api/v1';
const OPENAPI_PATH = `${API_PREFIX}/openapi.json`;
/** The event is the `data` of its frame, one level down. */
const MAX_EVENT_DEPTH = MAX_DEPTH - 1;
/**
 * The operation token a publish with an `id` is appended under. Hub tokens start with `~`, so
 * the two can never name the same operation; the chat is the history's own.
 */
const publishToken = (id: string) => `api:${id}`;

export interface ServerApiOptions {
  apiKey: string;
  engine: Engine;
  metrics: Metrics;
  log: Logger;
  /** Largest request body (MAX_MESSAGE_BYTES: an event is a broadcast like a message). */
  bodyLimit: number;
  isDraining(): boolean;
  /**
   * Builds the HTTP server the API is served on, given Fastify's handler (see `serverFactory`):
   * the gateway's own listener passes everything outside /api/v1 to its plain endpoints.
   */
  serverFactory?: (handler: (req: IncomingMessage, res: ServerResponse) => void) => Server;
}

/** A failure with its HTTP status and the error code of the answer body. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: 'unauthorized' | 'unavailable' | 'bad_request',
    message: string,
  ) {
    super(message);
  }
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * The server API for the backend: revoke a member, disconnect a user, publish a system event,
 * read presence — acting on every instance through the engine. Built on Fastify with TypeBox
 * schemas, which validate each request and make the OpenAPI document.
 */
export async function createServerApi(opts: ServerApiOptions): Promise<FastifyInstance> {
  const { engine, log } = opts;
  // Constant time whatever the length: both sides are hashed first.
  const expected = digest(opts.apiKey);
  const authorized = (header: string | undefined) =>
    header !== undefined && header.startsWith('Bearer ') && timingSafeEqual(digest(header.slice('Bearer '.length)), expected);
  const UNAUTHORIZED = 'missing or wrong API key (Authorization: Bearer <API_KEY>)';
  // Refused keys are logged (someone may be guessing), at most one line per 10 s, with how many
  // were left out; never the key sent.
  const refusals = new LogLimiter();
  const refuse = (req: { ip: string; method: string }) =>
    refusals.log(log, 'warn', 'unauthorized', { ip: req.ip, method: req.method }, 'server API: missing or wrong API key');

  const app = Fastify({
    logger: false,
    bodyLimit: opts.bodyLimit,
    // A path the router cannot take (`%ZZ`, a parameter over 100 characters) fails before any
    // hook runs: without the key it is still 401, as everywhere; with it, 400 in the API's own
    // error shape — without echoing the path back. No onResponse hook runs for it either, so it
    // is counted here, under route "unknown" like any request that matched no route.
    frameworkErrors: (_err, req, reply) => {
      const r = reply as FastifyReply;
      const status = authorized(req.headers.authorization) ? 400 : 401;
      opts.metrics.apiRequests.inc({ route: 'unknown', status: String(status) });
      if (status === 401) {
        refuse(req);
        return void r.code(401).send({ error: 'unauthorized', message: UNAUTHORIZED });
      }
      void r.code(400).send({ error: 'bad_request', message: 'malformed path: a parameter that is not valid percent-encoding, or longer than 100 characters' });
    },
    // Our routes are exact; /api/v1/x/ is not /api/v1/x.
    ...(opts.serverFactory === undefined ? {} : { serverFactory: opts.serverFactory }),
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(TypeBoxValidatorCompiler);

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'message-service server API',
        version: '1',
        description: 'For the backend (the main API): acts on every gateway instance through the engine. Off unless API_KEY is set.',
      },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'Authorization: Bearer <API_KEY>' } } },
      security: [{ apiKey: [] }],
    },
    // @fastify/swagger marks every body required; the disconnect's is not (a bare POST is `{}`).
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject;
      const disconnect = document.openapiObject.paths?.[`${API_PREFIX}/users/{user_id}/disconnect`]?.post;
      if (disconnect?.requestBody !== undefined && 'required' in disconnect.requestBody) disconnect.requestBody.required = false;
      return document.openapiObject;
    },
  });

  // An empty JSON body (what many HTTP clients send with a bare POST) is no body, not a parse
  // error: the disconnect's optional body then defaults to `{}`, and a route that needs a body
  // says which field is missing. Anything else goes to Fastify's own parser (prototype-poisoning checks included).
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (body === '') return done(null, undefined);
    parseJson(req, body as string, (err, value) => {
      // Fastify's parser refuses these keys (prototype poisoning) as "not valid JSON": say why —
      // when the body is valid JSON after all (a malformed one that mentions them is just malformed).
      if (err !== null && /"(__proto__|constructor)"/.test(body as string) && isJson(body as string)) {
        return done(Object.assign(new Error('a "__proto__" key, or a "constructor" with a "prototype" key, is refused anywhere in the body'), { statusCode: 400 }), undefined);
      }
      done(err, value);
    });
  });

  app.addHook('onRequest', async (req) => {
    // Decided by the route the router matched, never by the raw URL: the router decodes the path
    // (`/%61pi/v1/…` is `/api/v1/…`), so a prefix test on `req.url` could be walked around.
    // The document is public; a path that matches no route is simply not found.
    const route = req.routeOptions.url;
    if (route === undefined || route === OPENAPI_PATH) return;
    if (!authorized(req.headers.authorization)) {
      refuse(req);
      throw new ApiError(401, 'unauthorized', UNAUTHORIZED);
    }
  });
  app.addHook('onResponse', async (req, reply) => {
    opts.metrics.apiRequests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });
  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, _req, reply) => {
    if (err instanceof ApiError) return reply.code(err.status).send({ error: err.code, message: err.message });
    if (err instanceof EngineUnavailableError) return reply.code(503).send({ error: 'unavailable', message: 'engine unavailable; retry shortly' });
    if (err.validation !== undefined || (err.statusCode !== undefined && err.statusCode < 500)) {
      const status = err.statusCode ?? 400;
      const code = status === 413 ? 'too_large' : status === 415 ? 'unsupported_media_type' : 'bad_request';
      return reply.code(status).send({ error: code, message: err.message });
    }
    log.error({ err: err.stack }, 'server API request failed');
    return reply.code(500).send({ error: 'internal', message: 'internal error' });
  });
  app.setNotFoundHandler((_req, reply) => reply.code(404).send({ error: 'not_found', message: 'no such route' }));

  const requireEngine = () => {
    if (!engine.isReady()) throw new ApiError(503, 'unavailable', 'engine unavailable; retry shortly');
  };
  /** Commands need the engine; new work is refused while draining. */
  const requireAccepting = () => {
    if (opts.isDraining()) throw new ApiError(503, 'unavailable', 'gateway is shutting down; retry on another instance');
    requireEngine();
  };
  app.addSchema(ErrorAnswer);
  const error = Type.Ref(ErrorAnswer);
  const getErrors = { 400: error, 401: error, 404: error, 500: error, 503: error };
  const errors = { ...getErrors, 413: error, 415: error };

  app.post(
    `${API_PREFIX}/chats/:chat_id/revoke`,
    {
      schema: {
        summary: "Revoke a user's membership of a chat, on every instance",
        description:
          'Every registration of the user in the chat gets `unregistered {reason: "revoked"}` and receives nothing more of the chat; others see `presence offline`; cached verifies of (user, chat) are dropped everywhere, so a new register asks the main API.',
        params: ChatParams,
        body: RevokeBody,
        response: { 200: RevokeAnswer, ...errors },
      },
    },
    async (req) => {
      requireAccepting();
      const chat = idKey(req.params.chat_id);
      const user = idKey(req.body.user_id);
      // Caches first, everywhere (instances without the chat keep verifies too), then the registrations.
      await engine.command(null, { op: 'forget', user, chat });
      const result = await engine.command(chat, { op: 'revoke', chat, user });
      log.info({ chat, user, registrations: result.connections, instances: result.instances }, 'server API: revoke');
      return { chat_id: wireId(chat), user_id: wireId(user), instances: result.instances, registrations: result.connections };
    },
  );

  app.post(
    `${API_PREFIX}/users/:user_id/disconnect`,
    {
      schema: {
        summary: 'Close every connection of a user, on every instance',
        description: 'Each connection is closed with code 4403: the client must not reconnect with the same token. Cached verifies of the user are dropped.',
        params: UserParams,
        body: DisconnectBody,
        response: { 200: DisconnectAnswer, ...errors },
      },
      // The body is optional (every field is): a bare POST is `{}`.
      preValidation: async (req) => {
        req.body ??= {};
      },
    },
    async (req) => {
      requireAccepting();
      const user = idKey(req.params.user_id);
      const result = await engine.command(null, { op: 'disconnect', user, reason: req.body.reason ?? 'disconnected by the server' });
      log.info({ user, connections: result.connections, instances: result.instances }, 'server API: disconnect');
      return { user_id: wireId(user), instances: result.instances, connections: result.connections };
    },
  );

  app.post(
    `${API_PREFIX}/chats/:chat_id/publish`,
    {
      schema: {
        summary: 'Publish a system event to a chat',
        description:
          'Broadcast to the chat as `{"type":"event","chat_id":…,"data":<event>}`, numbered in the chat stream (`seq`, `epoch`) like messages and replayed to clients that resume. With an `id`, a resend of a publish already made (even one answered 503 after a timeout) publishes nothing and is answered with its position (`duplicate: true`).',
        params: ChatParams,
        body: PublishBody,
        response: { 200: PublishAnswer, ...errors },
      },
    },
    async (req) => {
      // An event is broadcast and replayed like a message: its frame (one level more) is bounded
      // in depth, and its numbers checked, like a client's.
      const unfit = unfitValue(req.body.event, MAX_EVENT_DEPTH);
      if (unfit === 'deep') throw new ApiError(400, 'bad_request', `body/event is nested deeper than ${MAX_EVENT_DEPTH} levels`);
      if (unfit === 'number') throw new ApiError(400, 'bad_request', `body/event: ${UNFIT_NUMBER}`);
      requireAccepting();
      const chat = idKey(req.params.chat_id);
      const { id } = req.body;
      // With an id, every publish is a retry to the engine: it looks for the id in the chat's
      // history first, and answers an earlier attempt's position instead of publishing again —
      // one that timed out (a stalled Redis runs it when it wakes) and was answered 503, or one
      // that is still queued on another instance's connection (whichever runs first publishes).
      const attempt = id === undefined ? undefined : { token: publishToken(id), retry: true, firstAt: Date.now() };
      const position = await engine.append(chat, out.event(chat, req.body.event), null, undefined, attempt).catch((err: unknown) => {
        throw err instanceof EngineUnavailableError ? err : new EngineUnavailableError((err as Error).message);
      });
      const duplicate = position.earlier !== undefined;
      // Delivered like any broadcast: from the engine's callback on every instance subscribed.
      log.info({ chat, seq: position.seq, epoch: position.epoch, ...(id === undefined ? {} : { id, duplicate }) }, 'server API: publish');
      return { chat_id: wireId(chat), seq: position.seq, epoch: position.epoch, duplicate };
    },
  );

  app.get(
    `${API_PREFIX}/chats/:chat_id/presence`,
    {
      schema: {
        summary: 'Users online in a chat, over every instance',
        params: ChatParams,
        response: { 200: PresenceAnswer, ...getErrors },
      },
    },
    async (req) => {
      requireEngine();
      const chat = idKey(req.params.chat_id);
      return { chat_id: wireId(chat), online: (await engine.online(chat)).map(wireId) };
    },
  );

  app.get(OPENAPI_PATH, { schema: { hide: true } }, async () => app.swagger());

  await app.ready();
  return app;
}

/** The OpenAPI document of the server API, as served at /api/v1/openapi.json (and checked in as docs/openapi.json). */
export function openApiText(app: FastifyInstance): string {
  return `${JSON.stringify(app.swagger(), null, 2)}\n`;
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}
