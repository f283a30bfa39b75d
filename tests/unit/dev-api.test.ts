/**
 * Tests of the development main API (dev-api/app.ts) over real HTTP on an ephemeral port.
 * Run: node --import tsx --test tests/unit/dev-api.test.ts
 */
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { HISTORY_LIMIT, MAX_DEVICES_PER_USER, startDevApi, type DevApi } from '../../dev-api/app.js';

let api: DevApi;

before(async () => {
  api = await startDevApi({ port: 0 });
});

after(async () => {
  await api.close();
});

beforeEach(() => {
  api.reset();
});

interface CallOptions {
  method?: string;
  token?: string;
  body?: unknown;
  rawBody?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

interface CallResult {
  status: number;
  text: string;
  json: unknown;
}

/** One HTTP call to the dev API, answering with status and (best-effort parsed) body. */
async function call(path: string, opts: CallOptions = {}): Promise<CallResult> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...opts.headers };
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  const body = opts.rawBody ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body));
  const res = await fetch(`${api.url}${path}`, {
    method: opts.method ?? 'POST',
    headers,
    body,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = text === '' ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}

function verify(token: string, chatId: string | number): Promise<CallResult> {
  return call('/auth/verify', { token, body: { token, chat_id: chatId } });
}

function save(token: string, message: Record<string, unknown>): Promise<CallResult> {
  return call('/chat/massage', { token, body: message });
}

function messagePath(chatId: string | number, messageId: string): string {
  return `/chat/${encodeURIComponent(String(chatId))}/messages/${encodeURIComponent(messageId)}`;
}

function message(id: string, chatId: string | number, senderId: string | number): Record<string, unknown> {
  return { id, chat_id: chatId, sender_id: senderId, message_type: 'text', ciphertext: 'c1', nonce: 'n1', envelopes: {} };
}

describe('verify', () => {
  test('a valid token answers 200 with a numeric user_id and the chat as given', async () => {
    const token = await api.mintToken(42);
    const res = await verify(token, 7);
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, { user_id: 42, chat_id: 7 });
  });

  test('a non-numeric subject stays a string', async () => {
    const token = await api.mintToken('alice');
    const res = await verify(token, 'room-1');
    assert.deepEqual(res.json, { user_id: 'alice', chat_id: 'room-1' });
  });

  test('the Authorization header is used when the body has no token', async () => {
    const token = await api.mintToken(5);
    const res = await call('/auth/verify', { token, body: { chat_id: 1 } });
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, { user_id: 5, chat_id: 1 });
  });

  test('a malformed or foreign-signed token is 401', async () => {
    assert.equal((await verify('not-a-jwt', 1)).status, 401);
    const other = await startDevApi({ secret: 'another-secret' });
    try {
      const foreign = await other.mintToken(1);
      assert.equal((await verify(foreign, 1)).status, 401);
    } finally {
      await other.close();
    }
  });

  test('an expired token is 401', async () => {
    const token = await api.mintToken(1, { expired: true });
    const res = await verify(token, 1);
    assert.equal(res.status, 401);
    assert.deepEqual(res.json, { error: 'token expired' });
  });

  test('a restricted chat is 403 for non-members and 200 for members', async () => {
    api.setMembers(9, [1, '2']);
    assert.equal((await verify(await api.mintToken(3), 9)).status, 403);
    assert.equal((await verify(await api.mintToken(2), 9)).status, 200);
    assert.equal((await verify(await api.mintToken(3), 10)).status, 200, 'other chats stay open');
    api.setMembers(9, null);
    assert.equal((await verify(await api.mintToken(3), 9)).status, 200, 'null reopens the chat');
  });
});

