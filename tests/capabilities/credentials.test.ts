import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeJwt } from 'jose';
import { expectNone, presence } from '../support/client.js';
import { ENGINE_MODES, uniqueChat, useHarness, waitFor } from '../support/harness.js';

for (const mode of ENGINE_MODES) {
  describe(`credentials end registrations [${mode}]`, () => {
    const h = useHarness(mode, { AUTH_CACHE_TTL_MS: '600', RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
    const verifies = (chat: number) => h.api.requests.filter((r) => r.op === 'verify' && (r.body as { chat_id?: unknown })?.chat_id === chat).length;

    it('a JWT registration ends with token_expired when exp passes; others see offline; nothing more reaches it', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(2, chat);
      const c = await h.connect();
      // 3 s: registered well before exp on a loaded machine too (a 2 s token once expired first).
      await c.register(await h.token(1, { expiresInSec: 3 }), chat);
      await watcher.next(presence(1, 'online'));
      const ended = await c.next({ type: 'unregistered', chat_id: chat }, 5000);
      assert.equal(ended.reason, 'token_expired');
      await watcher.next(presence(1, 'offline'));
      const from = c.frames.length;
      await watcher.request({ type: 'message', data: { id: `late-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await expectNone(c, { type: 'message' }, 300, from);
      c.close();
      watcher.close();
    });

    it('refresh before exp keeps the registration past it; the new token is used from then on', async () => {
      const chat = uniqueChat();
      const c = await h.connect();
      await c.register(await h.token(1, { expiresInSec: 3 }), chat);
      const fresh = await h.token(1, { expiresInSec: 60 });
      const answer = await c.request({ type: 'refresh', token: fresh }, (f) => f.type === 'refreshed' || f.type === 'error');
      assert.deepEqual(answer, { type: 'refreshed', chat_ids: [chat] });
      await new Promise((r) => setTimeout(r, 3500));
      assert.equal(c.all({ type: 'unregistered' }).length, 0, 'the refreshed registration expired');
      await c.request({ type: 'message', data: { id: `fresh-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const save = h.api.requests.filter((r) => r.op === 'save').at(-1)!;
      assert.equal(save.headers.authorization, `Bearer ${fresh}`);
      c.close();
    });

    it('a refresh sent before exp that the main API answers after it still wins: the registration is switched, not ended', async () => {
      const chat = uniqueChat();
      const c = await h.connect();
      await c.register(await h.token(1, { expiresInSec: 2 }), chat);
      const fresh = await h.token(1, { expiresInSec: 60 });
      h.api.addFault({ op: 'verify', delayMs: 3500, status: 200, body: { user_id: 1 }, times: 1 });
      try {
        const answer = await c.request({ type: 'refresh', token: fresh }, (f) => f.type === 'refreshed' || f.type === 'error', 6000);
        assert.deepEqual(answer, { type: 'refreshed', chat_ids: [chat] });
      } finally {
        h.api.clearFaults();
      }
      assert.equal(c.all({ type: 'unregistered' }).length, 0, 'expired while its refresh was pending');
      await c.request({ type: 'message', data: { id: `kept-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      c.close();
    });

    it('a register that waited behind a slow write does not put back the older token a later refresh replaced', async () => {
      const chat = uniqueChat();
      const c = await h.connect();
      // 5 s: the re-register verifies it after the 1.5 s write, on a loaded machine maybe 3 s in.
      const old = await h.token(1, { expiresInSec: 5 });
      await c.register(old, chat);
      h.api.addFault({ op: 'save', delayMs: 1500, times: 1 });
      try {
        c.send({ type: 'message', data: { id: `slow-${chat}`, ciphertext: 'x' } });
        const again = c.request({ type: 'register', token: old, chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error', 5000);
        const refreshed = await c.request({ type: 'refresh', token: await h.token(1, { expiresInSec: 60 }) }, (f) => f.type === 'refreshed' || f.type === 'error');
        assert.equal(refreshed.type, 'refreshed');
        assert.equal((await again).type, 'registered');
      } finally {
        h.api.clearFaults();
      }
      await new Promise((r) => setTimeout(r, Math.max(0, decodeJwt(old).exp! * 1000 + 1500 - Date.now()))); // past the old token's exp and the 1 s deadline tick
      assert.equal(c.all({ type: 'unregistered' }).length, 0, 'the register put the expired token back');
      c.close();
    });

    it('a refresh of another chat does not stop a re-register that waited behind a slow write from taking its token', async () => {
      const chat = uniqueChat();
      const other = uniqueChat();
      const c = await h.connect();
      const t0 = await h.token(1, { expiresInSec: 60 });
      await c.register(t0, chat);
      await c.register(t0, other);
      const t1 = await h.token(1, { expiresInSec: 61 });
      h.api.addFault({ op: 'save', delayMs: 1000, times: 1 });
      try {
        c.send({ type: 'message', chat_id: chat, data: { id: `slow2-${chat}`, ciphertext: 'x' } });
        const again = c.request({ type: 'register', token: t1, chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error', 5000);
        const refreshed = await c.request({ type: 'refresh', chat_id: other, token: await h.token(1, { expiresInSec: 62 }) }, (f) => f.type === 'refreshed' || f.type === 'error');
        assert.deepEqual(refreshed, { type: 'refreshed', chat_ids: [other] });
        assert.equal((await again).type, 'registered');
      } finally {
        h.api.clearFaults();
      }
      await c.request({ type: 'message', chat_id: chat, data: { id: `after-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      const save = h.api.requests.filter((r) => r.op === 'save').at(-1)!;
      assert.equal(save.headers.authorization, `Bearer ${t1}`, 'the re-register\'s token was not taken');
      c.close();
    });

    it('a refused refresh changes nothing: unauthorized, another user, unregistered chat', async () => {
      const chat = uniqueChat();
      const c = await h.connect();
      const token = await h.token(1);
      await c.register(token, chat);
      const junk = await c.request({ type: 'refresh', token: 'junk' }, { type: 'error' });
      assert.equal(junk.code, 'unauthorized');
      assert.equal(junk.op, 'refresh');
      const other = await c.request({ type: 'refresh', token: await h.token(3) }, { type: 'error' });
      assert.equal(other.code, 'forbidden');
      const notMine = await c.request({ type: 'refresh', token, chat_id: uniqueChat() }, { type: 'error' });
      assert.equal(notMine.code, 'not_registered');
      assert.equal((await c.request({ type: 'refresh' }, { type: 'error' })).code, 'bad_request');
      await c.request({ type: 'message', data: { id: `kept-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      assert.equal(h.api.requests.filter((r) => r.op === 'save').at(-1)!.headers.authorization, `Bearer ${token}`);
      c.close();
    });

    it('a refused refresh costs one main-API call, not one per registered chat', async () => {
      const c = await h.connect();
      const token = await h.token(1, { expiresInSec: 60 });
      const chats = Array.from({ length: 12 }, () => uniqueChat());
      for (const chat of chats) await c.register(token, chat);
      const before = h.api.requests.filter((r) => r.op === 'verify').length;
      assert.equal((await c.request({ type: 'refresh', token: 'junk' }, { type: 'error' })).code, 'unauthorized');
      await new Promise((r) => setTimeout(r, 200)); // nothing more trails it
      assert.equal(h.api.requests.filter((r) => r.op === 'verify').length, before + 1);
      // A good one still covers every chat.
      const fresh = await h.token(1, { expiresInSec: 61 });
      const answer = await c.request({ type: 'refresh', token: fresh }, (f) => f.type === 'refreshed' || f.type === 'error');
      assert.deepEqual(new Set(answer.chat_ids as number[]), new Set(chats));
      assert.equal(h.api.requests.filter((r) => r.op === 'verify').length, before + 1 + chats.length);
      c.close();
    });

    it('an opaque token is verified again every AUTH_CACHE_TTL_MS; once the main API refuses it, the registration ends', async () => {
      const chat = uniqueChat();
      const watcher = await h.member(2, chat);
      const opaque = h.api.mintOpaqueToken(1);
      const c = await h.connect();
      const before = verifies(chat);
      await c.register(opaque, chat);
      await waitFor(() => verifies(chat) >= before + 3, 5000, 'two re-verifies');
      assert.equal(c.all({ type: 'unregistered' }).length, 0);
      h.api.revokeOpaqueToken(opaque);
      const ended = await c.next({ type: 'unregistered', chat_id: chat }, 3000);
      assert.equal(ended.reason, 'unauthorized');
      await watcher.next(presence(1, 'offline'));
      c.close();
      watcher.close();
    });

    it('a main API failing the re-verifies keeps the registrations, and the failures cost a log line per 10 s, not one per registration', async () => {
      const c = await h.connect();
      const chats = Array.from({ length: 8 }, () => uniqueChat());
      const opaque = h.api.mintOpaqueToken(1);
      for (const chat of chats) await c.register(opaque, chat);
      const lines = () => h.instances[0]!.logs.join('').split('\n').filter((l) => l.includes('"msg":"token re-verify failed; trying again"')).length;
      const before = lines();
      h.api.addFault({ op: 'verify', status: 503, times: 1000 });
      try {
        // 8 registrations, each re-verified within 600 ms: a failure each (retried 5 s later).
        const failing = chats.map(verifies);
        await waitFor(() => chats.every((chat, i) => verifies(chat) > failing[i]!), 5000, 'a failed re-verify of every registration');
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(lines() - before, 1, 'one log line for all of them');
        assert.equal(c.all({ type: 'unregistered' }).length, 0);
      } finally {
        h.api.clearFaults();
      }
      c.close();
    });
  });
}

// Engine-independent (the connection's own deadlines and the verify cache): the memory engine only.
describe('credentials: which token a registration holds, and until when', () => {
  const TTL = 4000;
  const h = useHarness('memory', { AUTH_CACHE_TTL_MS: String(TTL), UPSTREAM_TIMEOUT_MS: '10000', RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });

  it('a refresh for one chat does not hold off the expiry of another chat\'s token', async () => {
    const [expiring, other] = [uniqueChat(), uniqueChat()];
    const c = await h.connect();
    const short = await h.token(1, { expiresInSec: 3 });
    await c.register(short, expiring);
    await c.register(await h.token(1, { expiresInSec: 60 }), other);
    h.api.addFault({ op: 'verify', delayMs: 6000, status: 200, body: { user_id: 1 }, times: 1 });
    try {
      const refresh = c.request({ type: 'refresh', chat_id: other, token: await h.token(1, { expiresInSec: 61 }) }, (f) => f.type === 'refreshed' || f.type === 'error', 9000);
      const ended = await c.next({ type: 'unregistered', chat_id: expiring }, 5000);
      assert.equal(ended.reason, 'token_expired');
      const late = Date.now() - decodeJwt(short).exp! * 1000;
      assert.ok(late < 2000, `ended ${late} ms after exp`);
      assert.equal(c.all({ type: 'refreshed' }).length, 0, 'it waited for the other chat\'s refresh');
      assert.deepEqual(await refresh, { type: 'refreshed', chat_ids: [other] });
    } finally {
      h.api.clearFaults();
    }
    c.close();
  });

  it('a refresh received before a re-register but answered after it does not put its older token in place of the re-register\'s', async () => {
    const chat = uniqueChat();
    const c = await h.connect();
    await c.register(await h.token(1, { expiresInSec: 60 }), chat);
    const older = await h.token(1, { expiresInSec: 4 });
    const newer = await h.token(1, { expiresInSec: 3600 });
    h.api.addFault({ op: 'verify', delayMs: 1500, status: 200, body: { user_id: 1 }, times: 1 });
    try {
      const refresh = c.request({ type: 'refresh', chat_id: chat, token: older }, (f) => f.type === 'refreshed' || f.type === 'error', 5000);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await c.request({ type: 'register', token: newer, chat_id: chat }, (f) => f.type === 'registered' || f.type === 'error')).type, 'registered');
      assert.equal((await refresh).type, 'refreshed');
    } finally {
      h.api.clearFaults();
    }
    await new Promise((r) => setTimeout(r, Math.max(0, decodeJwt(older).exp! * 1000 + 1500 - Date.now()))); // past the older token's exp and the 1 s deadline tick
    assert.equal(c.all({ type: 'unregistered' }).length, 0, 'the refresh put its older token back');
    await c.request({ type: 'message', data: { id: `newer-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
    assert.equal(h.api.requests.filter((r) => r.op === 'save').at(-1)!.headers.authorization, `Bearer ${newer}`);
    c.close();
  });

  it('an opaque token\'s re-verify due while a refresh of its chat is under way waits for it: the old token refused meanwhile does not end the refreshed registration', async () => {
    const chat = uniqueChat();
    const old = h.api.mintOpaqueToken(1);
    const fresh = h.api.mintOpaqueToken(1);
    const c = await h.connect();
    await c.register(old, chat);
    await new Promise((r) => setTimeout(r, TTL - 1000));
    h.api.revokeOpaqueToken(old);
    // The refresh's verify takes until well past the old token's re-verify (due at TTL + up to 10 %).
    h.api.addFault({ op: 'verify', delayMs: 3000, status: 200, body: { user_id: 1 }, times: 1 });
    try {
      assert.deepEqual(await c.request({ type: 'refresh', chat_id: chat, token: fresh }, (f) => f.type === 'refreshed' || f.type === 'error', 8000), { type: 'refreshed', chat_ids: [chat] });
    } finally {
      h.api.clearFaults();
    }
    assert.equal(c.all({ type: 'unregistered' }).length, 0, 'the old token\'s re-verify ended the registration during the refresh');
    await c.request({ type: 'message', data: { id: `opaque-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
    c.close();
  });

  it('an opaque token accepted from the verify cache is re-verified a TTL after the main API\'s answer, not a TTL after the cache\'s', async () => {
    const chat = uniqueChat();
    const opaque = h.api.mintOpaqueToken(1);
    const c = await h.connect();
    await c.register(opaque, chat);
    const verifiedAt = Date.now();
    await new Promise((r) => setTimeout(r, TTL - 500));
    h.api.revokeOpaqueToken(opaque);
    // Answered from the cache (verified TTL - 500 ms ago): it must not push the re-verify a TTL further.
    assert.deepEqual(await c.request({ type: 'refresh', chat_id: chat, token: opaque }, (f) => f.type === 'refreshed' || f.type === 'error'), { type: 'refreshed', chat_ids: [chat] });
    const ended = await c.next({ type: 'unregistered', chat_id: chat }, 2 * TTL);
    assert.equal(ended.reason, 'unauthorized');
    const after = Date.now() - verifiedAt;
    // Due at TTL + up to 10 % jitter, seen within the deadlines' 1 s tick; a TTL from the refresh would be ≥ 2 TTL - 500 ms.
    assert.ok(after < TTL * 1.1 + 1700, `re-verified ${after} ms after the main API's answer`);
    c.close();
  });
});

describe('credentials: an older token refused does not end a registration holding a newer one', () => {
  const h = useHarness('memory', { RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });

  it('a re-register whose token the main API refuses (401), answered after a later refresh was applied, gets its error; the registration keeps the refreshed token', async () => {
    const chat = uniqueChat();
    const c = await h.connect();
    await c.register(await h.token(1, { expiresInSec: 60 }), chat);
    const refused = h.api.mintOpaqueToken(1);
    h.api.revokeOpaqueToken(refused);
    const fresh = await h.token(1, { expiresInSec: 61 });
    h.api.addFault({ op: 'save', delayMs: 1000, times: 1 });
    try {
      c.send({ type: 'message', data: { id: `held-${chat}`, ciphertext: 'x' } }); // the re-register waits behind it
      const again = c.request({ type: 'register', token: refused, chat_id: chat }, (f) => f.type === 'error' && f.op === 'register', 5000);
      assert.deepEqual(await c.request({ type: 'refresh', chat_id: chat, token: fresh }, (f) => f.type === 'refreshed' || f.type === 'error'), { type: 'refreshed', chat_ids: [chat] });
      assert.equal((await again).code, 'unauthorized');
    } finally {
      h.api.clearFaults();
    }
    await c.request({ type: 'message', data: { id: `after-${chat}`, ciphertext: 'x' } }, { type: 'ack', id: `after-${chat}` });
    assert.equal(c.all({ type: 'unregistered' }).length, 0, 'the refused older token ended the registration');
    assert.equal(h.api.requests.filter((r) => r.op === 'save').at(-1)!.headers.authorization, `Bearer ${fresh}`);
    c.close();
  });
});
