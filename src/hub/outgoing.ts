import * as ws from 'ws';

/** `ws`'s frame builder: public in `ws`, missing from its type definitions. */
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };

/**
 * A broadcast as it goes out: its JSON bytes (what history and catch-up look at) and, built once
 * per broadcast on this instance, the complete WebSocket text frame written unchanged to every
 * receiving socket — no per-receiver framing, allocation or copy.
 */
export interface Outgoing {
  readonly json: Buffer;
  readonly wire: Buffer;
}

const TEXT_FRAME = { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false } as const;

/** One unmasked, uncompressed WebSocket text frame holding `json`, as one buffer (one `write`). */
export function textFrame(json: Buffer): Buffer {
  return Buffer.concat(Sender.frame(json, TEXT_FRAME));
}

export function outgoing(json: Buffer): Outgoing {
  return { json, wire: textFrame(json) };
}