describe('save', () => {
  test('201 with the stored message, then 409 duplicate on resend', async () => {
    const token = await api.mintToken(1);
    const first = await save(token, { ...message('m1', 5, 1), extra: 'kept' });
    assert.equal(first.status, 201);
    const stored = first.json as Record<string, unknown>;
    assert.equal(stored.id, 'm1');
    assert.equal(stored.extra, 'kept', 'unknown fields pass through');
    assert.equal(typeof stored.saved_at, 'string');
    assert.equal(api.messages.get('m1')?.ciphertext, 'c1');

    const again = await save(token, message('m1', 5, 1));
    assert.equal(again.status, 409);
    // Whose and where: the gateway broadcasts a resend in place of a lost broadcast only for its own sender and chat.
    assert.deepEqual(again.json, { error: 'duplicate', sender_id: 1, chat_id: 5, deleted: false });
  });

  test('a new message is stored without an edited_at its sender put in (only an edit sets it); other fields as received', async () => {
    const token = await api.mintToken(1);
    const res = await save(token, { ...message('fresh', 5, 1), edited_at: '2020-01-01T00:00:00Z', extra: { x: 1 } });
    assert.equal(res.status, 201);
    assert.equal('edited_at' in (res.json as object), false);
    assert.equal('edited_at' in api.messages.get('fresh')!, false);
    assert.deepEqual(api.messages.get('fresh')!.extra, { x: 1 });
  });

  test('a sender_id other than the token user is 403 and nothing is stored', async () => {
    const token = await api.mintToken(1);
    const res = await save(token, message('m2', 5, 2));
    assert.equal(res.status, 403);
    assert.equal(api.messages.size, 0);
  });

  test('sender_id compares as a string', async () => {
    const token = await api.mintToken(1);
    assert.equal((await save(token, message('m3', 5, '1'))).status, 201);
  });

  test('missing token is 401, malformed message is 422, non-member is 403', async () => {
    assert.equal((await call('/chat/massage', { body: message('m4', 5, 1) })).status, 401);
    const token = await api.mintToken(1);
    assert.equal((await save(token, { chat_id: 5, sender_id: 1, ciphertext: 'c' })).status, 422);
    assert.equal((await save(token, { id: 'm4', chat_id: 5, sender_id: 1, ciphertext: 3 })).status, 422);
    assert.equal((await save(token, { id: 'm4', sender_id: 1, ciphertext: 'c' })).status, 422);
    api.setMembers(5, [2]);
    assert.equal((await save(token, message('m4', 5, 1))).status, 403);
  });
});

describe('edit and delete', () => {
  test('the sender edits; 200 with the updated message', async () => {
    const token = await api.mintToken(1);
    await save(token, message('m1', 5, 1));
    const res = await call(messagePath(5, 'm1'), {
      method: 'PATCH',
      token,
      body: { ciphertext: 'c2', nonce: 'n2', envelopes: { a: 1 }, edited_at: '2024-01-01T12:00:00Z' },
    });
    assert.equal(res.status, 200);
    const updated = res.json as Record<string, unknown>;
    assert.equal(updated.ciphertext, 'c2');
    assert.equal(updated.edited_at, '2024-01-01T12:00:00Z');
    assert.equal(updated.message_type, 'text', 'message_type is kept when not sent');
    assert.deepEqual(api.messages.get('m1')?.envelopes, { a: 1 });
  });

  test('edit by a non-sender is 403', async () => {
    await save(await api.mintToken(1), message('m1', 5, 1));
    const res = await call(messagePath(5, 'm1'), { method: 'PATCH', token: await api.mintToken(2), body: { ciphertext: 'x' } });
    assert.equal(res.status, 403);
    assert.equal(api.messages.get('m1')?.ciphertext, 'c1');
  });

  test('edit of an unknown message, or of a message in another chat, is 404', async () => {
    const token = await api.mintToken(1);
    assert.equal((await call(messagePath(5, 'nope'), { method: 'PATCH', token, body: { ciphertext: 'x' } })).status, 404);
    await save(token, message('m1', 5, 1));
    assert.equal((await call(messagePath(6, 'm1'), { method: 'PATCH', token, body: { ciphertext: 'x' } })).status, 404);
  });

  test('edit without ciphertext is 422; bad token is 401', async () => {
    const token = await api.mintToken(1);
    await save(token, message('m1', 5, 1));
    assert.equal((await call(messagePath(5, 'm1'), { method: 'PATCH', token, body: { nonce: 'n' } })).status, 422);
    assert.equal((await call(messagePath(5, 'm1'), { method: 'PATCH', token: 'bad', body: { ciphertext: 'x' } })).status, 401);
  });

  test('URL-encoded path parameters are decoded', async () => {
    const token = await api.mintToken(1);
    await save(token, message('m-1_x', 'a:b', 1));
    const path = messagePath('a:b', 'm-1_x');
    assert.ok(path.includes('a%3Ab'), 'the colon really travels encoded');
    const edited = await call(path, { method: 'PATCH', token, body: { ciphertext: 'c2' } });
    assert.equal(edited.status, 200);
    const deleted = await call(path, { method: 'DELETE', token });
    assert.equal(deleted.status, 200);
    assert.deepEqual(deleted.json, { id: 'm-1_x', deleted: true });
  });

  test('delete by the sender, then a second delete is 404', async () => {
    const token = await api.mintToken(1);
    await save(token, message('m1', 5, 1));
    const other = await call(messagePath(5, 'm1'), { method: 'DELETE', token: await api.mintToken(2) });
    assert.equal(other.status, 403, 'only the sender may delete');
    const first = await call(messagePath(5, 'm1'), { method: 'DELETE', token });
    assert.equal(first.status, 200);
    assert.equal(api.messages.has('m1'), false);
    const second = await call(messagePath(5, 'm1'), { method: 'DELETE', token });
    assert.equal(second.status, 404);
    assert.deepEqual(second.json, { error: 'deleted', deleted: true, chat_id: 5, deleted_by: 1 }, 'the deleter is told: its resend after a lost answer');
    const byOther = await call(messagePath(5, 'm1'), { method: 'DELETE', token: await api.mintToken(2) });
    assert.equal(byOther.status, 404);
    assert.notEqual((byOther.json as { deleted?: unknown }).deleted, true, 'nobody else learns who deleted it');
    const elsewhere = await call(messagePath(6, 'm1'), { method: 'DELETE', token });
    assert.equal(elsewhere.status, 404);
    assert.notEqual((elsewhere.json as { deleted?: unknown }).deleted, true);
  });

  test('a resend of a deleted id is 409 duplicate and does not resurrect the message', async () => {
    const token = await api.mintToken(1);
    assert.equal((await save(token, message('m1', 5, 1))).status, 201);
    assert.equal((await call(messagePath(5, 'm1'), { method: 'DELETE', token })).status, 200);
    assert.ok(api.deleted.has('m1'), 'the deleted id is kept as a tombstone');

    const again = await save(token, { ...message('m1', 5, 1), ciphertext: 'resent' });
    assert.equal(again.status, 409, 'a deleted id was already saved: the gateway must not broadcast it again');
    assert.deepEqual(again.json, { error: 'duplicate', deleted: true });
    assert.equal(api.messages.has('m1'), false, 'the message stays deleted');
    const listed = (await call('/__messages', { method: 'GET' })).json as unknown[];
    assert.deepEqual(listed, []);

    // Still gone for edit and delete (on the old code the resend had brought it back: 200).
    const edit = await call(messagePath(5, 'm1'), { method: 'PATCH', token, body: { ciphertext: 'x' } });
    assert.equal(edit.status, 404);
    assert.equal((await call(messagePath(5, 'm1'), { method: 'DELETE', token })).status, 404);
    // Ids are unique across chats, so the tombstone holds in every chat.
    assert.equal((await save(token, message('m1', 6, 1))).status, 409);
    assert.equal(api.messages.size, 0);
  });

  test('edit of a deleted message is 404 and changes nothing', async () => {
    const token = await api.mintToken(1);
    await save(token, message('m1', 5, 1));
    assert.equal((await call(messagePath(5, 'm1'), { method: 'DELETE', token })).status, 200);
    const edit = await call(messagePath(5, 'm1'), { method: 'PATCH', token, body: { ciphertext: 'x' } });
    assert.equal(edit.status, 404);
    assert.deepEqual(edit.json, { error: 'message not found' });
    assert.equal(api.messages.has('m1'), false);
  });

  test('reset() forgets tombstones: the id can be saved again', async () => {
    const token = await api.mintToken(1);
    await save(token, message('m1', 5, 1));
    await call(messagePath(5, 'm1'), { method: 'DELETE', token });
    api.reset();
    assert.equal(api.deleted.size, 0);
    assert.equal((await save(token, message('m1', 5, 1))).status, 201);
  });
});

