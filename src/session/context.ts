import type { Config } from '../config/index.js';
import type { Engine } from '../engine/types.js';
import type { Hub } from '../hub/hub.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/index.js';
import type { MainApi } from '../upstream/client.js';
import type { FairScheduler } from '../upstream/scheduler.js';
import type { FeatureTable } from '../features/index.js';
import type { Deadlines } from './deadlines.js';
import type { RateLimit } from './rate-limit.js';
import type { Registration } from './registration.js';
import type { UserConnections } from './user-connections.js';
import type { LogLimiter } from '../util/log-limit.js';

/** What a session needs of the running gateway. */
export interface GatewayContext {
  readonly config: Config;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly api: MainApi;
  /** Shares the main-API pool between users. */
  readonly upstreamScheduler: FairScheduler;
  readonly engine: Engine;
  readonly hub: Hub;
  readonly features: FeatureTable;
  /** The per-connection rate limit (RATE_LIMIT_PER_SEC, RATE_LIMIT_BURST); each connection keeps its bucket. */
  readonly rateLimit: RateLimit;
  /** Connections bound to each user on this instance (MAX_CONNECTIONS_PER_USER). */
  readonly userConnections: UserConnections;
  /** Credentials deadlines of every registration (one timer for the gateway). */
  readonly deadlines: Deadlines<Registration>;
  /** Lines a client can cause once per connection at will (a close, an expiry): one per kind every 10 s. */
  readonly connectionLogLimit: LogLimiter;
  /** LOG_LEVEL is debug or trace: a connection's life is logged line by line (see Session.debug). */
  readonly debug: boolean;
  isDraining(): boolean;
  /** Counts work that graceful shutdown must let finish. */
  track<T>(work: Promise<T>): Promise<T>;
}
