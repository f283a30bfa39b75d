/**
 * End-to-end encryption of the chat page, on WebCrypto only (browsers, and Node ≥ 20 for the
 * tests). How it works and what it does not do: docs/chat-page.md.
 *
 * - Every device has an ECDH P-256 key pair; its public key is published through the main API.
 * - Every message (and every edit) gets a fresh random AES-256-GCM content key and a random
 *   96-bit nonce; `ciphertext` is the AES-GCM encryption of the UTF-8 text, with the chat and
 *   message ids as additional data (a ciphertext cannot be moved to another message).
 * - The content key is wrapped once per recipient device: an ephemeral P-256 key pair per
 *   message, ECDH(ephemeral private, device public) → HKDF-SHA-256 (salt: the ephemeral public
 *   key; info: scheme, chat, message and device ids) → an AES-256-KW key that wraps the content
 *   key. `envelopes[device_id] = { alg, key }`.
 * - The ephemeral public key goes once per message, in front of the AES-GCM output inside
 *   `ciphertext` (65 bytes raw): repeating it in every envelope cost 88 bytes per device and
 *   capped a chat at ~270 devices in a 64 KiB frame. An edit passes no field but `ciphertext`,
 *   `nonce` and `envelopes` through, so the ciphertext container is where it can go.
 * - Messages of the first version (`LEGACY_ALG`: `epk` in every envelope, bare AES-GCM output)
 *   still open.
 * - A device opens a message with its own envelope; no envelope means "cannot decrypt".
 */

const subtle = globalThis.crypto.subtle;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Names this scheme in every envelope (and in the HKDF info), so a future one can coexist. */
export const ALG = 'P256-HKDF-SHA256-A256KW-v2';
/** The first version: the ephemeral key in every envelope (`epk`), `ciphertext` the bare AES-GCM output. Opened, never made. */
export const LEGACY_ALG = 'P256-HKDF-SHA256-A256KW';
const AAD_LABELS: Record<string, string> = { [ALG]: 'message-service chat-page v2', [LEGACY_ALG]: 'message-service chat-page v1' };
/** Raw uncompressed P-256 point: 0x04 ‖ x ‖ y. */
const EPK_BYTES = 65;
const CURVE = { name: 'ECDH', namedCurve: 'P-256' } as const;

/** One recipient device: its id (the envelope's key) and its base64 raw public key. */
export interface Recipient {
  device_id: string;
  public_key: string;
}

export interface Envelope {
  alg: string;
  /** Base64 AES-KW-wrapped content key (40 bytes). */
  key: string;
  /** LEGACY_ALG only: base64 raw ephemeral public key of the message. */
  epk?: string;
}

/**
 * What goes on the wire as the message's `ciphertext`, `nonce` and `envelopes`. `ciphertext` is
 * base64 of the message's ephemeral public key (65 bytes) followed by the AES-GCM output.
 */
export interface Sealed {
  ciphertext: string;
  nonce: string;
  envelopes: Record<string, Envelope>;
}

/** This device: its id and its private key (non-extractable when made by `newDeviceKeys`). */
export interface DeviceSecret {
  id: string;
  privateKey: CryptoKey;
}

/** Where a message belongs: bound into the AES-GCM additional data and the key derivation. */
/**
 * What a message's encryption is bound to: its chat, its id and its sender (the sender_id the
 * gateway sets from the verified user). Content copied into another chat, under another id, or
 * broadcast under another user's name does not decrypt.
 */
export interface MessageRef {
  chatId: string | number;
  messageId: string;
  senderId: string | number;
}

export type OpenFailure = 'no_envelope' | 'bad_envelope' | 'bad_ciphertext' | 'malformed';

/** Why a message could not be opened; `reason` is what the page shows. */
export class CannotDecrypt extends Error {
  constructor(readonly reason: OpenFailure) {
    super(
      reason === 'no_envelope'
        ? 'not encrypted for this device'
        : reason === 'bad_envelope'
          ? 'the key envelope for this device does not open'
          : reason === 'malformed'
            ? 'malformed message'
            : 'the ciphertext does not authenticate',
    );
    this.name = 'CannotDecrypt';
  }
}

// --- base64 --------------------------------------------------------------------------------------

