/** The process once its stop signals are caught (main.ts): config (exit 2 on a bad value), gateway, drain. */
import { ConfigError, loadConfig, readEnv, unreadRedisVariables, type Config, type Env } from './config/index.js';
import { drainBoundMs, startGateway } from './gateway.js';
import { createLogger } from './log.js';
import type { StopSignals } from './signals.js';

export async function run(stopSignals: StopSignals): Promise<void> {
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

  // A signal that came during start-up is handled now: the gateway drains at once.
  let signalled = false;
  stopSignals.handle((signal) => {
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
