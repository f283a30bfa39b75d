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

/**
 * Given to work run by `whenReleased`: `hold(drained)` keeps what the work holds (a place, a
 * slot) after it has settled, until `drained` settles — a main-API call answered at its status
 * line whose body still streams in holds its pool connection until the body ends.
 */
export type Hold = (drained: Promise<unknown>) => void;

/** Runs `work` and calls `release` once it settled and, if it called its `hold`, what it held has drained. */
export function whenReleased<T>(work: (hold: Hold) => Promise<T>, release: () => void): Promise<T> {
  let drained: Promise<unknown> | null = null;
  return whenSettled(
    () => work((p) => (drained = p)),
    () => {
      if (drained === null) return release();
      void drained.then(release, release);
    },
  );
}