describe('faults', () => {
  test('delayMs delays, then the request is processed normally', async () => {
    api.addFault({ op: 'verify', delayMs: 150 });
    const started = Date.now();
    const res = await verify(await api.mintToken(1), 1);
    assert.equal(res.status, 200);
    assert.ok(Date.now() - started >= 100, 'the answer was delayed');
  });

  test('status answers that status with a default error body', async () => {
    api.addFault({ op: 'save', status: 503 });
    const res = await save(await api.mintToken(1), message('m1', 5, 1));
    assert.equal(res.status, 503);
    assert.deepEqual(res.json, { error: 'Service Unavailable' });
    assert.equal(api.messages.size, 0, 'a faulted save stores nothing');
  });

  test('status with a body answers that body', async () => {
    api.addFault({ status: 429, body: { error: 'slow down' } });
    const res = await verify(await api.mintToken(1), 1);
    assert.equal(res.status, 429);
    assert.deepEqual(res.json, { error: 'slow down' });
  });

  test('body alone answers 200 with it (a main API that lies)', async () => {
    api.addFault({ op: 'verify', body: { user_id: { x: 1 } } });
    const res = await verify(await api.mintToken(1), 1);
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, { user_id: { x: 1 } });
  });

  test('a string body is sent verbatim (malformed JSON)', async () => {
    api.addFault({ op: 'verify', body: '{"user_id":' });
    const res = await verify(await api.mintToken(1), 1);
    assert.equal(res.status, 200);
    assert.equal(res.text, '{"user_id":');
  });

  test('hang never answers; the client gives up', async () => {
    api.addFault({ op: 'verify', hang: true });
    const token = await api.mintToken(1);
    await assert.rejects(
      call('/auth/verify', { token, body: { token, chat_id: 1 }, signal: AbortSignal.timeout(200) }),
      (err: Error) => err.name === 'TimeoutError',
    );
    assert.equal(api.requests.length, 1, 'the hanging request was still recorded');
  });

  test('times counts down and the fault is then removed', async () => {
    api.addFault({ op: 'verify', status: 500, times: 2 });
    const token = await api.mintToken(1);
    assert.equal((await verify(token, 1)).status, 500);
    assert.equal((await verify(token, 1)).status, 500);
    assert.equal((await verify(token, 1)).status, 200);
  });

  test('faults match by op, first match wins, and clearFaults removes them', async () => {
    api.addFault({ op: 'save', status: 502 });
    api.addFault({ op: 'any', status: 504, times: 1 });
    api.addFault({ op: 'verify', status: 500 });
    const token = await api.mintToken(1);
    assert.equal((await verify(token, 1)).status, 504, '"any" is earlier in the list');
    assert.equal((await verify(token, 1)).status, 500);
    assert.equal((await save(token, message('m1', 5, 1))).status, 502);
    api.clearFaults();
    assert.equal((await verify(token, 1)).status, 200);
  });

  test('the caller\'s fault object is not mutated and bad faults are rejected', () => {
    const fault = { status: 500, times: 1 };
    api.addFault(fault);
    assert.equal(fault.times, 1);
    assert.throws(() => api.addFault({ status: 99 }), TypeError);
    assert.throws(() => api.addFault({ delay: 10 } as unknown as { delayMs: number }), /unknown fault field/);
  });

  test('faults can be set over HTTP', async () => {
    const set = await call('/__faults', { body: { op: 'delete', status: 500, times: 1 } });
    assert.equal(set.status, 201);
    assert.equal((await call('/__faults', { body: { op: 'nope' } })).status, 422);
    const token = await api.mintToken(1);
    assert.equal((await call(messagePath(1, 'x'), { method: 'DELETE', token })).status, 500);
    assert.equal((await call(messagePath(1, 'x'), { method: 'DELETE', token })).status, 404);
    await call('/__faults', { body: { status: 500 } });
    assert.equal((await call('/__faults', { method: 'DELETE' })).status, 200);
    assert.equal((await verify(token, 1)).status, 200);
  });
});

