import type { Socket } from 'node:net';

/**
 * Coalesces the writes one socket gets within one turn of the event loop.
 *
 * The first write of a turn goes to the socket at once: a socket that gets one frame per turn —
 * the usual case at moderate rates — pays nothing and waits for nothing. From its second write in
 * the same turn on, the socket is corked until the turn's check phase (`setImmediate`), so a
 * burst — several broadcasts of busy chats reaching one member, an ack beside them — leaves as
 * one `writev` instead of a syscall per frame. Under load that is where the time goes: the
 * per-delivery `write` is over half of the gateway's CPU.
 *
 * Corked bytes count in the socket's `writableLength`, hence in `ws`'s `bufferedAmount`, so the
 * slow-consumer limit sees them — at most FLUSH_BYTES of them, so a burst never looks slow;
 * `ws`'s own cork/uncork nests inside this one; `end()` flushes and `destroy()` drops them like
 * any other buffered bytes.
 */

/** Whose writes are coalesced: `writeTurn` is the mark this module keeps (start at -1). */
export interface WriteTurnMark {
  writeTurn: number;
}

/**
 * A corked socket holding this much is flushed within the turn: a long burst (a replay, or two
 * in one turn) goes to the kernel in a few `writev`s rather than waiting in the process, where it
 * would count against MAX_BUFFERED_BYTES as if the client were slow.
 */
const FLUSH_BYTES = 64 * 1024;

/** The current turn, even; a mark of `turn` = wrote once this turn, `turn + 1` = corked this turn. */
let turn = 0;
let ending = false;
const corked: Socket[] = [];

/** Flushes every socket corked this turn (`uncork` reports write errors as events, never throws). */
function endTurn(): void {
  ending = false;
  turn += 2;
  for (const socket of corked) socket.uncork();
  corked.length = 0;
}

export function writeInTurn(mark: WriteTurnMark, socket: Socket, bytes: Buffer): void {
  const seen = mark.writeTurn;
  if (seen === turn) {
    socket.cork();
    corked.push(socket);
    mark.writeTurn = turn + 1;
  } else if (seen !== turn + 1) {
    mark.writeTurn = turn;
    if (!ending) {
      ending = true;
      setImmediate(endTurn);
    }
  }
  socket.write(bytes);
  if (mark.writeTurn === turn + 1 && socket.writableLength >= FLUSH_BYTES) {
    socket.uncork();
    socket.cork();
  }
}
