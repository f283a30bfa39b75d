/**
 * The process's stop signals, caught from its first moment. Node as PID 1 (a container without an
 * init) ignores a signal nobody handles, and the gateway's modules take about a second to load
 * and start: a SIGTERM then would be lost, and the orchestrator would SIGKILL the process at the
 * end of its grace period. Signals that come before a handler is given are kept for it.
 *
 * SIGHUP drains too (a supervisor's reload, a hangup with the logs going to a file or a pipe),
 * where Node's default would kill the process at once, saved messages never acked nor broadcast.
 * Not when the logs go to a terminal: its hangup makes every log write fail (EIO), which pino
 * retries with the event loop blocked, so a drain — even process.exit — would freeze for good.
 * There Node's default stays: the process dies at once, and its clients reconnect elsewhere.
 */
export interface StopSignals {
  /** Calls `handler` for every stop signal: at once for those that came before. */
  handle(handler: (signal: NodeJS.Signals) => void): void;
}

export function catchStopSignals(): StopSignals {
  const names: NodeJS.Signals[] = process.stdout.isTTY ? ['SIGTERM', 'SIGINT'] : ['SIGTERM', 'SIGINT', 'SIGHUP'];
  const early: NodeJS.Signals[] = [];
  let handler: ((signal: NodeJS.Signals) => void) | null = null;
  for (const name of names) process.on(name, () => (handler === null ? early.push(name) : handler(name)));
  return {
    handle(h) {
      handler = h;
      for (const signal of early.splice(0)) h(signal);
    },
  };
}
