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

type Stored = Omit<Device, 'persisted'>;

function usable(record: unknown): record is Stored {
  const r = record as Partial<Stored> | undefined;
  return r?.privateKey instanceof CryptoKey && typeof r.publicKey === 'string' && typeof r.id === 'string';
}

/**
 * The user's device in this browser, made (and stored) on first use. Two tabs logging in as a
 * new user at once must end up with one device, so the look-up and the creation are one
 * readwrite transaction (IndexedDB runs overlapping readwrite transactions on a store one after
 * the other): the key pair is made first — a transaction cannot wait for WebCrypto — then `get`,
 * and `add` only if there is nothing; the other tab's transaction then finds this record. If
 * `add` still fails (ConstraintError: another record got there first), that record is read and used.
 */
export async function loadDevice(userId: string): Promise<Device> {
  return makeDevice(userId, null);
}

/**
 * A new device in place of `staleId`, whose id the main API now gives to another user (the dev API
 * forgot it in a restart, and a member who saw it in an envelope published it first): the page
 * could never publish its key again. If another tab replaced it already, that tab's device is used.
 */
export function replaceDevice(userId: string, staleId: string): Promise<Device> {
  return makeDevice(userId, staleId);
}

/** The stored device of `userId` unless it is missing, unusable or `replacing`; else a new one, stored. */
async function makeDevice(userId: string, replacing: string | null): Promise<Device> {
  let db: IDBDatabase | null = null;
  try {
    db = await openDb();
    const existing = await request(db.transaction(STORE).objectStore(STORE).get(userId));
    if (usable(existing) && existing.id !== replacing) return { ...existing, persisted: true };
  } catch {
    db = null; // no IndexedDB (some private modes): a device for this page only
  }
  const pair = await newDeviceKeys();
  const made: Stored = {
    id: crypto.randomUUID(),
    userId,
    privateKey: pair.privateKey,
    publicKey: await exportPublicKey(pair.publicKey),
    createdAt: new Date().toISOString(),
  };
  if (!db) return { ...made, persisted: false };
  const record = await getOrAdd(db, made, replacing);
  return { ...record, persisted: true };
}

/** In one readwrite transaction: the stored record if there is a usable one (other than `replacing`), else `made`, stored. */
function getOrAdd(db: IDBDatabase, made: Stored, replacing: string | null): Promise<Stored> {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, 'readwrite');
    const store = tx.objectStore(STORE);
    let result: Stored = made;
    const get = store.get(made.userId);
    get.onsuccess = () => {
      if (usable(get.result) && get.result.id !== replacing) {
        result = get.result;
        return;
      }
      // A record that is not a usable device (an older shape), or the one replaced, is overwritten; none is added.
      const write = get.result === undefined ? store.add(made) : store.put(made);
      write.onerror = (event) => {
        if (write.error?.name !== 'ConstraintError') return;
        // Another tab added its device between two transactions that were not serialised: use it.
        event.preventDefault();
        const again = store.get(made.userId);
        again.onsuccess = () => {
          if (usable(again.result)) result = again.result;
        };
      };
    };
    tx.oncomplete = () => resolve(result);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
    tx.onerror = () => undefined; // reported by onabort unless prevented above
  });
}
