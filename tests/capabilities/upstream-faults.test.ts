import assert from 'node:assert/strict';
import { describe, it, beforeEach } from 'node:test';
import { expectNone, sleep } from '../support/client.js';
import { ENGINE_MODES, Harness, uniqueChat, useHarness, waitFor } from '../support/harness.js';

for (const mode of ENGINE_MODES) {
  describe(`main API faults [${mode}]`, () => {
    const h = useHarness(mode, { UPSTREAM_TIMEOUT_MS: '400', AUTH_CACHE_TTL_MS: '0' });
    beforeEach(() => h.api.clearFaults());

    const cases: Array<[string, Parameters<Harness['api']['addFault']>[0], string, boolean]> = [
      ['5xx', { op: 'save', status: 503 }, 'upstream_unavailable', true],
      ['timeout (hang)', { op: 'save', hang: true }, 'upstream_unavailable', true],
      ['403', { op: 'save', status: 403 }, 'forbidden', false],
      ['401', { op: 'save', status: 401 }, 'unauthorized', false],
      ['422', { op: 'save', status: 422 }, 'bad_request', false],
      ['413', { op: 'save', status: 413 }, 'too_large', false],
      ['429', { op: 'save', status: 429 }, 'rate_limited', true],
    ];
    for (const [name, fault, code, retryable] of cases) {
      it(`save ${name} → error ${code}, nothing broadcast`, async () => {
        const { chat, a, b } = await h.pair();
        h.api.addFault(fault);
        const id = `f-${chat}`;
        const err = await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'error' });
        assert.deepEqual(err, { type: 'error', code, message: err.message, op: 'message', id, chat_id: chat, retryable });
        await expectNone(b, { type: 'message' }, 200);
        assert.equal(a.all({ type: 'ack' }).length, 0);
        // The connection stays usable and a retry after the fault succeeds.
        h.api.clearFaults();
        const ack = await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
        assert.equal(ack.duplicate, false);
        await b.next({ type: 'message' });
        a.close();
        b.close();
      });
    }

    it('a save answered 200 whose body then trickles forever was carried out: acked and broadcast at once, not failed at the timeout', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', trickleMs: 100, times: 1 });
      const ack = await a.request({ type: 'message', data: { id: `trickle-${chat}`, ciphertext: 'x' } }, (f) => f.type === 'ack' || f.type === 'error');
      assert.deepEqual([ack.type, ack.duplicate], ['ack', false]);
      assert.equal(((await b.next({ type: 'message' })).data as { id: string }).id, `trickle-${chat}`);
      a.close();
      b.close();
    });

    it('103 Early Hints before the answer is not the answer: the save is acked and broadcast, the verify admits', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', earlyHints: true, times: 1 });
      const ack = await a.request({ type: 'message', data: { id: `hints-${chat}`, ciphertext: 'x' } }, (f) => f.type === 'ack' || f.type === 'error');
      assert.deepEqual([ack.type, ack.duplicate], ['ack', false]);
      await b.next({ type: 'message' });
      h.api.addFault({ op: 'verify', earlyHints: true, times: 1 });
      const c = await h.connect();
      assert.equal((await c.request({ type: 'register', token: await h.token(3), chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error')).type, 'registered');
      for (const x of [a, b, c]) x.close();
    });

    it('a 409 that echoes the stored message past 64 KiB still names its sender: the resend stands in for the lost broadcast', async () => {
      const { chat, a, b } = await h.pair();
      const id = `echo409-${chat}`;
      h.api.addFault({ op: 'save', status: 409, body: { error: 'duplicate', sender_id: 1, chat_id: chat, message: { id, ciphertext: 'x'.repeat(100_000) } }, times: 1 });
      const ack = await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      assert.equal(ack.duplicate, true);
      assert.equal(typeof ack.seq, 'number', 'the resend was not broadcast');
      assert.equal(((await b.next({ type: 'message' })).data as { id: string }).id, id);
      a.close();
      b.close();
    });

    it('409 on save of an id the chat already broadcast: ack duplicate:true, no broadcast', async () => {
      const { chat, a, b } = await h.pair();
      const msg = { type: 'message', data: { id: `c-${chat}`, ciphertext: 'x' } };
      await a.request(msg, { type: 'ack' });
      await b.next({ type: 'message' });
      const from = b.frames.length;
      h.api.addFault({ op: 'save', status: 409 });
      const ack = await a.request(msg, { type: 'ack' });
      assert.deepEqual([ack.duplicate, ack.seq], [true, undefined]);
      await expectNone(b, { type: 'message' }, 200, from);
      a.close();
      b.close();
    });

    it('a 409 whose body is larger than the gateway reads is still a duplicate, not an error', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', status: 409, body: { error: 'duplicate', echoed: 'x'.repeat(100_000) }, times: 1 });
      const ack = await a.request({ type: 'message', data: { id: `big409-${chat}`, ciphertext: 'x' } }, (f) => f.type === 'ack' || f.type === 'error');
      assert.deepEqual([ack.type, ack.duplicate, ack.seq], ['ack', true, undefined]);
      await expectNone(b, { type: 'message' }, 200);
      a.close();
      b.close();
    });

    it('main API refused (nothing listening): upstream_unavailable, retryable', async () => {
      const inst = await h.gateway({ AUTH_HOST: 'http://127.0.0.1:1' });
      const c = await h.connect(h.instances.indexOf(inst));
      const err = await c.request({ type: 'register', token: await h.token(1), chat_id: uniqueChat() }, { type: 'error' });
      assert.equal(err.code, 'upstream_unavailable');
      assert.equal(err.retryable, true);
      assert.equal(err.op, 'register');
      c.close();
    });

    it('verify 403 (not a member) → forbidden and no subscription to the chat', async () => {
      const chat = uniqueChat();
      h.api.setMembers(chat, [1]);
      const a = await h.member(1, chat);
      const c = await h.connect();
      const err = await c.request({ type: 'register', token: await h.token(2), chat_id: chat }, { type: 'error' });
      assert.deepEqual(err, { type: 'error', code: 'forbidden', message: err.message, op: 'register', chat_id: chat, retryable: false });
      await a.request({ type: 'message', data: { id: `m-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await expectNone(c, { type: 'message' }, 200);
      const err2 = await c.request({ type: 'message', chat_id: chat, data: { id: 'z', ciphertext: 'x' } }, { type: 'error' });
      assert.equal(err2.code, 'not_registered');
      a.close();
      c.close();
    });

    it('verify that lies (200 without a user id, a bad one, or about another chat) → internal, not registered', async () => {
      // The last: an answer about another chat (a misrouted or mixed-up one) admits nobody to this one.
      for (const body of [{}, { user_id: { x: 1 } }, { user_id: 'has space' }, 'not json', { user_id: 1, chat_id: 'another-chat' }, { user_id: 1, chat_id: 7 }]) {
        h.api.clearFaults();
        h.api.addFault({ op: 'verify', body });
        const c = await h.connect();
        const err = await c.request({ type: 'register', token: await h.token(1), chat_id: uniqueChat() }, { type: 'error' });
        assert.equal(err.code, 'internal', JSON.stringify(body));
        c.close();
      }
    });

    it('a main API failing every call is logged once per call kind every 10 s, not once per frame', async () => {
      const lines = () => h.instances[0]!.logs.filter((l) => l.includes('"main API error"') || l.includes('"main API unreachable"')).length;
      h.api.addFault({ op: 'verify', status: 503 });
      const before = lines();
      const c = await h.connect();
      for (let i = 0; i < 10; i++) {
        const err = await c.request({ type: 'register', token: await h.token(1), chat_id: uniqueChat() }, { type: 'error' });
        assert.equal(err.code, 'upstream_unavailable');
      }
      assert.ok(lines() - before <= 1, `${lines() - before} lines for 10 failed calls`);
      c.close();
    });

    it('verify whose answer trickles forever → upstream_unavailable within the timeout, not registered', async () => {
      h.api.addFault({ op: 'verify', trickleMs: 100, times: 1 });
      const c = await h.connect();
      // Answered at all: before the whole call was bounded, it never was (UPSTREAM_TIMEOUT_MS is 400).
      const err = await c.request({ type: 'register', token: await h.token(1), chat_id: uniqueChat() }, { type: 'error' }, 5000);
      assert.equal(err.code, 'upstream_unavailable');
      assert.ok(h.instances[0]!.logs.some((l) => l.includes('"main API timed out"')), 'a timeout is logged as one, not as "unreachable"');
      c.close();
    });

    it('verify whose answer is over 64 KiB → internal, not registered (the gateway does not hold it)', async () => {
      h.api.addFault({ op: 'verify', body: { user_id: 1, padding: 'x'.repeat(100_000) } });
      const c = await h.connect();
      const chat = uniqueChat();
      const err = await c.request({ type: 'register', token: await h.token(1), chat_id: chat }, { type: 'error' });
      assert.equal(err.code, 'internal');
      h.api.clearFaults();
      // The chat was not registered: a message to it is refused.
      const refused = await c.request({ type: 'message', chat_id: chat, data: { id: 'big-1', ciphertext: 'AA==', nonce: 'AA==' } }, { type: 'error' });
      assert.equal(refused.code, 'not_registered');
      c.close();
    });

    it('a verify answer echoing a 64-bit chat id as a JSON number past 2^53 (inexact) is not "another chat"', async () => {
      h.api.addFault({ op: 'verify', body: '{"user_id":5,"chat_id":9007199254740993}', times: 1 });
      const c = await h.connect();
      const reg = await c.request({ type: 'register', token: await h.token(5), chat_id: '9007199254740993' }, (f) => f.type === 'registered' || f.type === 'error');
      assert.equal(reg.type, 'registered');
      c.close();
    });

    it('verify accepts id, sub and user.id spellings', async () => {
      for (const [body, expected] of [[{ id: 41 }, 41], [{ sub: 'u-42' }, 'u-42'], [{ user: { id: 43 } }, 43]] as const) {
        h.api.clearFaults();
        h.api.addFault({ op: 'verify', body, times: 1 });
        const c = await h.connect();
        const reg = await c.register(await h.token(1), uniqueChat());
        assert.equal(reg.user_id, expected);
        c.close();
      }
    });

    it('a slow save does not block other connections', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', delayMs: 300, times: 1 });
      const before = h.api.requests.length;
      a.send({ type: 'message', data: { id: `slow-${chat}`, ciphertext: 'x' } });
      await h.api.waitForRequests(before + 1); // the slow save is in flight
      const ack = await b.request({ type: 'message', data: { id: `fast-${chat}`, ciphertext: 'y' } }, { type: 'ack' });
      assert.equal(ack.id, `fast-${chat}`);
      assert.equal(a.all({ type: 'ack' }).length, 0, 'fast ack arrived before the slow save finished');
      await a.next({ type: 'ack', id: `slow-${chat}` });
      a.close();
      b.close();
    });

    it('operations of one connection are acked in the order sent even when upstream latency varies', async () => {
      const { chat, a, b } = await h.pair();
      h.api.addFault({ op: 'save', delayMs: 150, times: 1 });
      const ids = Array.from({ length: 6 }, (_, i) => `o${i}-${chat}`);
      for (const id of ids) a.send({ type: 'message', data: { id, ciphertext: 'x' } });
      await a.next({ type: 'ack', id: ids.at(-1) });
      assert.deepEqual(a.all({ type: 'ack' }).map((f) => f.id), ids);
      await b.next((f) => f.type === 'message' && (f.data as { id: string }).id === ids.at(-1));
      assert.deepEqual(b.all({ type: 'message' }).map((f) => (f.data as { id: string }).id), ids);
      const saved = h.api.requests.filter((r) => r.op === 'save' && ids.includes((r.body as { id: string }).id)).map((r) => (r.body as { id: string }).id);
      assert.deepEqual(saved, ids);
      a.close();
      b.close();
    });

    it('bearer token, X-Request-Id and URL-encoded path parameters on edit/delete', async () => {
      const chat = `a:b.${uniqueChat()}`;
      const a = await h.member(1, chat);
      const id = 'm-1_x';
      await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      await a.request({ type: 'edit_message', data: { id, ciphertext: 'y' } }, { type: 'ack' });
      await a.request({ type: 'delete_message', data: { id } }, { type: 'ack' });
      const edit = h.api.requests.filter((r) => r.op === 'edit').at(-1)!;
      const del = h.api.requests.filter((r) => r.op === 'delete').at(-1)!;
      assert.equal(edit.path, `/chat/${encodeURIComponent(chat)}/messages/${id}`);
      assert.equal(del.path, edit.path);
      assert.ok(edit.path.includes('%3A'));
      assert.match(String(del.headers.authorization), /^Bearer /);
      assert.notEqual(edit.headers['x-request-id'], del.headers['x-request-id']);
      a.close();
    });
  });
}

// The main-API client's reading of answers, and its pool: engine-independent (the memory engine).
describe('main API answers that lie or hold on', () => {
  const h = useHarness('memory', { UPSTREAM_TIMEOUT_MS: '3000', AUTH_CACHE_TTL_MS: '0', UPSTREAM_CONNECTIONS: '3', MAX_UPSTREAM_PER_CONNECTION: '2', RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
  beforeEach(() => h.api.clearFaults());
  const lines = (msg: string) => h.instances[0]!.logs.join('').split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length;

  it('a verify refused or failing with a page over 64 KiB is what its status says, not internal', async () => {
    const page = `<html>${'x'.repeat(70_000)}</html>`;
    const c = await h.connect();
    for (const [status, code, retryable] of [[503, 'upstream_unavailable', true], [502, 'upstream_unavailable', true], [401, 'unauthorized', false], [403, 'forbidden', false]] as const) {
      h.api.addFault({ op: 'verify', status, body: page, times: 1 });
      const err = await c.request({ type: 'register', token: await h.token(1), chat_id: uniqueChat() }, { type: 'error' });
      assert.deepEqual([err.code, err.retryable], [code, retryable], `verify ${status}`);
    }
    c.close();
  });

  it('a 409 that says the message was deleted — as true, "true", 1 or "1" — is never broadcast again', async () => {
    for (const deleted of [true, 'true', 1, '1']) {
      const { chat, a, b } = await h.pair();
      const id = `gone-${chat}`;
      h.api.addFault({ op: 'save', status: 409, body: { sender_id: 1, chat_id: chat, deleted }, times: 1 });
      const ack = await a.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack' });
      assert.equal(ack.duplicate, true);
      await expectNone(b, { type: 'message' }, 1500); // the resend's look in the history takes up to 750 ms (1 s at most)
      a.close();
      b.close();
    }
  });

  it('a verify answer without a user id costs a log line per 10 s, not one per register', async () => {
    const before = lines('main API verify answer has no usable user id');
    const c = await h.connect();
    for (let i = 0; i < 5; i++) {
      h.api.addFault({ op: 'verify', body: {}, times: 1 });
      assert.equal((await c.request({ type: 'register', token: await h.token(1), chat_id: uniqueChat() }, { type: 'error' })).code, 'internal');
    }
    assert.equal(lines('main API verify answer has no usable user id') - before, 1);
    c.close();
  });

  it('with the main API hanging, writes queued behind the first in their chat are refused when it times out, unsent', async () => {
    const { chat, a, b } = await h.pair();
    h.api.addFault({ op: 'save', hang: true });
    const before = h.api.requests.filter((r) => r.op === 'save').length;
    const ids = Array.from({ length: 5 }, (_, i) => `queued-${i}-${chat}`);
    for (const id of ids) a.send({ type: 'message', data: { id, ciphertext: 'x' } });
    // The first times out (3 s); the others waited that long for their turn: refused at once,
    // not sent one after another (15 s, and on for as many as were queued).
    for (const id of ids) assert.equal((await a.next({ type: 'error', id }, 6000)).code, 'upstream_unavailable');
    // The first, and at most the second (its wait is checked when the first ends: the first's
    // deadline may fire a moment before the second has waited a full timeout); never all five.
    assert.ok(h.api.requests.filter((r) => r.op === 'save').length - before <= 2, 'only the first was sent');
    h.api.clearFaults();
    await a.request({ type: 'message', data: { id: ids[1], ciphertext: 'x' } }, { type: 'ack' });
    await b.next({ type: 'message' });
    a.close();
    b.close();
  });

  it('refused verifies whose bodies then trickle keep their places: junk registers cannot take the pool through them', async () => {
    // The pool has 3 places, anonymous verifies (first registers) 1 of them. Each is refused 401 at
    // once and its body trickles until the 3 s deadline: the place stays taken until then.
    h.api.addFault({ op: 'verify', status: 401, trickleMs: 100 });
    const verifies = () => h.api.requests.filter((r) => r.op === 'verify').length;
    const before = verifies();
    const junk = await Promise.all(Array.from({ length: 4 }, () => h.connect()));
    for (const [i, c] of junk.entries()) c.send({ type: 'register', token: `junk-${i}`, chat_id: uniqueChat() });
    await junk[0]!.next(() => junk.some((c) => c.all({ type: 'error' }).length > 0), 3000);
    await sleep(500); // more would be at the main API by now if a refusal let its place go
    assert.equal(verifies() - before, 1, 'one anonymous verify at a time');
    h.api.clearFaults();
    for (const c of junk) c.close();
  });

  it('saves answered at once whose bodies then trickle hold the connection\'s own slots, not every place of the pool', async () => {
    const chats = [uniqueChat(), uniqueChat(), uniqueChat()];
    const a = await h.connect();
    for (const chat of chats) await a.register(await h.token(1), chat);
    const other = await h.member(2, uniqueChat());
    // Every save is answered 200 at once, and its body never ends (until the 3 s deadline).
    h.api.addFault({ op: 'save', trickleMs: 100 });
    const saves = () => h.api.requests.filter((r) => r.op === 'save').map((r) => (r.body as { id: string }).id);
    for (const chat of chats) a.send({ type: 'message', chat_id: chat, data: { id: `hold-${chat}`, ciphertext: 'x' } });
    await waitFor(() => saves().length >= 2, 3000, 'the first two saves');
    await sleep(300); // a third would be at the main API by now if the connection's slots were free
    const ack = await other.request({ type: 'message', data: { id: `other-${chats[0]}`, ciphertext: 'x' } }, { type: 'ack' });
    assert.equal(ack.duplicate, false);
    // The pool's third place went to the other user: the connection's third save waited for its own slot.
    assert.ok(saves().indexOf(`other-${chats[0]}`) < saves().indexOf(`hold-${chats[2]}`) || !saves().includes(`hold-${chats[2]}`), `order at the main API: ${saves().join(', ')}`);
    await a.next({ type: 'ack', id: `hold-${chats[2]}` }, 6000); // once a slot is free again
    h.api.clearFaults();
    a.close();
    other.close();
  });
});
