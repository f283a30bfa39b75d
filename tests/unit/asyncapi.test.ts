import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Parser } from '@asyncapi/parser';
import type { TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { ASYNCAPI_FILE, buildAsyncApi, inboundKey, outboundKey, renderAsyncApi, toYaml, type Json, type JsonObject } from '../../scripts/gen-asyncapi.js';
import type { RecoveryFailure } from '../../src/engine/stream.js';
import { numberFrame } from '../../src/engine/stream.js';
import { createFeatureTable } from '../../src/features/index.js';
import { ERROR_CODES, type ErrorCode } from '../../src/protocol/errors.js';
import * as out from '../../src/protocol/outbound.js';
import { ACK_OPS, OUTBOUND_SCHEMAS, PRESENCE_STATUSES, RECOVERY_FAILURES, UNREGISTER_REASONS } from '../../src/protocol/outbound-schemas.js';
import { presence } from '../support/client.js';
import { uniqueChat, useHarness } from '../support/harness.js';

// Compile time (npm run typecheck): every value the builders' parameter types allow is listed in
// the outbound schemas. A new reason, op or status in outbound.ts fails here until it is added.
type Assert<T extends true> = T;
type Covers<Listed, Code> = [Code] extends [Listed] ? true : false;
export type OutboundListsCoverTheCode = [
  Assert<Covers<(typeof UNREGISTER_REASONS)[number], out.UnregisterReason>>,
  Assert<Covers<(typeof ACK_OPS)[number], out.AckOp>>,
  Assert<Covers<(typeof RECOVERY_FAILURES)[number], RecoveryFailure>>,
  Assert<Covers<(typeof PRESENCE_STATUSES)[number], Parameters<typeof out.presence>[2]>>,
];

const INBOUND_TYPES = [...createFeatureTable().keys()];
const OUTBOUND_TYPES = Object.keys(OUTBOUND_SCHEMAS);

const checkers = new Map(Object.entries(OUTBOUND_SCHEMAS).map(([type, schema]) => [type, TypeCompiler.Compile(schema as TSchema)]));

/** Asserts that an outbound frame (bytes as sent, or already parsed) matches the schema of its type. */
function assertOutbound(frame: Buffer | Record<string, unknown>, where: string): string {
  const value = Buffer.isBuffer(frame) ? (JSON.parse(frame.toString()) as Record<string, unknown>) : frame;
  const type = String(value.type);
  const check = checkers.get(type);
  assert.ok(check, `${where}: a "${type}" frame has no schema in src/protocol/outbound-schemas.ts (OUTBOUND_SCHEMAS): ${JSON.stringify(value)}`);
  if (!check.Check(value)) {
    const errors = [...check.Errors(value)].map((e) => `${e.path || '/'}: ${e.message}`);
    assert.fail(`${where}: ${JSON.stringify(value)} does not match the "${type}" schema:\n  ${errors.join('\n  ')}`);
  }
  return type;
}

// ---- samples of every builder in src/protocol/outbound.ts ---------------------------------------

const POS = { seq: 42, epoch: 'pQ3k9f2LxA7b' };
const ZERO = { seq: 0, epoch: 'Zr8wq0cM1uTe' };
const NOW = '2024-01-01T12:00:00.000Z';

/** The saved body, built the way features/message.ts builds it (unknown fields pass through). */
const savedMessage = (chat: string, sender: string, extra: object = {}) => ({
  id: 'm1', ciphertext: 'Y2lwaGVy', nonce: 'bm9uY2U', ...extra,
  chat_id: wireIdOf(chat), sender_id: wireIdOf(sender), envelopes: { '2': 'k' }, message_type: 'text', created_at: NOW,
});
const wireIdOf = (key: string) => (/^[1-9][0-9]{0,15}$/.test(key) ? Number(key) : key);

/**
 * Each export of outbound.ts → frames it builds, covering every variant (as numbered by the
 * engine for broadcasts). A new builder must get samples here, which then need a schema.
 */
const SAMPLES: Record<string, () => Buffer[]> = {
  registered: () => [
    out.registered('123', '456', ['456', '789'], POS),
    out.registered('room:1', 'u-1', [], ZERO),
    out.registered('123', '456', ['456'], POS, { recovered: true }),
    ...RECOVERY_FAILURES.map((reason) => out.registered('123', '456', ['456'], ZERO, { recovered: false, reason })),
  ],
  unregistered: () => [out.unregistered('123'), ...UNREGISTER_REASONS.map((reason) => out.unregistered('room:1', reason as out.UnregisterReason))],
  ack: () => [...ACK_OPS.map((op) => out.ack(op, 'm1', '123', false, POS)), out.ack('message', 'm1', '123', true), out.ack('message', 'm_2', 'room:1', false)],
  broadcast: () => [
    numberFrame(out.broadcast('message', '123', savedMessage('123', '456', { custom: { nested: [1, 2] } })), POS),
    numberFrame(out.broadcast('message', 'room:1', { ...savedMessage('room:1', 'u-1'), nonce: undefined }), ZERO),
    numberFrame(out.broadcast('edit_message', '123', { id: 'm1', ciphertext: 'eA', nonce: 'bg', envelopes: {}, message_type: 'text', edited_at: NOW, sender_id: 456 }), POS),
    numberFrame(out.broadcast('edit_message', '123', { id: 'm1', ciphertext: 'eA', nonce: undefined, envelopes: {}, message_type: undefined, edited_at: NOW, sender_id: 'u-1' }), POS),
    numberFrame(out.broadcast('delete_message', '123', { id: 'm1', deleted_by: 456 }), POS),
  ],
  refreshed: () => [out.refreshed(['123', 'room:1']), out.refreshed([])],
  event: () => [numberFrame(out.event('123', { kind: 'renamed', title: 'x', nested: { a: [1] } }), POS), numberFrame(out.event('room:1', {}), ZERO)],
  presence: () => PRESENCE_STATUSES.map((status) => out.presence('123', '789', status)),
  presenceBatch: () => [out.presenceBatch('123', ['789', '790'], ['791']), out.presenceBatch('123', [], ['791', '792'])],
  typing: () => [out.typing('123', '789'), out.typing('room:1', 'u-1')],
  PONG: () => [out.PONG],
  error: () => [
    ...(Object.keys(ERROR_CODES) as ErrorCode[]).map((code) => out.error(code, 'why', { op: 'message', id: 'm1', chat: '123' })),
    out.error('bad_request', 'frame is not valid JSON'),
    out.error('unsupported_type', 'unknown type', { op: 'x'.repeat(64) }),
  ],
};

describe('asyncapi', () => {
  it('docs/asyncapi.yaml is what scripts/gen-asyncapi.ts generates now (run `npx tsx scripts/gen-asyncapi.ts`)', () => {
    assert.equal(readFileSync(ASYNCAPI_FILE, 'utf8'), renderAsyncApi());
  });

  it('parses as AsyncAPI with no errors, lists every inbound feature and outbound schema, and reads back as generated', async () => {
    const { document, diagnostics } = await new Parser().parse(readFileSync(ASYNCAPI_FILE, 'utf8'));
    const errors = diagnostics.filter((d) => d.severity === 0);
    assert.deepEqual(errors.map((d) => `${d.code} at ${d.path.join('.')}: ${d.message}`), []);
    assert.ok(document);

    const messages = new Map(document.messages().all().map((m) => [m.id(), m]));
    const operations = new Map(document.operations().all().map((o) => [o.id(), o]));
    assert.ok(INBOUND_TYPES.length >= 7 && OUTBOUND_TYPES.length >= 10);
    for (const [types, key, action] of [[INBOUND_TYPES, inboundKey, 'receive'], [OUTBOUND_TYPES, outboundKey, 'send']] as const) {
      for (const type of types) {
        const message = messages.get(key(type));
        assert.ok(message, `no message ${key(type)}`);
        assert.equal(message.name(), type);
        assert.equal((message.payload()?.json() as { properties: { type: { const: string } } }).properties.type.const, type);
        const op = operations.get(`${action}.${type}`);
        assert.ok(op, `no operation ${action}.${type}`);
        assert.equal(op.action(), action);
        assert.deepEqual(op.messages().all().map((m) => m.id()), [key(type)]);
      }
    }
    assert.equal(messages.size, INBOUND_TYPES.length + OUTBOUND_TYPES.length);

    // The YAML reads back as exactly the generated document (the parser inlines $refs and adds x-parser-* keys).
    const doc = buildAsyncApi();
    assert.deepEqual(withoutParserKeys(document.meta().asyncapi.parsed as unknown as Json), resolveRefs(doc, doc));
  });

  it('the YAML emitter round-trips awkward values', async () => {
    const samples: JsonObject = {
      strings: ['', ' lead', 'trail ', "it's", '"q"', 'a: b', 'a #b', '#x', '- x', '[x]', '{x}', 'x, y', '*a', '&a', '!t', '%p', '@a', '`b', '|', '>',
        'yes', 'No', 'ON', 'off', 'y', 'n', 'true', 'False', 'null', '~', '1', '0x1F', '1e3', '.5', '-1', '12:30', '3.1.0', 'tab\there', 'line\nbreak',
        'two\n\nblank', 'ctrl\u0001', 'back\\slash', '^[\\x21-\\x7E]+$', 'unicode → é ✓', '\u2028', 'del\x7f', 'nel\x85', 'bom\ufeff', '/ws', 'a/b', '$ref'],
      numbers: [0, -1, 1.5, 9007199254740991, 1e-7],
      other: [true, false, null, [], {}, [[1, [2]], { a: [] }], [{ a: 1, b: { c: [1, 'x'] } }, { 'key with space': 1, '': 2, 'y': 3, '1': 4, "'q'": 5, 'x-y.z': 6 }]],
      multi: 'first line\nsecond: line\n\n  indented',
      endsInBreak: 'a\nb\n',
    };
    const doc: JsonObject = { asyncapi: '3.1.0', info: { title: 't', version: '1', 'x-samples': samples } };
    const { document, diagnostics } = await new Parser().parse(toYaml(doc));
    assert.deepEqual(diagnostics.filter((d) => d.severity === 0).map((d) => d.message), []);
    assert.deepEqual(withoutParserKeys((document!.meta().asyncapi.parsed as unknown as JsonObject).info as Json), doc.info);
  });

  it('frames built by src/protocol/outbound.ts match src/protocol/outbound-schemas.ts', () => {
    const exported = Object.keys(out).sort();
    const missing = exported.filter((name) => !(name in SAMPLES));
    assert.deepEqual(missing, [], `outbound.ts exports ${missing.join(', ')} without samples in tests/unit/asyncapi.test.ts (SAMPLES); add them, and a schema to OUTBOUND_SCHEMAS`);
    const covered = new Set<string>();
    for (const [name, build] of Object.entries(SAMPLES)) {
      for (const [i, frame] of build().entries()) covered.add(assertOutbound(frame, `${name} sample ${i}`));
    }
    assert.deepEqual(OUTBOUND_TYPES.filter((t) => !covered.has(t)), [], 'every outbound schema has a builder sample');
  });

  it('the outbound schemas are strict: no unknown field, no missing field, no unknown value', () => {
    const bad: Array<Record<string, unknown>> = [
      { type: 'pong', extra: 1 },
      { type: 'registered', chat_id: 1, user_id: 2, online: [], seq: 0 },
      { type: 'unregistered', chat_id: 1, reason: 'bored' },
      { type: 'ack', op: 'typing', id: 'm', chat_id: 1, duplicate: false },
      { type: 'presence', chat_id: 0, user_id: 1, status: 'online' },
      { type: 'presence_batch', chat_id: 1, online: [2] },
      { type: 'error', code: 'teapot', message: 'x', retryable: false },
      { seq: 1, epoch: 'e', type: 'delete_message', chat_id: 1, data: { id: 'm', deleted_by: 2, extra: true } },
    ];
    for (const frame of bad) assert.equal(checkers.get(String(frame.type))!.Check(frame), false, JSON.stringify(frame));
  });

  describe('every frame a live gateway sends matches its schema', () => {
    // No verify cache: a refused re-register reaches the main API (for `unregistered` with a reason).
    const h = useHarness('memory', { AUTH_CACHE_TTL_MS: '0' });

    it('register, message (+ duplicate), edit, delete, typing, presence, ping, refresh, event, errors, recovery, unregister, refused register', async () => {
      const chat = uniqueChat();
      const a = await h.member(1, chat);
      const b = await h.member(2, chat);
      await a.next({ type: 'presence', user_id: 2, status: 'online' }); // a lone change: a plain presence frame
      const data = { id: `m-${chat}`, ciphertext: 'Y2lwaGVy', nonce: 'bm9uY2U', envelopes: { '2': 'k' }, extra: { kept: [1] } };
      await a.request({ type: 'message', data }, { type: 'ack' });
      await a.request({ type: 'message', data }, { type: 'ack', duplicate: true });
      await a.request({ type: 'message', chat_id: chat, data: { id: `n-${chat}`, ciphertext: 'eA' } }, { type: 'ack' });
      await a.request({ type: 'edit_message', data: { id: data.id, ciphertext: 'ZWRpdA', message_type: 'text' } }, { type: 'ack' });
      await a.request({ type: 'delete_message', data: { id: data.id } }, { type: 'ack' });
      a.send({ type: 'typing' });
      await b.next({ type: 'typing' });
      await a.request({ type: 'ping' }, { type: 'pong' });
      await a.request({ type: 'refresh', token: await h.token(1) }, { type: 'refreshed' });
      // What the server API's publish does.
      await h.instances[0]!.gateway.engine.append(String(chat), out.event(String(chat), { kind: 'renamed', title: 'x' }), null);
      await a.request({ type: 'no_such_type' }, { type: 'error', code: 'unsupported_type' });
      await a.request({ type: 'message', data: { id: 'bad id', ciphertext: 'x' } }, { type: 'error', code: 'bad_request' });
      a.sendRaw('not json');
      await a.next((f) => f.type === 'error' && f.op === undefined, 3000, a.frames.length - 1);
      await a.request({ type: 'edit_message', data: { id: 'unknown', ciphertext: 'x' } }, { type: 'error', code: 'not_found' });
      await b.next({ type: 'delete_message' });
      const last = await b.next({ type: 'event' });

      // Recovery: a replay then registered recovered:true; an unknown epoch: recovered:false.
      const registered = b.all({ type: 'registered' })[0]!;
      const c = await h.connect();
      await c.request({ type: 'register', token: await h.token(3), chat_id: chat, since: { seq: 1, epoch: registered.epoch } }, { type: 'registered', recovered: true });
      assert.equal(c.all((f) => f.seq !== undefined && f.type !== 'registered').length, Number(last.seq) - 1);
      await c.request({ type: 'register', token: await h.token(3), chat_id: chat, since: { seq: 1, epoch: 'gone' } }, { type: 'registered', recovered: false });

      // The main API refuses a re-register: the registration ends with a reason, then the error.
      h.api.addFault({ op: 'verify', status: 403, times: 1 });
      await c.request({ type: 'register', token: await h.token(3), chat_id: chat }, { type: 'error', code: 'forbidden' });
      assert.equal(c.all({ type: 'unregistered', reason: 'forbidden' }).length, 1);

      await b.request({ type: 'unregister', chat_id: chat }, { type: 'unregistered' });
      await a.next(presence(2, 'offline'));
      // Members joining together are announced in one presence_batch.
      const joined = await Promise.all([6, 7, 8].map((u) => h.member(u, chat)));
      await a.next({ type: 'presence_batch' });
      for (const j of joined) j.close();

      const seen = new Set<string>();
      for (const [name, client] of Object.entries({ a, b, c })) {
        for (const [i, frame] of client.frames.entries()) seen.add(assertOutbound(frame, `client ${name} frame ${i}`));
        client.close();
      }
      assert.deepEqual(OUTBOUND_TYPES.filter((t) => !seen.has(t)).sort(), [], 'this session saw every outbound type');
    });
  });
});

/** Inlines every local `$ref` (as the parser does). */
function resolveRefs(node: Json, root: Json): Json {
  if (Array.isArray(node)) return node.map((x) => resolveRefs(x, root));
  if (node === null || typeof node !== 'object') return node;
  const ref = node.$ref;
  if (typeof ref === 'string' && Object.keys(node).length === 1) {
    assert.ok(ref.startsWith('#/'), ref);
    let target: Json = root;
    for (const part of ref.slice(2).split('/').map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'))) {
      assert.ok(target !== null && typeof target === 'object' && !Array.isArray(target) && part in target, `dangling ${ref}`);
      target = target[part] as Json;
    }
    return resolveRefs(target, root);
  }
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, resolveRefs(v, root)]));
}

function withoutParserKeys(node: Json): Json {
  if (Array.isArray(node)) return node.map(withoutParserKeys);
  if (node === null || typeof node !== 'object') return node;
  return Object.fromEntries(Object.entries(node).filter(([k]) => !k.startsWith('x-parser-')).map(([k, v]) => [k, withoutParserKeys(v)]));
}