export function toBase64(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = '';
  for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// --- device keys ---------------------------------------------------------------------------------

/** A new device key pair: the private key cannot be exported (IndexedDB stores it as is). */
export function newDeviceKeys(): Promise<CryptoKeyPair> {
  return subtle.generateKey(CURVE, false, ['deriveBits']);
}

/** Base64 of the raw (65-byte uncompressed) public point: what the main API stores. */
export async function exportPublicKey(key: CryptoKey): Promise<string> {
  return toBase64(await subtle.exportKey('raw', key));
}

/** A short, human-comparable fingerprint of a public key (SHA-256, first 8 bytes, hex). */
export async function fingerprint(publicKey: string): Promise<string> {
  const digest = new Uint8Array(await subtle.digest('SHA-256', fromBase64(publicKey)));
  return [...digest.subarray(0, 8)].map((b) => b.toString(16).padStart(2, '0')).join('').replace(/(.{4})(?!$)/g, '$1 ');
}

// --- sealing and opening -------------------------------------------------------------------------

function additionalData(alg: string, ref: MessageRef): Uint8Array<ArrayBuffer> {
  return utf8.encode(`${AAD_LABELS[alg]!}|${String(ref.chatId)}|${ref.messageId}|${String(ref.senderId)}`);
}

/** The key-encryption key shared by the ephemeral key and one device (either side can derive it). */
async function wrappingKey(alg: string, privateKey: CryptoKey, publicKey: CryptoKey, epk: Uint8Array<ArrayBuffer>, ref: MessageRef, deviceId: string): Promise<CryptoKey> {
  const shared = await subtle.deriveBits({ name: 'ECDH', public: publicKey }, privateKey, 256);
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: epk, info: utf8.encode(`${alg}|${String(ref.chatId)}|${ref.messageId}|${String(ref.senderId)}|${deviceId}`) },
    ikm,
    { name: 'AES-KW', length: 256 },
    false,
    ['wrapKey', 'unwrapKey'],
  );
}

function importPublic(raw: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  return subtle.importKey('raw', raw, CURVE, false, []);
}

/**
 * Encrypts `text` for every recipient device. A recipient whose public key does not import is
 * left out (it gets no envelope) rather than failing the whole message.
 */
export async function seal(text: string, ref: MessageRef, recipients: readonly Recipient[]): Promise<Sealed> {
  const contentKey = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt']);
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const encrypted = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: additionalData(ALG, ref) }, contentKey, utf8.encode(text)));
  const ephemeral = await subtle.generateKey(CURVE, false, ['deriveBits']);
  const epk = new Uint8Array(await subtle.exportKey('raw', ephemeral.publicKey));
  const ciphertext = new Uint8Array(epk.length + encrypted.length);
  ciphertext.set(epk);
  ciphertext.set(encrypted, epk.length);
  const envelopes: Record<string, Envelope> = {};
  for (const recipient of recipients) {
    let publicKey: CryptoKey;
    try {
      publicKey = await importPublic(fromBase64(recipient.public_key));
    } catch {
      continue;
    }
    const kek = await wrappingKey(ALG, ephemeral.privateKey, publicKey, epk, ref, recipient.device_id);
    envelopes[recipient.device_id] = { alg: ALG, key: toBase64(await subtle.wrapKey('raw', contentKey, kek, 'AES-KW')) };
  }
  return { ciphertext: toBase64(ciphertext), nonce: toBase64(nonce), envelopes };
}

/** Decrypts a message (or an edit) with this device's envelope; throws `CannotDecrypt`. */
export async function open(message: { ciphertext?: unknown; nonce?: unknown; envelopes?: unknown }, ref: MessageRef, device: DeviceSecret): Promise<string> {
  const envelopes = message.envelopes;
  const envelope = typeof envelopes === 'object' && envelopes !== null ? (envelopes as Record<string, unknown>)[device.id] : undefined;
  if (typeof envelope !== 'object' || envelope === null) throw new CannotDecrypt('no_envelope');
  const { alg, epk, key } = envelope as Partial<Envelope>;
  let contentKey: CryptoKey;
  let encrypted: Uint8Array<ArrayBuffer>;
  let container: Uint8Array<ArrayBuffer> | null = null;
  if (alg === ALG) {
    // The ephemeral key is the first 65 bytes of the ciphertext container, the GCM tag its last 16:
    // shorter (or not base64) is no message of this scheme, whatever its envelope.
    try {
      container = typeof message.ciphertext === 'string' ? fromBase64(message.ciphertext) : null;
    } catch {
      container = null;
    }
    if (container === null || container.length < EPK_BYTES + 16) throw new CannotDecrypt('malformed');
  }
  try {
    if ((alg !== ALG && alg !== LEGACY_ALG) || typeof key !== 'string') throw new Error('unknown envelope');
    let epkBytes: Uint8Array<ArrayBuffer>;
    if (container !== null) {
      epkBytes = container.slice(0, EPK_BYTES);
      encrypted = container.slice(EPK_BYTES);
    } else {
      if (typeof epk !== 'string') throw new Error('no ephemeral key');
      epkBytes = fromBase64(epk);
      encrypted = typeof message.ciphertext === 'string' ? fromBase64(message.ciphertext) : new Uint8Array(0);
    }
    const kek = await wrappingKey(alg, device.privateKey, await importPublic(epkBytes), epkBytes, ref, device.id);
    contentKey = await subtle.unwrapKey('raw', fromBase64(key), kek, 'AES-KW', { name: 'AES-GCM' }, false, ['decrypt']);
  } catch {
    throw new CannotDecrypt('bad_envelope');
  }
  try {
    if (typeof message.ciphertext !== 'string' || typeof message.nonce !== 'string') throw new Error('no ciphertext');
    const plain = await subtle.decrypt({ name: 'AES-GCM', iv: fromBase64(message.nonce), additionalData: additionalData(alg, ref) }, contentKey, encrypted);
    return fromUtf8.decode(plain);
  } catch {
    throw new CannotDecrypt('bad_ciphertext');
  }
}
