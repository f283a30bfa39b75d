/**
 * The one message every system carries: an E2E-style `data` object (opaque base64 ciphertext
 * and nonce, empty envelopes) of ~300 bytes of JSON, with the sender's clock in `sent_at` so a
 * receiver can compute send → receipt latency without a lookup. Every protocol sends the same
 * object; only the envelope around it differs (see bench/gen/worker.ts).
 */
import { randomBytes } from 'node:crypto';

/** Epoch milliseconds with sub-millisecond resolution, comparable across processes on one machine. */
export const now = (): number => performance.timeOrigin + performance.now();

const CIPHERTEXT = randomBytes(156).toString('base64'); // 208 characters
const NONCE = randomBytes(24).toString('base64'); // 32 characters

export interface MessageData {
  id: string;
  ciphertext: string;
  nonce: string;
  envelopes: Record<string, never>;
  message_type: 'text';
  sent_at: number;
}

export function messageData(id: string, sentAt: number): MessageData {
  return { id, ciphertext: CIPHERTEXT, nonce: NONCE, envelopes: {}, message_type: 'text', sent_at: sentAt };
}

/** Size of the data object as JSON (what "payload bytes" means in the report). */
export const PAYLOAD_BYTES = JSON.stringify(messageData('g0-1000000', now())).length;

const MARK = Buffer.from('"sent_at":');

/** The `sent_at` of a received text frame, or NaN when it carries none (acks, presence, …). Reads the bytes, no JSON.parse. */
export function readSentAt(frame: Buffer): number {
  const i = frame.indexOf(MARK);
  if (i < 0) return NaN;
  let j = i + MARK.length;
  let end = j;
  while (end < frame.length) {
    const c = frame[end]!;
    if ((c >= 48 && c <= 57) || c === 46) end++;
    else break;
  }
  return end > j ? Number(frame.toString('latin1', j, end)) : NaN;
}

/**
 * Mergeable latency histogram: 0.05 ms bins up to 1 s, 1 ms bins up to 61 s, one overflow bin.
 */
export class Histogram {
  static readonly FINE = 20_000;
  static readonly COARSE = 60_000;
  bins = new Uint32Array(Histogram.FINE + Histogram.COARSE + 1);
  count = 0;
  max = 0;

  record(ms: number): void {
    const v = ms < 0 ? 0 : ms;
    let i: number;
    if (v < 1000) i = Math.floor(v * 20);
    else if (v < 61_000) i = Histogram.FINE + Math.floor(v - 1000);
    else i = Histogram.FINE + Histogram.COARSE;
    this.bins[i]!++;
    this.count++;
    if (v > this.max) this.max = v;
  }

  merge(other: { bins: ArrayLike<number>; count: number; max: number }): void {
    for (let i = 0; i < this.bins.length; i++) this.bins[i]! += other.bins[i] ?? 0;
    this.count += other.count;
    this.max = Math.max(this.max, other.max);
  }

  /** Upper edge of the bin holding the q-quantile, ms. */
  quantile(q: number): number {
    if (this.count === 0) return NaN;
    const target = Math.ceil(q * this.count);
    let seen = 0;
    for (let i = 0; i < this.bins.length; i++) {
      seen += this.bins[i]!;
      if (seen >= target) {
        if (i < Histogram.FINE) return (i + 1) / 20;
        if (i < Histogram.FINE + Histogram.COARSE) return 1000 + (i - Histogram.FINE + 1);
        return this.max;
      }
    }
    return this.max;
  }

  /** Sparse form for IPC: [index, count] pairs. */
  toJSON(): { sparse: Array<[number, number]>; count: number; max: number } {
    const sparse: Array<[number, number]> = [];
    for (let i = 0; i < this.bins.length; i++) if (this.bins[i]! > 0) sparse.push([i, this.bins[i]!]);
    return { sparse, count: this.count, max: this.max };
  }

  static fromJSON(j: { sparse: Array<[number, number]>; count: number; max: number }): Histogram {
    const h = new Histogram();
    for (const [i, n] of j.sparse) h.bins[i] = n;
    h.count = j.count;
    h.max = j.max;
    return h;
  }
}
