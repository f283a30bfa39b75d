export type Timer = ReturnType<typeof setTimeout>;

/** The longest delay `setTimeout` takes as given. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A duration `setTimeout` takes as given: at most 2^31−1 ms (~24.8 days), never NaN or negative. */
export function timerMs(ms: number): number {
  return Number.isNaN(ms) ? 0 : Math.min(Math.max(0, ms), MAX_TIMER_MS);
}

/** Lets a Node process exit with this timer pending (browsers have no such notion). */
export function unref(timer: Timer): Timer {
  (timer as { unref?: () => void }).unref?.();
  return timer;
}

export function clearTimer(timer: Timer | null): void {
  if (timer !== null) clearTimeout(timer);
}
