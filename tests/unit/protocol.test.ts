import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isRfc3339, parseFrame } from '../../src/protocol/codec.js';
import { RequestError } from '../../src/protocol/errors.js';
import { idKey, parseId, wireId } from '../../src/protocol/ids.js';
import * as out from '../../src/protocol/outbound.js';
import { createFeatureTable } from '../../src/features/index.js';

describe('protocol', () => {
  it('one spelling per id', () => {
    assert.equal(idKey(123), '123');
    assert.equal(wireId('123'), 123);
    assert.equal(wireId('0123'), '0123');
    assert.equal(wireId('99999999999999999'), '99999999999999999');
    assert.equal(wireId('room:1'), 'room:1');
    assert.equal(parseId(0), null);
    assert.equal(parseId('x'.repeat(65)), null);
  });

  it('parseFrame accepts only JSON objects with a string type', () => {
    assert.equal(parseFrame('{"type":"ping"}').type, 'ping');
    for (const bad of ['', 'nope', '[]', '1', 'null', '{"type":1}', '{}']) {
      assert.throws(() => parseFrame(bad), (e: unknown) => e instanceof RequestError && e.code === 'bad_request', bad);
    }
  });

  it('schemas: valid frames pass, wrong types name the field', () => {
    const table = createFeatureTable();
    const message = table.get('message')!.validator;
    assert.doesNotThrow(() => message.decode({ type: 'message', data: { id: 'a', ciphertext: 'x', custom: [1] } }));
    assert.throws(() => message.decode({ type: 'message', data: { id: 'a', ciphertext: '' } }), /ciphertext/);
    assert.throws(() => message.decode({ type: 'message', data: { id: 'a b', ciphertext: 'x' } }), /id/);
    assert.throws(() => message.decode({ type: 'message', data: { id: 'a', ciphertext: 'x', envelopes: [] } }), /envelopes/);
    assert.throws(() => message.decode({ type: 'message', chat_id: 0, data: { id: 'a', ciphertext: 'x' } }), /chat_id/);
    const register = table.get('register')!.validator;
    assert.throws(() => register.decode({ type: 'register', token: 5, chat_id: 1 }), /token/);
    assert.throws(() => register.decode({ type: 'register', token: 't', chat_id: 1.5 }), /chat_id/);
  });

  it('RFC 3339 timestamps', () => {
    assert.ok(isRfc3339('2024-01-01T12:00:00Z'));
    assert.ok(isRfc3339('2024-01-01T12:00:00.123+02:00'));
    assert.ok(!isRfc3339('2024-01-01'));
    assert.ok(!isRfc3339('2024-13-01T12:00:00Z'));
  });

  it('error frames carry retryable from the catalogue', () => {
    assert.deepEqual(JSON.parse(out.error('rate_limited', 'slow', { op: 'message', id: 'm', chat: '5' }).toString()), {
      type: 'error', code: 'rate_limited', message: 'slow', op: 'message', id: 'm', chat_id: 5, retryable: true,
    });
    assert.equal(JSON.parse(out.error('forbidden', 'no').toString()).retryable, false);
  });
});
