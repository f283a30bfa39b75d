/**
 * What docs/protocol.md promises a client author, checked against the real gateway and the
 * development main API: what an `error` carries, which `created_at` values pass, what is
 * broadcast after a 409, the several `rate_limited`s, the order of answers, close codes.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import { TestClient, expectNone, sleep, type Frame } from '../support/client.js';
import { metric, uniqueChat, useHarness, waitFor, type Harness } from '../support/harness.js';

const idOf = (f: Frame) => (f.data as { id: string }).id;
const errorOrAck = (id: string) => (f: Frame) => (f.type === 'error' || f.type === 'ack') && f.id === id;
const saves = (h: Harness) => h.api.requests.filter((r) => r.op === 'save');
const verifiesOf = (h: Harness, chat: number) => h.api.requests.filter((r) => r.op === 'verify' && (r.body as { chat_id?: unknown })?.chat_id === chat).length;

/** Waits until the main API has received `n` more calls of `op` than `before`. */
const calledTimes = (h: Harness, op: string, n: number) => waitFor(() => h.api.requests.filter((r) => r.op === op).length >= n, 3000, `${n} ${op} calls`);

/** An object nested `levels` deep: `{"x":{"x":…{}}}` counts as `levels` levels. */
function nested(levels: number): object {
  let v: object = {};
  for (let i = 1; i < levels; i++) v = { x: v };
  return v;
}

