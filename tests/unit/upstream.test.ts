import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { errorCodeForStatus } from '../../src/upstream/status.js';
import { jwtExpiryMs, VerifyCache } from '../../src/upstream/verify-cache.js';
import { userIdFromVerify } from '../../src/upstream/client.js';

const jwt = (payload: object) => `h.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.s`;

describe('upstream status mapping', () => {
  it('maps every listed status', () => {
    const expected: Record<number, string> = { 400: 'bad_request', 422: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 413: 'too_large', 429: 'rate_limited', 500: 'upstream_unavailable', 502: 'upstream_unavailable', 503: 'upstream_unavailable', 504: 'upstream_unavailable' };
    for (const [status, code] of Object.entries(expected)) assert.equal(errorCodeForStatus(Number(status)), code, status);
    assert.equal(errorCodeForStatus(405), 'bad_request');
    assert.equal(errorCodeForStatus(302), 'upstream_unavailable');
  });
});

describe('verify answer', () => {
  it('reads user_id, id, sub or user.id', () => {
    assert.equal(userIdFromVerify('{"user_id":5}'), '5');
    assert.equal(userIdFromVerify('{"id":"u-6"}'), 'u-6');
    assert.equal(userIdFromVerify('{"sub":"7"}'), '7');
    assert.equal(userIdFromVerify('{"user":{"id":8}}'), '8');
    for (const bad of ['{}', '[]', 'null', 'x', '{"user_id":0}', '{"user_id":1.5}', '{"user_id":"a b"}', '{"user_id":{"x":1}}']) {
      assert.equal(userIdFromVerify(bad), null, bad);
    }
  });
});

describe('verify cache', () => {
  it('forgets a user\'s verifies in one chat or in all, and no one else\'s', () => {
    const cache = new VerifyCache(30_000);
    cache.set('t1', 'c1', 'u');
    cache.set('t1', 'c2', 'u');
    cache.set('t2', 'c1', 'u');
    cache.set('t3', 'c1', 'v');
    cache.forgetUser('u', 'c1');
    assert.deepEqual([cache.get('t1', 'c1'), cache.get('t2', 'c1'), cache.get('t1', 'c2'), cache.get('t3', 'c1')], [undefined, undefined, 'u', 'v']);
    cache.set('t1', 'c3', 'u');
    cache.forgetUser('u', null);
    assert.deepEqual([cache.get('t1', 'c2'), cache.get('t1', 'c3'), cache.get('t3', 'c1')], [undefined, undefined, 'v']);
    assert.equal(cache.size, 1);
    cache.delete('t3', 'c1');
    cache.forgetUser('v', null);
    assert.equal(cache.size, 0);
  });

  it('reuses a verify for AUTH_CACHE_TTL_MS, per (token, chat)', () => {
    let now = 1_000_000;
    const cache = new VerifyCache(30_000, 10, () => now);
    cache.set('tok', '1', 'u');
    assert.equal(cache.get('tok', '1'), 'u');
    assert.equal(cache.get('tok', '2'), undefined);
    now += 29_999;
    assert.equal(cache.get('tok', '1'), 'u');
    now += 2;
    assert.equal(cache.get('tok', '1'), undefined);
  });

  it('never past the JWT exp', () => {
    let now = 1_000_000_000_000;
    const cache = new VerifyCache(30_000, 10, () => now);
    const token = jwt({ sub: '1', exp: (now + 5_000) / 1000 });
    assert.equal(jwtExpiryMs(token), now + 5_000);
    cache.set(token, '1', 'u');
    now += 4_999;
    assert.equal(cache.get(token, '1'), 'u');
    now += 2;
    assert.equal(cache.get(token, '1'), undefined);
    const expired = jwt({ exp: (now - 1000) / 1000 });
    cache.set(expired, '1', 'u');
    assert.equal(cache.get(expired, '1'), undefined);
  });

  it('lets expired verifies go with the next one cached, not only at its cap', () => {
    let now = 1_000_000;
    const cache = new VerifyCache(30_000, 100, () => now);
    for (let i = 0; i < 50; i++) cache.set(`t${i}`, '1', `u${i}`);
    now += 20_000;
    cache.set('later', '1', 'v');
    now += 10_001; // the first 50 expired, `later` has not
    cache.set('last', '1', 'w');
    assert.equal(cache.size, 2);
    assert.deepEqual([cache.get('later', '1'), cache.get('last', '1')], ['v', 'w']);
    cache.forgetUser('u0', null); // its index entry went with it
    assert.equal(cache.size, 2);
  });

  it('is bounded and TTL 0 disables it', () => {
    const cache = new VerifyCache(30_000, 3);
    for (let i = 0; i < 10; i++) cache.set(`t${i}`, '1', 'u');
    assert.equal(cache.size, 3);
    assert.equal(cache.get('t0', '1'), undefined);
    assert.equal(cache.get('t9', '1'), 'u');
    const off = new VerifyCache(0);
    off.set('t', '1', 'u');
    assert.equal(off.get('t', '1'), undefined);
  });
});
