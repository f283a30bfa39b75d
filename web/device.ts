/**
 * This browser's device for a user: an id and an ECDH P-256 key pair, kept in IndexedDB (one
 * record per user, so two demo users in one browser profile are two devices). The private key
 * is a non-extractable CryptoKey: IndexedDB stores the key object itself, and no script (this
 * page included) can read its bytes.
 */
import { exportPublicKey, newDeviceKeys } from './crypto.js';

export interface Device {
  id: string;
  userId: string;
  privateKey: CryptoKey;
  /** Base64 raw public key, as published to the main API. */
  publicKey: string;
  createdAt: string;
  /** false when IndexedDB was unavailable: the device lives only as long as this page. */
  persisted: boolean;
}

const DB_NAME = 'message-service-chat-page';
const STORE = 'devices';

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

function openDb(): Promise<IDBDatabase> {
  const req = indexedDB.open(DB_NAME, 1);
  req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: 'userId' });
  return request(req);
}

/** The user's device in this browser, made (and stored) on first use. */
export async function loadDevice(userId: string): Promise<Device> {
  let db: IDBDatabase | null = null;
  try {
    db = await openDb();
    const stored = (await request(db.transaction(STORE).objectStore(STORE).get(userId))) as Omit<Device, 'persisted'> | undefined;
    if (stored?.privateKey instanceof CryptoKey && typeof stored.publicKey === 'string') return { ...stored, persisted: true };
  } catch {
    db = null; // no IndexedDB (some private modes): a device for this page only
  }
  const pair = await newDeviceKeys();
  const device: Device = {
    id: crypto.randomUUID(),
    userId,
    privateKey: pair.privateKey,
    publicKey: await exportPublicKey(pair.publicKey),
    createdAt: new Date().toISOString(),
    persisted: db !== null,
  };
  if (db) {
    const { persisted: _, ...record } = device;
    await request(db.transaction(STORE, 'readwrite').objectStore(STORE).put(record));
  }
  return device;
}