describe('protocol contract [memory]', () => {
  const h = useHarness('memory', { RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000', UPSTREAM_TIMEOUT_MS: '3000' });
  beforeEach(() => h.api.clearFaults());

  describe('error.chat_id of a request without chat_id is the chat it targeted when it arrived', () => {
    const refusals: Array<[string, (chat: number) => void]> = [
      ['the user was removed from the chat', (chat) => h.api.setMembers(chat, [2])],
      ['the main API answers 403 to the save and to the re-check', () => {
        h.api.addFault({ op: 'save', status: 403, times: 1 });
        h.api.addFault({ op: 'verify', status: 403, times: 1 });
      }],
    ];
    for (const [how, refuse] of refusals) {
      it(`a write refused 403 that ends the registration (${how}): unregistered first, then an error that still names the chat`, async () => {
        const chat = uniqueChat();
        h.api.setMembers(chat, [1, 2]);
        const a = await h.member(1, chat);
        refuse(chat);
        const id = `r403-${chat}`;
        const err = await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'error' });
        assert.deepEqual(err, { type: 'error', code: 'forbidden', message: err.message, op: 'message', id, chat_id: chat, retryable: false });
        const ended = a.frames.findIndex((f) => f.type === 'unregistered');
        assert.ok(ended >= 0 && ended < a.frames.indexOf(err), 'unregistered comes before the error');
        a.close();
      });
    }

    for (const op of ['message', 'delete_message'] as const) {
      it(`${op}: another chat registered while the write is at the main API does not take the chat out of its error`, async () => {
        const [first, second] = [uniqueChat(), uniqueChat()];
        const token = await h.token(1);
        const a = await h.connect();
        await a.register(token, first);
        const calls = h.api.requests.length;
        h.api.addFault({ op: op === 'message' ? 'save' : 'delete', delayMs: 400, status: 503, times: 1 });
        const id = `two-${first}`;
        a.send({ type: op, data: op === 'message' ? { id, ciphertext: 'x' } : { id } });
        await waitFor(() => h.api.requests.slice(calls).some((r) => r.op !== 'verify'), 3000, 'the write at the main API');
        await a.register(token, second);
        const err = await a.next({ type: 'error' });
        assert.deepEqual(err, { type: 'error', code: 'upstream_unavailable', message: err.message, op, id, chat_id: first, retryable: true });
        a.close();
      });
    }

    it('the chat ended and another was registered while the write was at the main API: the error names the first chat, not the other', async () => {
      const [first, second] = [uniqueChat(), uniqueChat()];
      h.api.setMembers(first, [1]);
      const token = await h.token(1);
      const a = await h.connect();
      await a.register(token, first);
      const before = saves(h).length;
      h.api.addFault({ op: 'save', delayMs: 400, times: 1 });
      const id = `moved-${first}`;
      a.send({ type: 'message', data: { id, ciphertext: 'x' } });
      await waitFor(() => saves(h).length > before, 3000, 'the save at the main API');
      h.api.setMembers(first, [2]); // the delayed save is then refused 403, and the re-check too
      await a.register(token, second);
      const err = await a.next({ type: 'error' });
      assert.deepEqual(err, { type: 'error', code: 'forbidden', message: err.message, op: 'message', id, chat_id: first, retryable: false });
      assert.deepEqual(a.all({ type: 'unregistered' }), [{ type: 'unregistered', chat_id: first, reason: 'forbidden' }]);
      a.close();
    });

    it('refused as it arrives (bad field), it names the only chat; with several chats and no chat_id, none', async () => {
      const [first, second] = [uniqueChat(), uniqueChat()];
      const token = await h.token(1);
      const a = await h.connect();
      await a.register(token, first);
      const bad = await a.request({ type: 'message', data: { id: 'b1', ciphertext: '' } }, { type: 'error' });
      assert.deepEqual([bad.code, bad.op, bad.id, bad.chat_id], ['bad_request', 'message', 'b1', first]);
      await a.register(token, second);
      const ambiguous = await a.request({ type: 'message', data: { id: 'b2', ciphertext: 'x' } }, { type: 'error' });
      assert.deepEqual([ambiguous.code, ambiguous.op, ambiguous.id, 'chat_id' in ambiguous], ['bad_request', 'message', 'b2', false]);
      a.close();
    });
  });

  describe('created_at is checked against the calendar', () => {
    const ACCEPTED = [
      '2024-02-29T10:00:00Z', // leap year
      '2000-02-29T10:00:00Z', // divisible by 400: leap
      '2023-12-31T23:59:59.999999999Z',
      '2024-04-30T00:00:00+23:59',
      '2024-01-31T00:00:00-00:00',
      '2024-06-15t08:30:00z',
      '2024-06-15 08:30:00+02:00',
      '0001-01-01T00:00:00Z',
    ];
    const REFUSED = [
      '2024-02-30T10:00:00Z',
      '2023-02-29T10:00:00Z', // not a leap year
      '1900-02-29T10:00:00Z', // divisible by 100, not 400: not leap
      '2024-04-31T10:00:00Z',
      '2024-06-31T10:00:00Z',
      '2024-00-10T10:00:00Z',
      '2024-01-00T10:00:00Z',
      '2024-01-32T10:00:00Z',
      '2024-01-01T24:00:00Z',
      '2024-01-01T23:60:00Z',
      '2016-12-31T23:59:60Z', // a leap second: RFC 3339 allows it, the gateway does not (see docs/protocol.md)
      '2024-01-01T10:00:00+24:00',
      '2024-01-01T10:00:00+01:60',
      '2024-01-01T10:00:00.1234567890Z',
    ];

    it('real instants are saved and broadcast as sent', async () => {
      const { chat, a, b } = await h.pair();
      for (const [i, created_at] of ACCEPTED.entries()) {
        const id = `ok${i}-${chat}`;
        const answer = await a.request({ type: 'message', data: { id, ciphertext: 'x', created_at } }, errorOrAck(id));
        assert.equal(answer.type, 'ack', `${created_at}: ${JSON.stringify(answer)}`);
        const got = await b.next((f) => f.type === 'message' && idOf(f) === id);
        assert.equal((got.data as { created_at: string }).created_at, created_at);
      }
      a.close();
      b.close();
    });

    it('impossible dates and times are bad_request: nothing saved, nothing broadcast', async () => {
      const { chat, a, b } = await h.pair();
      const before = saves(h).length;
      for (const [i, created_at] of REFUSED.entries()) {
        const id = `no${i}-${chat}`;
        const answer = await a.request({ type: 'message', data: { id, ciphertext: 'x', created_at } }, errorOrAck(id));
        assert.deepEqual([answer.type, answer.code, answer.op, answer.chat_id], ['error', 'bad_request', 'message', chat], `${created_at}: ${JSON.stringify(answer)}`);
      }
      assert.equal(saves(h).length, before);
      await expectNone(b, { type: 'message' }, 200);
      a.close();
      b.close();
    });
  });

  describe('what an error carries', () => {
    it('a frame nested deeper than 32 levels: bad_request naming its op, id and chat_id; 32 levels pass', async () => {
      const { chat, a, b } = await h.pair();
      // frame (1) → data (2) → data.deep (3 …)
      const ok = await a.request({ type: 'message', chat_id: chat, data: { id: `d32-${chat}`, ciphertext: 'x', deep: nested(30) } }, errorOrAck(`d32-${chat}`));
      assert.equal(ok.type, 'ack');
      const from = a.frames.length;
      a.send({ type: 'message', chat_id: chat, data: { id: `d33-${chat}`, ciphertext: 'x', deep: nested(31) } });
      const err = await a.next({ type: 'error' }, 3000, from);
      assert.deepEqual(err, { type: 'error', code: 'bad_request', message: err.message, op: 'message', id: `d33-${chat}`, chat_id: chat, retryable: false });
      await b.next((f) => f.type === 'message' && idOf(f) === `d32-${chat}`);
      await expectNone(b, (f) => f.type === 'message' && idOf(f) === `d33-${chat}`, 200);
      a.close();
      b.close();
    });

    it('a number that JSON parsing changed (past the double range, or a whole number past 2^53 − 1) is bad_request naming the request, never saved rounded; others pass through as numbers', async () => {
      const { chat, a, b } = await h.pair();
      for (const [n, literal] of [[1, '1e400'], [2, '123456789012345678901234567890'], [3, '-9007199254740992']] as const) {
        const id = `num${n}-${chat}`;
        a.sendRaw(`{"type":"message","chat_id":${chat},"data":{"id":"${id}","ciphertext":"x","meta":{"n":${literal}}}}`);
        const err = await a.next({ type: 'error', id }, 3000);
        assert.deepEqual([err.code, err.op, err.chat_id], ['bad_request', 'message', chat], literal);
        assert.equal(h.api.messages.has(id), false, literal);
      }
      const id = `num-ok-${chat}`;
      a.sendRaw(`{"type":"message","chat_id":${chat},"data":{"id":"${id}","ciphertext":"x","meta":{"safe":9007199254740991,"f":1.5,"e":1E2}}}`);
      await a.next({ type: 'ack', id });
      const got = await b.next((f) => f.type === 'message' && idOf(f) === id);
      assert.deepEqual((got.data as { meta: unknown }).meta, { safe: 9007199254740991, f: 1.5, e: 100 });
      a.close();
      b.close();
    });

    it('an unknown type is echoed as op up to 64 characters, a longer one is not; the chat and id it names still are', async () => {
      const c = await h.connect();
      const short = await c.request({ type: 'x'.repeat(64) }, { type: 'error' });
      assert.deepEqual([short.code, short.op], ['unsupported_type', 'x'.repeat(64)]);
      const long = await c.request({ type: 'x'.repeat(65), chat_id: 5, data: { id: 'm1' } }, { type: 'error' });
      assert.deepEqual(long, { type: 'error', code: 'unsupported_type', message: long.message, id: 'm1', chat_id: 5, retryable: false });
      c.close();
    });
  });

  describe('unknown fields are ignored', () => {
    it('extra top-level fields on any request, extra data fields: passed through by message, dropped by edit_message', async () => {
      const chat = uniqueChat();
      const a = await h.connect();
      const registered = await a.request({ type: 'register', token: await h.token(1), chat_id: chat, extra: 1, since_v2: 'x' }, (f) => f.type === 'registered' || f.type === 'error');
      assert.equal(registered.type, 'registered');
      const b = await h.member(2, chat);
      assert.deepEqual(await a.request({ type: 'ping', extra: [1, 2] }, { type: 'pong' }), { type: 'pong' });
      const id = `extra-${chat}`;
      const ack = await a.request({ type: 'message', extra: true, data: { id, ciphertext: 'x', future: { a: 1 } } }, errorOrAck(id));
      assert.equal(ack.type, 'ack');
      const sent = await b.next((f) => f.type === 'message' && idOf(f) === id);
      assert.deepEqual((sent.data as Record<string, unknown>).future, { a: 1 });
      assert.ok(!('extra' in (sent.data as object)) && !('extra' in sent));
      const edited = await a.request({ type: 'edit_message', extra: true, data: { id, ciphertext: 'y', future: { a: 2 } } }, errorOrAck(id));
      assert.equal(edited.type, 'ack');
      const edit = await b.next({ type: 'edit_message' });
      assert.ok(!('future' in (edit.data as object)));
      a.close();
      b.close();
    });
  });

  describe('resends and ids', () => {
    it('a resend after a 409 that stands in for a lost broadcast: the resend’s body is broadcast, a missing created_at is the resend’s time', async () => {
      const { chat, a, b } = await h.pair();
      const id = `lost-${chat}`;
      // Saved by an earlier send whose gateway died before broadcasting it.
      h.api.messages.set(id, { id, chat_id: chat, sender_id: 1, ciphertext: 'first', created_at: '2020-01-01T00:00:00Z', saved_at: '2020-01-01T00:00:00Z' });
      const sentAt = Date.now();
      const ack = await a.request({ type: 'message', data: { id, ciphertext: 'resend' } }, errorOrAck(id));
      assert.deepEqual([ack.type, ack.duplicate, typeof ack.seq, typeof ack.epoch], ['ack', true, 'number', 'string']);
      const got = await b.next((f) => f.type === 'message' && idOf(f) === id);
      const data = got.data as { ciphertext: string; created_at: string };
      assert.equal(data.ciphertext, 'resend');
      assert.ok(Date.parse(data.created_at) >= sentAt - 1000, data.created_at);
      assert.equal(got.seq, ack.seq);
      a.close();
      b.close();
    });

    it('message ids are unique across chats: reusing one in another chat is bad_request (the 409 names the other chat), nothing saved or broadcast there', async () => {
      const [first, second] = [uniqueChat(), uniqueChat()];
      const token = await h.token(1);
      const a = await h.connect();
      await a.register(token, first);
      await a.register(token, second);
      const watcher = await h.member(2, second);
      const id = `shared-${first}`;
      assert.equal((await a.request({ type: 'message', chat_id: first, data: { id, ciphertext: 'x' } }, errorOrAck(id))).duplicate, false);
      const again = await a.request({ type: 'message', chat_id: second, data: { id, ciphertext: 'y' } }, errorOrAck(id));
      assert.deepEqual(again, { type: 'error', code: 'bad_request', message: again.message, op: 'message', id, chat_id: second, retryable: false });
      await expectNone(watcher, { type: 'message' }, 200);
      assert.equal(h.api.messages.get(id)?.chat_id, first);
      a.close();
      watcher.close();
    });

    it('resending an edit broadcasts it again under a new seq; resending a delete that worked is acked duplicate, not broadcast again', async () => {
      const { chat, a, b } = await h.pair();
      const id = `re-${chat}`;
      await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      const edit = { type: 'edit_message', data: { id, ciphertext: 'y' } };
      const e1 = await a.request(edit, errorOrAck(id));
      const e2 = await a.request(edit, errorOrAck(id));
      assert.deepEqual([e1.type, e2.type, e2.seq], ['ack', 'ack', (e1.seq as number) + 1]);
      await waitFor(() => b.all({ type: 'edit_message' }).length === 2, 3000, 'both edits');
      const del = { type: 'delete_message', data: { id } };
      assert.equal((await a.request(del, errorOrAck(id))).type, 'ack');
      const d2 = await a.request(del, errorOrAck(id));
      assert.deepEqual([d2.type, d2.duplicate, d2.seq], ['ack', true, undefined]);
      await sleep(200);
      assert.equal(b.all({ type: 'delete_message' }).length, 1);
      a.close();
      b.close();
    });
  });

  describe('register first, then use the chat', () => {
    it('while a register is in flight its chat is not_registered for writes, typing and refresh; chat_id-less requests still mean the only registered chat', async () => {
      const [first, second] = [uniqueChat(), uniqueChat()];
      const token = await h.token(1);
      const a = await h.connect();
      await a.register(token, first);
      const verifies = h.api.requests.filter((r) => r.op === 'verify').length;
      h.api.addFault({ op: 'verify', delayMs: 500, times: 1 });
      a.send({ type: 'register', token, chat_id: second });
      await calledTimes(h, 'verify', verifies + 1);
      for (const frame of [
        { type: 'message', chat_id: second, data: { id: 'w1', ciphertext: 'x' } },
        { type: 'edit_message', chat_id: second, data: { id: 'w1', ciphertext: 'x' } },
        { type: 'delete_message', chat_id: second, data: { id: 'w1' } },
        { type: 'typing', chat_id: second },
        { type: 'refresh', token, chat_id: second },
      ]) {
        const err = await a.request(frame, { type: 'error' });
        assert.deepEqual([err.code, err.op, err.chat_id], ['not_registered', frame.type, second]);
      }
      // Without chat_id, the connection's only chat is still the first one.
      const ack = await a.request({ type: 'message', data: { id: `w2-${first}`, ciphertext: 'x' } }, errorOrAck(`w2-${first}`));
      assert.deepEqual([ack.type, ack.chat_id], ['ack', first]);
      assert.equal(a.all({ type: 'registered', chat_id: second }).length, 0, 'the register is still in flight');
      await a.next({ type: 'registered', chat_id: second });
      a.close();
    });
  });

  describe('answers and rate_limited', () => {
    it('an error for a frame refused at once arrives before the ack of an earlier write still at the main API; a chat’s queued writes are answered in order', async () => {
      const { chat, a } = await h.pair();
      h.api.addFault({ op: 'save', delayMs: 300, times: 1 });
      a.send({ type: 'message', data: { id: `slow-${chat}`, ciphertext: 'x' } });
      a.send({ type: 'message', data: { id: `next-${chat}`, ciphertext: 'x' } });
      a.send({ type: 'message', data: { id: `bad-${chat}`, ciphertext: 'x', created_at: 'soon' } });
      await a.next({ type: 'ack', id: `next-${chat}` });
      const answers = a.frames.filter((f) => f.type === 'ack' || f.type === 'error').map((f) => `${f.type}:${String(f.id)}`);
      assert.deepEqual(answers.slice(-3), [`error:bad-${chat}`, `ack:slow-${chat}`, `ack:next-${chat}`]);
      a.close();
    });

    it('the pending-writes cap, a register already in flight, a refresh in flight, a main-API 429: rate_limited for that request only, nothing else dropped', async () => {
      const inst = await h.gateway({ MAX_PENDING_WRITES: '2', RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
      const at = h.instances.indexOf(inst);
      const chat = uniqueChat();
      const token = await h.token(1);
      const a = await h.connect(at);
      await a.register(token, chat);
      const rateLimited = (from: number) => a.frames.slice(from).filter((f) => f.type === 'error' && f.code === 'rate_limited');

      // MAX_PENDING_WRITES: the third write is refused at once; the ping sent after it is answered.
      h.api.addFault({ op: 'save', delayMs: 300, times: 2 });
      let from = a.frames.length;
      for (const n of [1, 2, 3]) a.send({ type: 'message', data: { id: `p${n}-${chat}`, ciphertext: 'x' } });
      a.send({ type: 'ping' });
      await a.next({ type: 'pong' }, 3000, from);
      assert.deepEqual(rateLimited(from).map((f) => [f.id, f.message]), [[`p3-${chat}`, '2 writes are already waiting for the main API; wait for their acks']]);
      await a.next({ type: 'ack', id: `p2-${chat}` }, 3000, from);

      // A second register of a chat whose register is in flight.
      h.api.addFault({ op: 'verify', delayMs: 300, times: 1 });
      from = a.frames.length;
      a.send({ type: 'register', token, chat_id: chat });
      a.send({ type: 'register', token, chat_id: chat });
      a.send({ type: 'ping' });
      await a.next({ type: 'pong' }, 3000, from);
      assert.deepEqual(rateLimited(from).map((f) => [f.op, f.chat_id, f.message]), [['register', chat, 'a register for this chat is already in progress; wait for its answer']]);
      await a.next({ type: 'registered' }, 3000, from);

      // A refresh while another is in flight.
      h.api.addFault({ op: 'verify', delayMs: 300, times: 1 });
      from = a.frames.length;
      a.send({ type: 'refresh', token });
      a.send({ type: 'refresh', token });
      a.send({ type: 'ping' });
      await a.next({ type: 'pong' }, 3000, from);
      assert.deepEqual(rateLimited(from).map((f) => [f.op, f.message]), [['refresh', 'a refresh is already in progress; wait for its answer']]);
      await a.next({ type: 'refreshed' }, 3000, from);

      // The main API answers 429.
      h.api.addFault({ op: 'save', status: 429, times: 1 });
      from = a.frames.length;
      a.send({ type: 'message', data: { id: `q1-${chat}`, ciphertext: 'x' } });
      a.send({ type: 'message', data: { id: `q2-${chat}`, ciphertext: 'x' } });
      await a.next({ type: 'ack', id: `q2-${chat}` }, 3000, from);
      assert.deepEqual(rateLimited(from).map((f) => [f.id, f.message]), [[`q1-${chat}`, 'main API refused save (429)']]);
      // Only the token bucket's pause is named on the wire: none of these dropped anything.
      assert.deepEqual(a.all((f) => f.type === 'error' && f.code === 'rate_limited' && 'retry_after_ms' in f), []);
      a.close();
    });

    it('the token bucket: "too many requests; slow down", and what was read with it goes unanswered', async () => {
      const inst = await h.gateway({ RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '2' });
      const a = await h.connect(h.instances.indexOf(inst));
      // One tick: the two burst tokens, then four more frames read with the refused one.
      for (let i = 0; i < 6; i++) a.send({ type: 'ping' });
      const err = await a.next({ type: 'error' });
      assert.deepEqual([err.code, err.op, err.message, err.retryable, err.retry_after_ms], ['rate_limited', 'ping', 'too many requests; slow down', true, 1000]);
      await sleep(300);
      assert.equal(a.all({ type: 'pong' }).length, 2);
      assert.equal(a.all({ type: 'error' }).length, 1);
      a.close();
    });
  });

  describe('close codes without an error frame, and close reasons', () => {
    it('1009 (frame too large) and 1007 (invalid UTF-8) come without an error frame and without a reason, and are counted by code', async () => {
      const closes = (code: number) => metric(h.instances[0]!, 'message_service_connection_closes_total', { code: String(code) });
      const before = { 1007: await closes(1007), 1009: await closes(1009) };
      const chat = uniqueChat();
      const big = await h.member(1, chat);
      big.sendRaw(JSON.stringify({ type: 'message', data: { id: 'big', ciphertext: 'x'.repeat(70_000) } }));
      assert.deepEqual(await big.closed, { code: 1009, reason: '' });
      const bad = await h.member(1, chat);
      bad.sendRaw(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), false);
      assert.deepEqual(await bad.closed, { code: 1007, reason: '' });
      for (const c of [big, bad]) assert.equal(c.all({ type: 'error' }).length, 0);
      assert.deepEqual([await closes(1007), await closes(1009)], [before[1007] + 1, before[1009] + 1]);
    });

    it('1008 "rate limit exceeded" and 4408 "register timeout"', async () => {
      const flooded = await h.gateway({ RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '1' });
      const flood = await h.connect(h.instances.indexOf(flooded));
      for (let i = 0; i < 40; i++) flood.send({ type: 'ping' });
      assert.deepEqual(await flood.closed, { code: 1008, reason: 'rate limit exceeded' });
      const strict = await h.gateway({ REGISTER_TIMEOUT_MS: '300' });
      const idle = await h.connect(h.instances.indexOf(strict));
      assert.deepEqual(await idle.closed, { code: 4408, reason: 'register timeout' });
    });
  });

  describe('credentials', () => {
    it('a JWT without exp is treated like an opaque token: re-verified every AUTH_CACHE_TTL_MS, never token_expired', async () => {
      const inst = await h.gateway({ AUTH_CACHE_TTL_MS: '300' });
      const chat = uniqueChat();
      h.api.setMembers(chat, [1]);
      const token = await new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject('1').setIssuedAt().sign(new TextEncoder().encode(h.api.secret));
      const c = await h.connect(h.instances.indexOf(inst));
      const before = verifiesOf(h, chat);
      await c.register(token, chat);
      await waitFor(() => verifiesOf(h, chat) >= before + 3, 5000, 'two re-verifies');
      assert.equal(c.all({ type: 'unregistered' }).length, 0);
      h.api.setMembers(chat, [2]);
      const ended = await c.next({ type: 'unregistered', chat_id: chat }, 3000);
      assert.equal(ended.reason, 'forbidden');
      c.close();
    });
  });
});
