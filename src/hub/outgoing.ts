import * as ws from 'ws';
import type { StreamPosition } from '../engine/stream.js';

/** `ws`'s frame builder: public in `ws`, missing from its type definitions. */
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };

/**
 * A broadcast as it goes out: its stream position (what a registration's floor looks at) and, built once
 * per broadcast on this instance, the complete WebSocket text frame written unchanged to every
 * receiving socket — no per-receiver framing, allocation or copy.
 */
export interface Outgoing {
  /** Its place in the chat stream (null for presence and typing), read once from its prefix. */
  readonly position: StreamPosition | null;
  readonly wire: Buffer;
}

const TEXT_FRAME = { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false } as const;

/** One unmasked, uncompressed WebSocket text frame holding `json`, as one buffer (one `write`). */
export function textFrame(json: Buffer): Buffer {
  return Buffer.concat(Sender.frame(json, TEXT_FRAME));
}

export function outgoing(json: Buffer, position: StreamPosition | null): Outgoing {
  return { position, wire: textFrame(json) };
}
