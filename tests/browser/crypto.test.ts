/**
 * The chat page's end-to-end encryption (web/crypto.ts) on Node's WebCrypto: the same code the
 * browser runs. The browser test (chat-page.test.ts) proves it end to end; this one covers the
 * cases a page cannot easily stage (tampering, a foreign envelope, a recipient with a bad key).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { ALG, CannotDecrypt, LEGACY_ALG, exportPublicKey, fingerprint, fromBase64, newDeviceKeys, open, seal, toBase64, type DeviceSecret, type Recipient } from '../../web/crypto.js';

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
    assert.equal(fromBase64(sealed.ciphertext).length, 65 + new TextEncoder().encode('héllo, wörld').length + 16, 'the ephemeral key, the text, the GCM tag');
    assert.equal(sealed.envelopes.a?.alg, ALG);
    assert.deepEqual(Object.keys(sealed.envelopes.a!).sort(), ['alg', 'key'], 'no per-device copy of the ephemeral key');
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
    assert.notEqual(toBase64(fromBase64(one.ciphertext).subarray(0, 65)), toBase64(fromBase64(two.ciphertext).subarray(0, 65)), 'ephemeral keys differ');
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
    flipped[flipped.length - 1]! ^= 1;
    await assert.rejects(open({ ...sealed, ciphertext: toBase64(flipped) }, ref, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'bad_ciphertext');
    // Another ephemeral key in the container: the wrapped key does not unwrap.
    const otherEpk = fromBase64(sealed.ciphertext);
    otherEpk.set(fromBase64((await device('x')).recipient.public_key));
    await assert.rejects(open({ ...sealed, ciphertext: toBase64(otherEpk) }, ref, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'bad_envelope');
    // Too short for a key and a tag, or not base64: a malformed message, not "the envelope does not open".
    for (const ciphertext of [toBase64(fromBase64(sealed.ciphertext).subarray(0, 70)), toBase64(fromBase64(sealed.ciphertext).subarray(0, 80)), '', '%%%']) {
      await assert.rejects(open({ ...sealed, ciphertext }, ref, a.secret), (e: unknown) => e instanceof CannotDecrypt && e.reason === 'malformed' && e.message === 'malformed message', ciphertext);
    }
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

  it('the ephemeral key goes once per message: a 64 KiB frame holds a message to 400 devices', async () => {
    const many = await Promise.all(Array.from({ length: 400 }, (_, i) => device(webcrypto.randomUUID())));
    const text = 'x'.repeat(200);
    const sealed = await seal(text, ref, many.map((d) => d.recipient));
    assert.equal(Object.keys(sealed.envelopes).length, 400);
    const frame = JSON.stringify({ type: 'message', chat_id: 123456, data: { id: webcrypto.randomUUID(), message_type: 'text', created_at: new Date().toISOString(), ...sealed } });
    const bytes = new TextEncoder().encode(frame).length;
    assert.ok(bytes < 65_536, `${bytes} bytes`);
    // docs/chat-page.md: "about 140 bytes per device".
    const perDevice = (bytes - text.length) / 400;
    assert.ok(perDevice > 120 && perDevice < 145, `${perDevice.toFixed(1)} bytes per device`);
    assert.equal(await open(sealed, ref, many[399]!.secret), text);
  });

  it('messages of the first version (ephemeral key in every envelope) still open', async () => {
    const a = await device('a');
    const legacy = await sealLegacy('from before', ref, a.recipient);
    assert.equal(await open(legacy, ref, a.secret), 'from before');
    // Its envelope relabelled as the current scheme does not open.
    await assert.rejects(open({ ...legacy, envelopes: { a: { ...legacy.envelopes.a, alg: ALG } } }, ref, a.secret), CannotDecrypt);
  });

  it('fingerprints are short, stable and differ between keys', async () => {
    const [a, b] = await Promise.all([device('a'), device('b')]);
    const print = await fingerprint(a.recipient.public_key);
    assert.match(print, /^[0-9a-f]{4}( [0-9a-f]{4}){3}$/);
    assert.equal(await fingerprint(a.recipient.public_key), print);
    assert.notEqual(await fingerprint(b.recipient.public_key), print);
  });
});

/** The first version of seal(), as the page made messages before the ephemeral key moved into the ciphertext. */
async function sealLegacy(text: string, r: typeof ref, recipient: Recipient) {
  const subtle = webcrypto.subtle;
  const enc = new TextEncoder();
  const contentKey = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt']);
  const nonce = webcrypto.getRandomValues(new Uint8Array(12));
  const aad = enc.encode(`message-service chat-page v1|${r.chatId}|${r.messageId}|${r.senderId}`);
  const ciphertext = await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: aad }, contentKey, enc.encode(text));
  const curve = { name: 'ECDH', namedCurve: 'P-256' };
  const eph = (await subtle.generateKey(curve, false, ['deriveBits'])) as CryptoKeyPair;
  const epk = new Uint8Array(await subtle.exportKey('raw', eph.publicKey));
  const pub = await subtle.importKey('raw', fromBase64(recipient.public_key), curve, false, []);
  const shared = await subtle.deriveBits({ name: 'ECDH', public: pub }, eph.privateKey, 256);
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  const info = enc.encode(`${LEGACY_ALG}|${r.chatId}|${r.messageId}|${r.senderId}|${recipient.device_id}`);
  const kek = await subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt: epk, info }, ikm, { name: 'AES-KW', length: 256 }, false, ['wrapKey']);
  const key = toBase64(await subtle.wrapKey('raw', contentKey, kek, 'AES-KW'));
  return { ciphertext: toBase64(ciphertext), nonce: toBase64(nonce), envelopes: { [recipient.device_id]: { alg: LEGACY_ALG, epk: toBase64(epk), key } } };
}
