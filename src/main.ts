import { ConfigError, loadConfig, readEnv, unreadRedisVariables, type Config, type Env } from './config/index.js';
import { drainBoundMs, startGateway } from './gateway.js';
import { createLogger } from './log.js';

/** Process entry: config (exit 2 on a bad value), gateway, signals. */
let env: Env;
let config: Config;
try {
  env = readEnv();
  config = loadConfig(env);
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`message-service: invalid configuration: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}

const log = createLogger(config.logLevel);
const unread = unreadRedisVariables(env);
if (unread.length > 0) {
  const engine = config.redis === null ? 'this instance runs alone on the embedded memory engine' : 'they change nothing';
  log.warn({ variables: unread }, `not read: Redis is configured by REDIS_HOST (a redis:// URL) and REDIS_CLUSTER only; ${engine}`);
}
process.on('unhandledRejection', (reason) => {
  log.error({ err: reason instanceof Error ? reason.stack : String(reason) }, 'unhandled rejection');
});

const gateway = await startGateway(config, { log }).catch((err: Error) => {
  log.fatal({ err: err.message }, 'start-up failed');
  process.exit(1);
});

let signalled = false;
// SIGHUP drains too (a supervisor's reload, a hangup with the logs going to a file or a pipe),
// where Node's default would kill the process at once, saved messages never acked nor broadcast.
// Not when the logs go to a terminal: its hangup makes every log write fail (EIO), which pino
// retries with the event loop blocked, so a drain — even process.exit — would freeze for good.
// There Node's default stays: the process dies at once, and its clients reconnect elsewhere.
const signals = process.stdout.isTTY ? (['SIGTERM', 'SIGINT'] as const) : (['SIGTERM', 'SIGINT', 'SIGHUP'] as const);
for (const signal of signals) {
  process.on(signal, () => {
    if (signalled) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    signalled = true;
    log.info({ signal }, 'shutting down');
    // Every step of the drain is bounded; this is the net under them (an orchestrator's grace
    // period is sized by the same bound, and a process past it would be SIGKILLed mid-write).
    const boundMs = drainBoundMs(config) + 500;
    setTimeout(() => {
      log.error({ ms: boundMs }, 'shutdown did not finish within its bound: exiting');
      process.exit(1);
    }, boundMs).unref();
    gateway.shutdown().then(
      () => process.exit(0),
      (err: Error) => {
        log.error({ err: err.message }, 'shutdown failed');
        process.exit(1);
      },
    );
  });
}
