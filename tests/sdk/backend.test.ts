import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jwtClaims, refreshDelay } from '../../packages/client/src/client.js';
import { ClientError } from '../../packages/client/src/index.js';
import { ENGINE_MODES, uniqueChat, useHarness, waitFor, type Harness } from '../support/harness.js';
import { cuttablePair, fast, proxy, sdk, text, type Recorded } from './support.js';

/**
 * What the backend does to a client's session through the gateway, and the token's life:
 * the server API (`/api/v1`: revoke, disconnect, publish), token expiry (`token_expired`),
 * and the SDK's proactive `refresh` of a provider's JWT.
 */
const API_KEY = 'sdk-test-server-api-key';

/** Calls the gateway's server API (served on its own port under /api/v1). */
async function serverApi(h: Harness, path: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(`${h.instances[0]!.gateway.url}/api/v1${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const answer = (await res.json()) as Record<string, unknown>;
  assert.equal(res.status, 200, `POST ${path}: ${JSON.stringify(answer)}`);
  return answer;
}

const publish = (h: Harness, chatId: number, event: Record<string, unknown>) =>
  serverApi(h, `/chats/${chatId}/publish`, { event }) as Promise<{ seq: number; epoch: string }>;

/** Marks a promise expected to reject as handled (it is asserted on later). */
function observed<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** The main API got the save of message `id` (it may still be working on it). */
const savedAt = (h: Harness, id: string) => h.api.requests.some((r) => r.op === 'save' && (r.body as { id?: unknown }).id === id);

/** What the app saw of a chat, in order: "message:<id>", "event:<name>", "gap". */
function stream(r: Recorded): string[] {
  return r.events.flatMap((e) => {
    if (e.type === 'message') return [`message:${(e.event as { message: { id: string } }).message.id}`];
    if (e.type === 'event') return [`event:${String((e.event as { data: { name?: unknown } }).data.name)}`];
    if (e.type === 'gap') return ['gap'];
    return [];
  });
}

/** Users get ids of their own here: a disconnect closes every connection of its user. */
let nextUser = 500;
const user = () => ++nextUser;

describe('SDK token timing (pure)', () => {
  const jwt = (claims: Record<string, unknown>) => `h.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.s`;

  it('decodes exp/iat of a JWT (base64url, no verification); other tokens have none', () => {
    assert.deepEqual(jwtClaims(jwt({ sub: 'ü~~?', exp: 2000, iat: 1000 })), { exp: 2_000_000, iat: 1_000_000 });
    assert.deepEqual(jwtClaims(jwt({ exp: 5 })), { exp: 5000, iat: null });
    assert.equal(jwtClaims(jwt({ sub: '1' })), null);
    assert.equal(jwtClaims('opaque-token'), null);
    assert.equal(jwtClaims('a.%%%.c'), null);
  });

  it('refreshes 30 s before exp, or at 90 % of a shorter lifetime; an explicit lead is capped at half the lifetime', () => {
    const now = 1_000_000_000;
    const at = (lifetimeSec: number, leftSec = lifetimeSec) => jwt({ iat: (now - (lifetimeSec - leftSec) * 1000) / 1000, exp: (now + leftSec * 1000) / 1000 });
    assert.equal(refreshDelay(at(3600), undefined, now), 3_570_000);
    assert.equal(refreshDelay(at(60), undefined, now), 54_000);
    assert.equal(refreshDelay(at(3), 1500, now), 1500);
    assert.equal(refreshDelay(at(3), 10_000, now), 1500, 'capped at half the lifetime');
    assert.equal(refreshDelay(at(60, 2), undefined, now), 0, 'within the lead already: now');
    assert.equal(refreshDelay(at(60, -1), undefined, now), null, 'expired: nothing to refresh');
    // A clock behind the issuer's: never more than the lifetime left.
    assert.equal(refreshDelay(jwt({ iat: (now + 100_000) / 1000, exp: (now + 160_000) / 1000 }), undefined, now), 54_000);
    assert.equal(refreshDelay('opaque', undefined, now), null);
  });
});

for (const mode of ENGINE_MODES) {
  describe(`SDK and the backend: revoke, disconnect, events, token expiry and refresh [${mode}]`, () => {
    // Opaque tokens are verified again every half second (JWTs are watched by their exp instead).
    const h = useHarness(mode, { API_KEY, AUTH_CACHE_TTL_MS: '500' });

    it('a revoked chat is dropped, not registered again: its pending writes fail `revoked`, the other chats carry on', async () => {
      const chatId = uniqueChat();
      const other = uniqueChat();
      const [u1, u2] = [user(), user()];
      const p = await proxy(h);
      const a = await sdk(h, u1, { url: p.url, token: await h.token(u1) });
      const b = await sdk(h, u2, { token: await h.token(u2) });
      const chatA = a.client.chat(chatId);
      const otherA = a.client.chat(other);
      await Promise.all([chatA.ready(), otherA.ready(), b.client.chat(chatId).ready()]);
      // One write at the main API when the revoke comes, one waiting behind it in the outbox.
      h.api.addFault({ op: 'save', delayMs: 1500, times: 1 });
      const id = `rv-${chatId}`;
      const inFlight = observed(chatA.send(text('in flight'), { id }));
      const queued = observed(chatA.send(text('queued')));
      await waitFor(() => savedAt(h, id), 5000, 'the save at the main API');
      const answer = await serverApi(h, `/chats/${chatId}/revoke`, { user_id: u1 });
      assert.equal(answer.registrations, 1);
      const gone = await a.next('unregistered', (e) => e.chatId === chatId);
      assert.equal(gone.error.code, 'revoked');
      assert.equal(gone.reason, 'revoked');
      await assert.rejects(inFlight, (err: unknown) => err instanceof ClientError && err.code === 'revoked' && err.details.chatId === chatId);
      await assert.rejects(queued, { code: 'revoked' });
      assert.deepEqual(a.all('failed').map((e) => e.error.code), ['revoked', 'revoked']);
      // The app did not leave the chat: its handle keeps saying why it is gone.
      await assert.rejects(chatA.ready(), { code: 'revoked' });
      await assert.rejects(chatA.send(text('after')), { code: 'revoked' });
      await b.next('presence', (e) => e.userId === u1 && e.status === 'offline');
      // Anything the SDK did about it was sent before this round trip: no register of that chat.
      await a.client.ping();
      const registers = p.links.flatMap((l) => l.fromClient).filter((f) => f.type === 'register' && f.chat_id === chatId);
      assert.equal(registers.length, 1, 'registered once, never again');
      assert.equal(p.links.length, 1, 'the connection stayed up');
      assert.equal((await otherA.send(text('still here'))).duplicate, false);
      h.api.clearFaults();
    });

    it('4403 with a static token: the client gives up (disconnected, closeCode 4403) and never reconnects', async () => {
      const chatId = uniqueChat();
      const u = user();
      const p = await proxy(h);
      const a = await sdk(h, u, { url: p.url, ...fast, token: await h.token(u) });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      h.api.addFault({ op: 'save', hang: true, times: 1 });
      const id = `dc-${chatId}`;
      const pending = observed(chatA.send(text('cut short'), { id }));
      await waitFor(() => savedAt(h, id), 5000, 'the save at the main API');
      const answer = await serverApi(h, `/users/${u}/disconnect`, { reason: 'logged out everywhere' });
      assert.equal(answer.connections, 1);
      const final = await a.next('state', (e) => e.state === 'disconnected');
      assert.equal(final.code, 4403);
      assert.equal(final.retryInMs, null);
      assert.equal(final.error?.code, 'disconnected');
      assert.equal(final.error?.details.closeCode, 4403);
      assert.match(final.error?.message ?? '', /logged out everywhere/);
      await assert.rejects(pending, { code: 'disconnected' });
      assert.throws(() => a.client.chat(uniqueChat()), { code: 'disconnected' });
      assert.equal(p.links.length, 1, 'no second connection');
      h.api.clearFaults();
    });

    it('4403 with a provider: reconnects with the new token it returns; a provider that returns the refused token again gives up', async () => {
      const chatId = uniqueChat();
      const [u1, u2] = [user(), user()];
      const p = await proxy(h);
      const asked: string[] = [];
      const renewed = await sdk(h, u1, {
        url: p.url,
        ...fast,
        token: async () => {
          const token = await h.token(u1);
          asked.push(token);
          return token;
        },
      });
      const chat = renewed.client.chat(chatId);
      await chat.ready();
      const before = await chat.send(text('before'));
      const fixed = await h.token(u2);
      let stuckCalls = 0;
      const stuck = await sdk(h, u2, {
        url: p.url,
        ...fast,
        token: () => {
          stuckCalls++;
          return fixed; // a provider serving a cached token
        },
      });
      await stuck.client.chat(chatId).ready();
      assert.equal(p.links.length, 2);

      await serverApi(h, `/users/${u1}/disconnect`, {});
      const down = await renewed.next('state', (e) => e.state === 'disconnected');
      assert.equal(down.code, 4403);
      assert.equal(typeof down.retryInMs, 'number', 'will reconnect once it has a new token');
      await waitFor(() => renewed.all('registered').length === 2, 5000, 're-registered with the new token');
      assert.equal(asked.length, 2);
      const registers = p.links.flatMap((l) => l.fromClient).filter((f) => f.type === 'register');
      assert.deepEqual(
        registers.filter((f) => f.token === asked[0] || f.token === asked[1]).map((f) => f.token),
        [asked[0], asked[1]],
        'the refused token was never used again',
      );
      const after = await chat.send(text('after'));
      assert.equal(after.seq, before.seq! + 1);

      await serverApi(h, `/users/${u2}/disconnect`, {});
      const final = await stuck.next('state', (e) => e.retryInMs === null, 10_000);
      assert.equal(final.error?.code, 'disconnected');
      assert.equal(final.error?.details.closeCode, 4403);
      assert.match(final.error?.message ?? '', /returned the refused token again/);
      assert.equal(stuckCalls, 3, 'the 4403 and two more refusals of the same token: maxAuthFailures (3)');
      assert.equal(p.links.length, 3, 'the stuck client never connected again (the renewed one did once)');
    });

    it('published events are stream entries: delivered in seq order with the messages, replayed after a cut', async () => {
      const { chatId, p, a, b, chatA } = await cuttablePair(h, 'b');
      const start = b.client.chat(chatId).position!;
      const m1 = await chatA.send(text('m1'), { id: `m1-${chatId}` });
      const e1 = await publish(h, chatId, { name: 'renamed', title: 'New name' });
      const m2 = await chatA.send(text('m2'), { id: `m2-${chatId}` });
      assert.deepEqual([m1.seq, e1.seq, m2.seq], [start.seq + 1, start.seq + 2, start.seq + 3]);
      await b.next('message', (e) => e.message.id === m2.id);
      assert.deepEqual(stream(b), [`message:${m1.id}`, 'event:renamed', `message:${m2.id}`]);
      const event = b.all('event')[0]!;
      assert.deepEqual(event, { chatId, data: { name: 'renamed', title: 'New name' }, seq: e1.seq, epoch: e1.epoch });
      const onChat: unknown[] = [];
      b.client.chat(chatId).on('event', (e) => onChat.push(e.data.name));
      assert.deepEqual(b.client.chat(chatId).position, { seq: m2.seq, epoch: start.epoch });

      p.refusing = true;
      p.cut();
      await b.next('state', (e) => e.state === 'disconnected');
      const e2 = await publish(h, chatId, { name: 'member_added', user_id: 7 });
      const m3 = await chatA.send(text('m3'), { id: `m3-${chatId}` });
      const e3 = await publish(h, chatId, { name: 'member_removed', user_id: 7 });
      p.refusing = false;
      const again = await b.next('registered', (e) => e.recovered !== undefined, 10_000);
      assert.equal(again.recovered, true);
      assert.deepEqual(stream(b), [`message:${m1.id}`, 'event:renamed', `message:${m2.id}`, 'event:member_added', `message:${m3.id}`, 'event:member_removed']);
      assert.deepEqual(b.all('event').map((e) => e.seq), [e1.seq, e2.seq, e3.seq]);
      assert.deepEqual(onChat, ['member_added', 'member_removed'], 'the chat handle emits them too');
      assert.deepEqual(b.all('gap'), []);
      assert.deepEqual(b.client.chat(chatId).position, { seq: e3.seq, epoch: start.epoch });
      // The sender's position covers the events too (received live).
      await waitFor(() => a.client.chat(chatId).position?.seq === e3.seq, 5000, "the sender's position past the last event");
    });

    it('resumed from a position held below an edit, what was delivered after it comes again: events too, with the same (epoch, seq) to dedupe by', async () => {
      const chatId = uniqueChat();
      const [u1, u2] = [user(), user()];
      const b = await sdk(h, u2);
      const chatB = b.client.chat(chatId);
      await chatB.ready();
      const old = await chatB.send(text('v1'), { id: `old-${chatId}` }); // from before A's time
      const a = await sdk(h, u1);
      const chatA = a.client.chat(chatId);
      const start = (await chatA.ready()).position!;
      const edited = await chatB.edit(old.id, text('v2')); // held by A (its message is unknown to it)
      const e1 = await publish(h, chatId, { name: 'renamed' });
      const m = await chatB.send(text('after'), { id: `after-${chatId}` });
      await a.next('message', (e) => e.message.id === m.id);
      const first = a.all('event');
      assert.deepEqual(first.map((e) => [e.epoch, e.seq]), [[e1.epoch, e1.seq]]);
      assert.deepEqual(chatA.position, start, 'held below the edit');
      a.client.close();
      const a2 = await sdk(h, u1, { hold: { ms: 200 } });
      a2.client.chat(chatId, { since: chatA.position! });
      await a2.next('message', (e) => e.message.id === m.id);
      await a2.next('edit', (e) => e.seq === edited.seq, 3000);
      // The event has no id: only its (epoch, seq) — the same as when first delivered — tells it is a repeat.
      assert.deepEqual(a2.all('event').map((e) => [e.epoch, e.seq]), [[e1.epoch, e1.seq]]);
      assert.deepEqual(a2.all('gap'), []);
    });

    it('a static token that expires: the chat gets token_expired and is dropped (told, not registered again)', async () => {
      const chatId = uniqueChat();
      const u = user();
      const p = await proxy(h);
      const token = await h.token(u, { expiresInSec: 3 });
      const a = await sdk(h, u, { url: p.url, token });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      const gone = await a.next('unregistered', () => true, 10_000);
      assert.ok(Date.now() >= jwtClaims(token)!.exp, 'not before the exp');
      assert.equal(gone.error.code, 'token_expired');
      assert.equal(gone.reason, 'token_expired');
      await assert.rejects(chatA.send(text('too late')), { code: 'token_expired' });
      // Its only chat is gone, so the SDK closes the connection; nothing else was sent.
      await a.next('state', (e) => e.state === 'disconnected' && e.reason === 'no chats');
      assert.deepEqual(p.links[0]!.fromClient.map((f) => f.type), ['register']);
    });

    it('a provider-backed JWT is refreshed ahead of exp: the registration outlives the first token, no token_expired', async () => {
      const chatId = uniqueChat();
      const [u1, u2] = [user(), user()];
      const p = await proxy(h);
      const tokens: string[] = [];
      const a = await sdk(h, u1, {
        url: p.url,
        refreshLeadMs: 1500,
        token: async () => {
          tokens.push(await h.token(u1, { expiresInSec: 3 }));
          return tokens.at(-1)!;
        },
      });
      const b = await sdk(h, u2, { token: await h.token(u2) });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      await b.client.chat(chatId).ready();
      const firstExp = jwtClaims(tokens[0]!)!.exp;
      const link = p.links[0]!;
      await waitFor(() => link.fromGateway.some((f) => f.type === 'refreshed'), 5000, 'refreshed');
      const refresh = link.fromClient.find((f) => f.type === 'refresh')!;
      assert.equal(refresh.token, tokens[1]);
      assert.equal(refresh.chat_id, undefined, 'one refresh for every chat');
      assert.deepEqual(link.fromGateway.find((f) => f.type === 'refreshed')!.chat_ids, [chatId]);
      // Past the first token's exp (the gateway would have ended the registration by now).
      await waitFor(() => Date.now() > firstExp + 500, 5000, 'the first token expired');
      const ack = await chatA.send(text('still registered'));
      await b.next('message', (e) => e.message.id === ack.id);
      assert.deepEqual(link.fromGateway.filter((f) => f.type === 'unregistered'), [], 'no token_expired');
      assert.equal(a.all('registered').length, 1, 'never registered again');
      assert.equal(p.links.length, 1);
      assert.deepEqual(a.all('error'), []);
      // A chat opened later registers with the current token, not the first one.
      const later = a.client.chat(uniqueChat());
      await later.ready();
      const lastRegister = link.fromClient.filter((f) => f.type === 'register').at(-1)!;
      assert.notEqual(lastRegister.token, tokens[0]);
      assert.ok(tokens.includes(lastRegister.token as string));
    });

    it('a refresh whose new token never arrives: the next connection registers with it', async () => {
      const chatId = uniqueChat();
      const u = user();
      const p = await proxy(h);
      const tokens: string[] = [];
      const a = await sdk(h, u, {
        url: p.url,
        ...fast,
        refreshLeadMs: 1500,
        token: async () => {
          // A short-lived first token; the second one lives long enough not to be refreshed here.
          tokens.push(await h.token(u, { expiresInSec: tokens.length === 0 ? 3 : 60 }));
          return tokens.at(-1)!;
        },
      });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      p.hold((f) => f.type === 'refreshed');
      await waitFor(() => p.links[0]!.fromGateway.some((f) => f.type === 'refreshed'), 5000, 'refreshed (held back)');
      p.cut();
      await waitFor(() => a.all('registered').length === 2, 5000, 'registered again');
      assert.equal(tokens.length, 2, 'no third token: the second one was kept');
      assert.deepEqual(p.links[1]!.fromClient.find((f) => f.type === 'register')!.token, tokens[1]);
      p.release();
    });

    it('a refresh that keeps failing lets the token expire: the chat is registered again with a new token and since', async () => {
      const chatId = uniqueChat();
      const u = user();
      const p = await proxy(h);
      let calls = 0;
      const a = await sdk(h, u, {
        url: p.url,
        // 6 s tokens refreshed 3 s ahead: the three attempts fit before the expiry on a loaded
        // machine too (3 s tokens and 1.5 s left them too little room there).
        refreshLeadMs: 3000,
        token: () => {
          calls++;
          // The first token; three failed refresh attempts (the provider throws, then gives
          // another user's token twice, which the gateway refuses); a token after the expiry.
          if (calls === 2) throw new Error('identity provider down');
          return h.token(calls === 3 || calls === 4 ? u + 1000 : u, { expiresInSec: calls === 5 ? 60 : 6 });
        },
      });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      const sent = await chatA.send(text('before the expiry'));
      const failed = await a.next('error', () => true, 10_000);
      assert.match(String((failed.error as Error).message), /another user/);
      assert.match(failed.during, /token refresh/);
      await waitFor(() => a.all('registered').length === 2, 10_000, 'registered again after token_expired');
      assert.equal(calls, 5);
      const link = p.links[0]!;
      assert.equal(link.fromClient.filter((f) => f.type === 'refresh').length, 2);
      assert.deepEqual(
        link.fromGateway.filter((f) => f.type === 'error').map((f) => [f.op, f.code]),
        [['refresh', 'forbidden'], ['refresh', 'forbidden']],
      );
      assert.ok(link.fromGateway.some((f) => f.type === 'unregistered' && f.reason === 'token_expired'));
      const registers = link.fromClient.filter((f) => f.type === 'register');
      assert.equal(registers.length, 2);
      assert.deepEqual(registers[1]!.since, { seq: sent.seq, epoch: sent.epoch }, 'resumed where it was');
      assert.deepEqual(a.all('unregistered'), [], 'the app lost nothing');
      assert.equal(a.all('registered')[1]!.recovered, true);
      assert.equal((await chatA.send(text('after'))).duplicate, false);
    });

    it('an opaque token refused by the periodic re-verify: the provider is asked again and the chat re-registered', async () => {
      const chatId = uniqueChat();
      const u = user();
      const issued: string[] = [];
      const a = await sdk(h, u, {
        token: () => {
          issued.push(h.api.mintOpaqueToken(u));
          return issued.at(-1)!;
        },
      });
      const chatA = a.client.chat(chatId);
      await chatA.ready();
      h.api.revokeOpaqueToken(issued[0]!); // the session behind it ended at the backend
      await waitFor(() => a.all('registered').length === 2, 10_000, 'registered again with a new token');
      assert.equal(issued.length, 2);
      assert.deepEqual(a.all('unregistered'), []);
      assert.equal((await chatA.send(text('fine'))).duplicate, false);
    });
  });
}

describe('SDK: refreshes paced by the gateway [memory]', () => {
  const h = useHarness('memory');

  it('a refresh answered "refresh again in <n> ms" is sent again after n ms, not counted as a failed attempt: 100 chats keep their registrations', { timeout: 60_000 }, async () => {
    const u = user();
    const p = await proxy(h);
    const tokens: string[] = [];
    const a = await sdk(h, u, {
      url: p.url,
      refreshLeadMs: 12_000,
      token: async () => {
        tokens.push(await h.token(u, { expiresInSec: 20 }));
        return tokens.at(-1)!;
      },
    });
    const chats = Array.from({ length: 100 }, () => uniqueChat());
    await Promise.all(chats.map((c) => a.client.chat(c).ready()));
    // The refresh's first 99 verifies pass, its 100th meets a main-API blip: the refresh fails,
    // and the gateway paces the next one by its 99 extra verifies (4.95 s at 20 a second).
    h.api.addFault({ op: 'verify', times: 99 });
    h.api.addFault({ op: 'verify', status: 503, times: 1 });
    const link = p.links[0]!;
    await waitFor(() => link.fromGateway.some((f) => f.type === 'refreshed'), 30_000, `refreshed; got ${JSON.stringify(link.fromGateway.filter((f) => f.op === 'refresh'))}`);
    const answers = link.fromGateway.filter((f) => f.op === 'refresh').map((f) => String(f.message));
    assert.ok(answers.some((m) => /refresh again in \d+ ms/.test(m)), `paced at least once: ${JSON.stringify(answers)}`);
    assert.deepEqual(a.all('error'), [], 'the refresh did not give up');
    assert.equal(a.all('registered').length, 100, 'nothing re-registered');
    assert.deepEqual(link.fromGateway.filter((f) => f.type === 'unregistered'), []);
    const refreshes = link.fromClient.filter((f) => f.type === 'refresh');
    assert.equal(refreshes.at(-1)!.token, refreshes.at(-2)!.token, 'the paced token is sent again, the provider not asked again');
  });
});
