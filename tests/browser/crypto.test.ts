/**
 * The chat page's end-to-end encryption (web/crypto.ts) on Node's WebCrypto: the same code the
 * browser runs. The browser test (chat-page.test.ts) proves it end to end; this one covers the
 * cases a page cannot easily stage (tampering, a foreign envelope, a recipient with a bad key).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ALG, CannotDecrypt, exportPublicKey, fingerprint, fromBase64, newDeviceKeys, open, seal, toBase64, type DeviceSecret, type Recipient } from '../../web/crypto.js';

async function device(id: string): Promise<{ secret: DeviceSecret; recipient: Recipient }> {
  const pair = await newDeviceKeys();
  return { secret: { id, privateKey: pair.privateKey }, recipient: { device_id: id, public_key: await exportPublicKey(pair.publicKey) } };
}

const ref = { chatId: 7, messageId: 'm-1', senderId: 1 };

describe('web/crypto.ts', () => {
  it('every recipient device opens the message; the wire carries no plaintext', async () => {
    const [a, b, c] = await Promise.all([device('a'), device('b'), device('c')]);
    const sealed = await seal('héllo, wörld', ref, [a.recipient, b.recipient]);
    assert.deepEqual(Object.keys(sealed.envelopes).sort(), ['a', 'b']);
    assert.equal(fromBase64(sealed.nonce).length, 12);
    assert.equal(fromBase64(sealed.ciphertext).length, new TextEncoder().encode('héllo, wörld').length + 16);
    assert.equal(sealed.envelopes.a?.alg, ALG);
    assert.equal(fromBase64(sealed.envelopes.a!.key).length, 40, 'AES-KW of a 32-byte key');
    assert.ok(!JSON.stringify(sealed).includes('llo'));
    assert.equal(await open(sealed, ref, a.secret), 'héllo, wörld');
    assert.equal(await open(sealed, { chatId: '7', messageId: 'm-1', senderId: '1' }, b.secret), 'héllo, wörld', 'ids compare as strings');
    await assert.rejects(open(sealed, ref, c.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'no_envelope');
  });

  it('each message gets its own content key, nonce and ephemeral key', async () => {
    const a = await device('a');
    const one = await seal('same', ref, [a.recipient]);
    const two = await seal('same', ref, [a.recipient]);
    assert.notEqual(one.ciphertext, two.ciphertext);
    assert.notEqual(one.nonce, two.nonce);
    assert.notEqual(one.envelopes.a?.epk, two.envelopes.a?.epk);
  });

  it('a ciphertext or an envelope moved to another message, chat or device does not open', async () => {
    const [a, b] = await Promise.all([device('a'), device('b')]);
    const sealed = await seal('secret', ref, [a.recipient, b.recipient]);
    await assert.rejects(open(sealed, { chatId: 7, messageId: 'm-2', senderId: 1 }, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'bad_envelope');
    await assert.rejects(open(sealed, { chatId: 8, messageId: 'm-1', senderId: 1 }, a.secret), CannotDecrypt);
    // Broadcast under another sender's name (a copy resent by another member): does not decrypt.
    await assert.rejects(open(sealed, { ...ref, senderId: 2 }, a.secret), CannotDecrypt);
    // b's envelope presented as a's: the key derivation names the device.
    await assert.rejects(open({ ...sealed, envelopes: { a: sealed.envelopes.b } }, ref, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'bad_envelope');
    const flipped = fromBase64(sealed.ciphertext);
    flipped[0]! ^= 1;
    await assert.rejects(open({ ...sealed, ciphertext: toBase64(flipped) }, ref, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'bad_ciphertext');
    await assert.rejects(open({ ...sealed, nonce: toBase64(new Uint8Array(12)) }, ref, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'bad_ciphertext');
  });

  it('what is not this scheme is "cannot decrypt", never a crash', async () => {
    const a = await device('a');
    for (const message of [{}, { ciphertext: 'aGk=', envelopes: {} }, { ciphertext: 'aGk=', envelopes: { a: 'x' } }, { ciphertext: 'aGk=', envelopes: { a: { alg: 'other', epk: 'x', key: 'y' } } }, { ciphertext: 'aGk=', envelopes: { a: { alg: ALG, epk: '!!', key: '!!' } } }]) {
      await assert.rejects(open(message, ref, a.secret), CannotDecrypt, JSON.stringify(message));
    }
  });

  it('a recipient whose key does not import gets no envelope; the others do', async () => {
    const a = await device('a');
    const sealed = await seal('x', ref, [{ device_id: 'broken', public_key: 'AAAA' }, a.recipient]);
    assert.deepEqual(Object.keys(sealed.envelopes), ['a']);
  });

  it('fingerprints are short, stable and differ between keys', async () => {
    const [a, b] = await Promise.all([device('a'), device('b')]);
    const print = await fingerprint(a.recipient.public_key);
    assert.match(print, /^[0-9a-f]{4}( [0-9a-f]{4}){3}$/);
    assert.equal(await fingerprint(a.recipient.public_key), print);
    assert.notEqual(await fingerprint(b.recipient.public_key), print);
  });
});
