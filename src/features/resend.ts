import { setTimeout as sleep } from 'node:timers/promises';
import type { Engine } from '../engine/types.js';
import type { IdKey } from '../protocol/ids.js';

/** The looks `appearsInHistory` takes, as waits before each: at 0, 50, 150, 350 and 750 ms. */
const LOOKS_MS = [0, 50, 100, 200, 400];
/** The whole look, slow answers included: the last look's time plus one engine round trip's margin. */
const LOOK_BUDGET_MS = 1000;

/**
 * Whether the chat's history holds a broadcast appended with `key`, asked for a moment rather
 * than once. A resend the main API answers "done already, by you" (a message's 409, a delete's
 * 404) is broadcast only if no earlier send was (its instance died between saving and
 * broadcasting). But the earlier send may still be on its way on another instance: a resend
 * racing it — an SDK resending on a new connection while the old one's save was in flight — gets
 * its answer about when the first gets its own, and a single look found nothing in ~1 of 4 such
 * races, so the chat got the operation twice. The earlier send's instance appends it within
 * milliseconds of its answer (later only while the engine fails, when it retries). A look that
 * fails, or an engine too slow to answer within LOOK_BUDGET_MS (a stalled Redis takes 2 s per
 * command), ends it as not found: the resend is broadcast — a duplicate at worst, never a loss.
 */
export async function appearsInHistory(engine: Engine, chat: IdKey, key: string): Promise<boolean> {
  const until = performance.now() + LOOK_BUDGET_MS;
  for (const wait of LOOKS_MS) {
    if (wait > 0) await sleep(wait);
    const left = until - performance.now();
    if (left <= 0) return false;
    const found = await Promise.race([engine.contains(chat, key).catch(() => null), sleep(left, null, { ref: false })]);
    if (found !== false) return found === true;
  }
  return false;
}
