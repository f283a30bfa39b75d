import type { ChildProcess } from 'node:child_process';

/**
 * Processes a test file started (gateways, redis-servers). A test that times out never reaches
 * the hook that would stop them, and orphans kept running for hours on a shared machine, slowing
 * every later run: they are killed when the file's own process ends, however it ends.
 */
const live = new Set<ChildProcess>();

function killAll(): void {
  for (const child of live) child.kill('SIGKILL');
  live.clear();
}

let watching = false;

/** Registers `child` to be killed with this process; returns it. */
export function reaped<T extends ChildProcess>(child: T): T {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!watching) {
    watching = true;
    process.once('exit', killAll);
    // The test runner ends a file that outlives its timeout with a signal: no 'exit' event then.
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
      process.once(signal, () => {
        killAll();
        process.exit(128 + (signal === 'SIGTERM' ? 15 : signal === 'SIGINT' ? 2 : 1));
      });
    }
  }
  return child;
}
