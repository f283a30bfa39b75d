/**
 * Runs `work` and calls `after(ok)` once it settles, then passes its outcome on; a synchronous
 * throw counts as a rejection. A plain chain rather than an async function with try/finally:
 * it wraps every main-API call and every engine publish, and saves promises and microtask hops.
 */
export function whenSettled<T>(work: () => Promise<T>, after: (ok: boolean) => void): Promise<T> {
  let running: Promise<T>;
  try {
    running = work();
  } catch (err) {
    after(false);
    return Promise.reject(err);
  }
  return running.then(
    (value) => (after(true), value),
    (err: unknown) => {
      after(false);
      throw err;
    },
  );
}
