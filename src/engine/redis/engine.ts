import type { RedisConfig } from '../../config/index.js';
import type { Logger } from '../../log.js';
import { MemoryEngine } from '../memory.js';
export class RedisEngine extends MemoryEngine {
  constructor(_c: RedisConfig, _ttl: number, _log: Logger) { super(); }
}