describe('recording and control', () => {
  test('requests are recorded in order with lower-cased headers', async () => {
    const token = await api.mintToken(1);
    await call('/auth/verify', { token, body: { token, chat_id: 1 }, headers: { 'X-Request-Id': 'req-1' } });
    await call('/chat/massage', { token, body: message('m1', 1, 1), headers: { 'X-Request-Id': 'req-2' } });
    await call(messagePath(1, 'm1'), { method: 'DELETE', token, headers: { 'X-Request-Id': 'req-3' } });
    await api.waitForRequests(3);
    assert.deepEqual(api.requests.map((r) => r.op), ['verify', 'save', 'delete']);
    const [first] = api.requests;
    assert.ok(first);
    assert.equal(first.method, 'POST');
    assert.equal(first.path, '/auth/verify');
    assert.equal(first.headers['x-request-id'], 'req-1');
    assert.equal(first.headers.authorization, `Bearer ${token}`);
    assert.match(first.headers['content-type'] ?? '', /application\/json/);
    assert.deepEqual(first.body, { token, chat_id: 1 });
    assert.equal(api.requests[2]?.headers['x-request-id'], 'req-3');
  });

  test('control endpoints are not recorded; unknown paths are recorded as other and 404', async () => {
    assert.equal((await call('/healthz', { method: 'GET' })).status, 200);
    assert.equal((await call('/dev/token', { body: { user_id: 1 } })).status, 200);
    assert.equal(api.requests.length, 0);
    assert.equal((await call('/unknown', { method: 'GET' })).status, 404);
    assert.equal(api.requests[0]?.op, 'other');
  });

  test('waitForRequests resolves on arrival and rejects on timeout', async () => {
    const waiting = api.waitForRequests(1, 1000);
    await verify(await api.mintToken(1), 1);
    await waiting;
    await assert.rejects(api.waitForRequests(5, 50), /wanted 5/);
  });

  test('/dev/token mints a token the API accepts', async () => {
    const res = await call('/dev/token', { body: { user_id: 77, expires_in: 60 } });
    const { token } = res.json as { token: string };
    assert.deepEqual((await verify(token, 1)).json, { user_id: 77, chat_id: 1 });
    assert.equal((await call('/dev/token', { body: {} })).status, 422);
  });

  test('memberships can be set over HTTP', async () => {
    const put = await call(`/__chats/${encodeURIComponent('a:b')}/members`, { method: 'PUT', body: { user_ids: [2] } });
    assert.equal(put.status, 200);
    assert.equal((await verify(await api.mintToken(1), 'a:b')).status, 403);
    await call(`/__chats/${encodeURIComponent('a:b')}/members`, { method: 'PUT', body: { user_ids: null } });
    assert.equal((await verify(await api.mintToken(1), 'a:b')).status, 200);
  });

  test('invalid JSON is 400 and a body over 1 MiB is 413', async () => {
    assert.equal((await call('/auth/verify', { rawBody: '{nope' })).status, 400);
    const big = JSON.stringify({ token: 'x', chat_id: 1, pad: 'a'.repeat(1024 * 1024) });
    assert.equal((await call('/auth/verify', { rawBody: big })).status, 413);
    assert.equal((await call('/healthz', { method: 'GET' })).status, 200, 'the server is still fine');
  });
});

