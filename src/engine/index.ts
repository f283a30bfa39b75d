import type { Config } from '../config/index.js';
import type { Logger } from '../log.js';
import { MemoryEngine } from './memory.js';
import type { Engine } from './types.js';

export type { Engine } from './types.js';

/** REDIS_HOST unset: the embedded engine; set: Redis (loaded only then). */
export async function createEngine(config: Config, log: Logger): Promise<Engine> {
  const history = { size: config.historySize, ttlMs: config.historyTtlMs };
  if (config.redis === null) return new MemoryEngine(history);
  const { RedisEngine } = await import('./redis/engine.js');
  return new RedisEngine(config.redis, config.presenceTtlMs, log, history);
}