describe('HTTP details', () => {
  test('a body that is not JSON is recorded as its text; faults act before it is refused', async () => {
    assert.equal((await call('/auth/verify', { rawBody: '{nope' })).status, 400);
    assert.equal(api.requests[0]?.body, '{nope');
    api.addFault({ op: 'save', status: 503, times: 1 });
    assert.equal((await call('/chat/massage', { rawBody: '{nope' })).status, 503, 'the fault stands in for the network');
    const big = 'a'.repeat(1024 * 1024 + 1);
    assert.equal((await call('/chat/massage', { rawBody: big })).status, 413);
    assert.deepEqual(api.requests.map((r) => [r.op, r.body]), [['verify', '{nope'], ['save', '{nope'], ['save', undefined]]);
  });

  test('bodies are JSON whatever their content type', async () => {
    const token = await api.mintToken(1);
    const res = await call('/auth/verify', { token, rawBody: JSON.stringify({ token, chat_id: 3 }), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.deepEqual(res.json, { user_id: 1, chat_id: 3 });
  });

  test('unknown routes are 404 JSON: a wrong method, an empty id, HEAD', async () => {
    const token = await api.mintToken(1);
    for (const [method, path] of [['GET', '/auth/verify'], ['PATCH', '/chat//messages/m1'], ['DELETE', '/chat/5/messages/m1/x'], ['HEAD', '/healthz'], ['GET', '/chats//devices']] as const) {
      const res = await call(path, { method, token });
      assert.equal(res.status, 404, `${method} ${path}`);
      if (method !== 'HEAD') assert.deepEqual(res.json, { error: `no route for ${method} ${path}` });
    }
    assert.deepEqual(api.requests.map((r) => r.path), ['/auth/verify', '/chat//messages/m1', '/chat/5/messages/m1/x'], 'control and client paths are not recorded');
    assert.ok(api.requests.every((r) => r.op === 'other'));
  });

  test('the dev conveniences validate their bodies: 422 with the reason', async () => {
    assert.deepEqual((await call('/dev/token', { body: { user_id: 1, expires_in: 0 } })).json, { error: 'expires_in must be a positive number of seconds' });
    assert.deepEqual((await call('/dev/token', { body: [1] })).json, { error: 'user_id (number or string) is required' });
    const members = await call('/__chats/5/members', { method: 'PUT', body: { user_ids: [true] } });
    assert.equal(members.status, 422);
    assert.deepEqual(members.json, { error: 'user_ids must be an array of ids, or null for an open chat' });
  });

  test('an opaque token is accepted until revoked', async () => {
    const token = api.mintOpaqueToken('alice');
    assert.deepEqual((await verify(token, 1)).json, { user_id: 'alice', chat_id: 1 });
    api.revokeOpaqueToken(token);
    assert.deepEqual((await verify(token, 1)).json, { error: 'invalid token' });
    assert.equal((await verify('opaque-never-minted', 1)).status, 401);
  });
});

describe('routes for clients: device keys and chat history', () => {
  async function publicKey(): Promise<string> {
    const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
    return Buffer.from(await crypto.subtle.exportKey('raw', pair.publicKey)).toString('base64');
  }

  test('PUT /devices/{id}/key stores the key; another user cannot take the device id', async () => {
    const [alice, bob, key] = [await api.mintToken(1), await api.mintToken(2), await publicKey()];
    const put = await call('/devices/dev-a1/key', { method: 'PUT', token: alice, body: { public_key: key } });
    assert.equal(put.status, 200);
    assert.deepEqual({ ...(put.json as object), updated_at: 'x' }, { device_id: 'dev-a1', user_id: 1, public_key: key, updated_at: 'x' });
    assert.equal(api.devices.get('dev-a1')?.public_key, key);
    const replaced = await publicKey();
    assert.equal((await call('/devices/dev-a1/key', { method: 'PUT', token: alice, body: { public_key: replaced } })).status, 200, 'the owner may replace its key');
    assert.equal((await call('/devices/dev-a1/key', { method: 'PUT', token: bob, body: { public_key: key } })).status, 403);
    assert.equal(api.devices.get('dev-a1')?.public_key, replaced);
    assert.equal(api.requests.length, 0, 'client routes are not recorded as gateway calls');
  });

  test('a user keeps at most MAX_DEVICES_PER_USER devices: a new one evicts the least recently published', async () => {
    const [alice, bob, key] = [await api.mintToken(1), await api.mintToken(2), await publicKey()];
    const publish = async (token: string, id: string) => assert.equal((await call(`/devices/${id}/key`, { method: 'PUT', token, body: { public_key: key } })).status, 200, id);
    await publish(bob, 'b0');
    for (let i = 0; i < MAX_DEVICES_PER_USER + 2; i++) await publish(alice, `a${i}`);
    const aliceDevices = () => [...api.devices.values()].filter((d) => d.user_id === 1).map((d) => d.device_id);
    assert.deepEqual(aliceDevices(), Array.from({ length: MAX_DEVICES_PER_USER }, (_, i) => `a${i + 2}`), 'a0 and a1 were evicted');
    await publish(alice, 'a2'); // a login publishes again: a2 is now the most recent
    await publish(alice, 'new');
    assert.equal(aliceDevices().length, MAX_DEVICES_PER_USER);
    assert.ok(!aliceDevices().includes('a3') && aliceDevices().includes('a2'), 'a3, not a2, was the least recently published');
    assert.ok(api.devices.has('b0'), "another user's devices are not touched");
    assert.equal((await verify(bob, 5)).status, 200);
    const listed = await call('/chats/5/devices', { method: 'GET', token: alice });
    assert.equal((listed.json as { devices: unknown[] }).devices.length, MAX_DEVICES_PER_USER + 1, "a chat lists at most MAX_DEVICES_PER_USER of a user's devices");
  });

  test('device keys are validated: 401 without a token, 422 for anything but a P-256 point, 400 for a bad id', async () => {
    const token = await api.mintToken(1);
    const key = await publicKey();
    assert.equal((await call('/devices/d1/key', { method: 'PUT', body: { public_key: key } })).status, 401);
    const offCurve = Buffer.alloc(65, 1);
    offCurve[0] = 4;
    for (const bad of [undefined, 42, 'abc', Buffer.alloc(65).toString('base64'), offCurve.toString('base64'), key.slice(0, -4)]) {
      assert.equal((await call('/devices/d1/key', { method: 'PUT', token, body: { public_key: bad } })).status, 422, String(bad));
    }
    assert.equal((await call(`/devices/${encodeURIComponent('a b')}/key`, { method: 'PUT', token, body: { public_key: key } })).status, 400);
    assert.equal((await call('/devices/d1/key', { method: 'GET', token })).status, 404);
    assert.equal(api.devices.size, 0);
  });

  test('GET /chats/{id}/devices lists the devices of users who joined the chat, plus the caller', async () => {
    const [alice, bob, carol] = [await api.mintToken(1), await api.mintToken(2), await api.mintToken(3)];
    for (const [token, device] of [[alice, 'a1'], [alice, 'a2'], [bob, 'b1'], [carol, 'c1']] as const) {
      assert.equal((await call(`/devices/${device}/key`, { method: 'PUT', token, body: { public_key: await publicKey() } })).status, 200);
    }
    assert.equal((await verify(bob, 5)).status, 200); // Bob joins chat 5 (the gateway's verify)
    const res = await call('/chats/5/devices', { method: 'GET', token: alice });
    assert.equal(res.status, 200);
    const { chat_id, devices } = res.json as { chat_id: string; devices: Array<{ device_id: string; user_id: number; public_key: string }> };
    assert.equal(chat_id, '5');
    assert.deepEqual(devices.map((d) => [d.device_id, d.user_id]).sort(), [['a1', 1], ['a2', 1], ['b1', 2]], 'Carol never joined');
    assert.ok(devices.every((d) => d.public_key === api.devices.get(d.device_id)?.public_key));
    assert.equal((await call('/chats/5/devices', { method: 'GET' })).status, 401);
  });

  test('a member list decides whose devices are listed and who may ask', async () => {
    const [alice, carol] = [await api.mintToken(1), await api.mintToken(3)];
    await call('/devices/a1/key', { method: 'PUT', token: alice, body: { public_key: await publicKey() } });
    await call('/devices/c1/key', { method: 'PUT', token: carol, body: { public_key: await publicKey() } });
    api.setMembers(6, [1, 2, 3]);
    const res = await call('/chats/6/devices', { method: 'GET', token: alice });
    assert.deepEqual((res.json as { devices: Array<{ device_id: string }> }).devices.map((d) => d.device_id).sort(), ['a1', 'c1']);
    api.setMembers(6, [2]);
    assert.equal((await call('/chats/6/devices', { method: 'GET', token: alice })).status, 403);
    assert.equal((await call('/chats/6/messages', { method: 'GET', token: alice })).status, 403);
  });

  test('GET /chats/{id}/messages lists the chat\'s stored messages in save order, without deleted ones', async () => {
    const alice = await api.mintToken(1);
    for (const id of ['m1', 'm2', 'm3']) assert.equal((await save(alice, message(id, 7, 1))).status, 201);
    assert.equal((await save(alice, message('other', 8, 1))).status, 201);
    await call(messagePath(7, 'm2'), { method: 'DELETE', token: alice });
    await call(messagePath(7, 'm1'), { method: 'PATCH', token: alice, body: { ciphertext: 'c2', nonce: 'n2', envelopes: { d: {} } } });
    const res = await call('/chats/7/messages', { method: 'GET', token: await api.mintToken(2) });
    assert.equal(res.status, 200);
    const { messages } = res.json as { messages: Array<{ id: string; ciphertext: string; envelopes: unknown }> };
    assert.deepEqual(messages.map((m) => [m.id, m.ciphertext]), [['m1', 'c2'], ['m3', 'c1']]);
    assert.deepEqual(messages[0]?.envelopes, { d: {} });
    assert.equal((await call('/chats/7/messages', { method: 'GET', token: 'nope' })).status, 401);
  });

  test('GET /chats/{id}/messages answers the newest HISTORY_LIMIT, or ?limit=N, and says when there are older ones', async () => {
    for (let i = 0; i < HISTORY_LIMIT + 5; i++) api.messages.set(`h${i}`, { ...message(`h${i}`, 11, 1), ciphertext: `c${i}` } as never);
    const token = await api.mintToken(1);
    const page = async (query: string) => (await call(`/chats/11/messages${query}`, { method: 'GET', token })).json as { messages: Array<{ id: string }>; more: boolean };
    const all = await page('');
    assert.equal(all.messages.length, HISTORY_LIMIT);
    assert.deepEqual([all.messages[0]?.id, all.messages.at(-1)?.id, all.more], ['h5', `h${HISTORY_LIMIT + 4}`, true]);
    const three = await page('?limit=3');
    assert.deepEqual([three.messages.map((m) => m.id), three.more], [[`h${HISTORY_LIMIT + 2}`, `h${HISTORY_LIMIT + 3}`, `h${HISTORY_LIMIT + 4}`], true]);
    assert.equal((await page(`?limit=${HISTORY_LIMIT + 5}`)).more, undefined, 'past the limit: 400');
    for (const bad of ['0', '-1', 'x', `${HISTORY_LIMIT + 1}`]) assert.equal((await call(`/chats/11/messages?limit=${bad}`, { method: 'GET', token })).status, 400, bad);
    // Paging back with `before`: the page before the newest, then the rest, down to the first.
    const older = await page(`?before=${all.messages[0]!.id}`);
    assert.deepEqual([older.messages.map((m) => m.id), older.more], [['h0', 'h1', 'h2', 'h3', 'h4'], false]);
    const middle = await page('?limit=2&before=h3');
    assert.deepEqual([middle.messages.map((m) => m.id), middle.more], [['h1', 'h2'], true]);
    assert.equal((await call('/chats/11/messages?before=nope', { method: 'GET', token })).status, 404);
    api.messages.clear();
    assert.deepEqual(await page('?limit=3'), { chat_id: '11', messages: [], more: false } as never);
  });

  test('reset() forgets device keys and who joined', async () => {
    const alice = await api.mintToken(1);
    await call('/devices/a1/key', { method: 'PUT', token: alice, body: { public_key: await publicKey() } });
    await verify(alice, 9);
    api.reset();
    assert.equal(api.devices.size, 0);
    const res = await call('/chats/9/devices', { method: 'GET', token: alice });
    assert.deepEqual((res.json as { devices: unknown[] }).devices, []);
  });
});

/** One request to `port` on 127.0.0.1 with the `Host` header given (fetch sets its own). */
function withHost(port: number, host: string, method: string, path: string, body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers: { host, ...(body === undefined ? {} : { 'content-type': 'application/json' }) } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('DNS rebinding', () => {
  test('bound to a loopback address, a request addressed to another name is 421: no token, no key, nothing recorded', async () => {
    const rebound = `rebind.example:${api.port}`;
    const minted = await withHost(api.port, rebound, 'POST', '/dev/token', '{"user_id":1}');
    assert.equal(minted.status, 421);
    assert.doesNotMatch(minted.text, /token"/);
    const token = await api.mintToken(1);
    const key = Buffer.alloc(65, 0).toString('base64');
    assert.equal((await withHost(api.port, rebound, 'PUT', '/devices/d1/key', JSON.stringify({ public_key: key }))).status, 421);
    assert.equal((await withHost(api.port, rebound, 'POST', '/auth/verify', JSON.stringify({ token, chat_id: 1 }))).status, 421);
    for (const other of ['localhost.', `127.0.0.2:${api.port}`, `evil.localhost:${api.port}`]) {
      assert.equal((await withHost(api.port, other, 'GET', '/healthz')).status, 421, `Host: ${other}`);
    }
    assert.equal(api.requests.length, 0, 'a refused gateway call is not recorded');
    for (const name of ['localhost', '127.0.0.1', '[::1]', 'LOCALHOST']) {
      assert.equal((await withHost(api.port, `${name}:${api.port}`, 'GET', '/healthz')).status, 200, name);
    }
    assert.equal((await withHost(api.port, 'localhost', 'GET', '/healthz')).status, 200, 'no port');
  });

  test('bound to every interface (docker compose: HOST=0.0.0.0, called as http://dev-api:8000), any Host is answered', async () => {
    const open = await startDevApi({ port: 0, host: '0.0.0.0' });
    try {
      assert.equal((await withHost(open.port, 'dev-api:8000', 'GET', '/healthz')).status, 200);
    } finally {
      await open.close();
    }
  });
});

describe('close', () => {
  test('close() returns promptly while a request hangs', async () => {
    const own = await startDevApi();
    own.addFault({ hang: true });
    const token = await own.mintToken(1);
    const hanging = fetch(`${own.url}/auth/verify`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ token, chat_id: 1 }),
    }).then(
      () => 'answered',
      () => 'failed',
    );
    await own.waitForRequests(1);
    const started = Date.now();
    await own.close();
    assert.ok(Date.now() - started < 1000, 'close did not wait for the hanging request');
    assert.equal(await hanging, 'failed', 'the hanging socket was destroyed');
    await own.close(); // idempotent
  });
  test('control routes refuse browsers: a cross-site POST /__reset or /__faults (with an Origin header) changes nothing', async () => {
    const token = await api.mintToken(1);
    assert.equal((await save(token, message('kept', 5, 1))).status, 201);
    const reset = await call('/__reset', { headers: { origin: 'https://evil.example', 'content-type': 'text/plain' }, rawBody: '{}' });
    assert.equal(reset.status, 403);
    const fault = await call('/__faults', { headers: { origin: 'https://evil.example', 'content-type': 'text/plain' }, rawBody: '{"op":"save","status":503}' });
    assert.equal(fault.status, 403);
    const encoded = await call('/%5F%5Freset', { headers: { origin: 'https://evil.example', 'content-type': 'text/plain' }, rawBody: '{}' });
    assert.equal(encoded.status, 403, 'a percent-encoded spelling of the route');
    assert.equal(api.messages.has('kept'), true);
    assert.equal((await save(token, message('kept2', 5, 1))).status, 201, 'a fault was injected');
    // curl and tests (no Origin) still work.
    assert.equal((await call('/__faults', { method: 'GET' })).status, 200);
  });
});

describe('npm run dev-api (the CLI entry)', () => {
  test('signs with a secret made for this run unless DEV_API_SECRET is set: a token signed with the published default is refused', async () => {
    const { spawn } = await import('node:child_process');
    const { SignJWT } = await import('jose');
    const proc = spawn(process.execPath, ['--import', 'tsx', 'dev-api/main.ts'], {
      cwd: new URL('../..', import.meta.url),
      env: { PATH: process.env.PATH ?? '', PORT: '0', DEV_API_SECRET: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      let out = '';
      proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const started = Date.now();
      while (!out.includes('dev-api listening') && Date.now() - started < 15_000) await new Promise((r) => setTimeout(r, 50));
      const line = JSON.parse(out.split('\n').find((l) => l.includes('dev-api listening'))!) as { url: string; secret: string };
      assert.equal(line.secret, 'random');
      const verify = (token: string) => fetch(`${line.url}/auth/verify`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"chat_id":1}' });
      const minted = (await (await fetch(`${line.url}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user_id":1}' })).json()) as { token: string };
      assert.equal((await verify(minted.token)).status, 200, 'its own tokens verify');
      const forged = await new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject('1').setIssuedAt().setExpirationTime('1h').sign(new TextEncoder().encode('dev-secret-change-me'));
      assert.equal((await verify(forged)).status, 401, 'the published default secret signs nothing it accepts');
    } finally {
      proc.kill('SIGTERM');
    }
  });
});
