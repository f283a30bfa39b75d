import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The Prometheus series. One registry per gateway, so several gateways in one
 * process (tests, benchmarks) never share counters.
 */
export function createMetrics() {
  const registry = new Registry();
  /** What `engine_ready` reports when scraped (set by the gateway once its engine exists). */
  let engineReady: () => boolean = () => false;
  collectDefaultMetrics({ register: registry, prefix: 'message_service_' });
  const registers = [registry];
  const latencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
  return {
    registry,
    connections: new Gauge({
      name: 'message_service_connections',
      help: 'Open WebSocket connections',
      registers,
    }),
    registrations: new Gauge({
      name: 'message_service_registrations',
      help: 'Active (connection, chat) registrations',
      registers,
    }),
    ops: new Counter({
      name: 'message_service_ops_total',
      help: 'Client requests by frame type and result (ok, duplicate, or the error code)',
      labelNames: ['type', 'result'] as const,
      registers,
    }),
    upstreamLatency: new Histogram({
      name: 'message_service_upstream_request_duration_seconds',
      help: 'Latency of calls to the main API by call and outcome',
      labelNames: ['op', 'outcome'] as const,
      buckets: latencyBuckets,
      registers,
    }),
    deliveries: new Counter({
      name: 'message_service_deliveries_total',
      help: 'Frames written to client connections from chat broadcasts',
      registers,
    }),
    enginePublishLatency: new Histogram({
      name: 'message_service_engine_publish_duration_seconds',
      help: 'Latency of publishing a broadcast to the engine',
      labelNames: ['outcome'] as const,
      buckets: latencyBuckets,
      registers,
    }),
    slowConsumerCloses: new Counter({
      name: 'message_service_slow_consumer_closes_total',
      help: 'Connections closed 1013 because their unsent backlog passed MAX_BUFFERED_BYTES',
      registers,
    }),
    closes: new Counter({
      name: 'message_service_connection_closes_total',
      help: 'Connections closed by the gateway, by close code',
      labelNames: ['code'] as const,
      registers,
    }),
    recoveries: new Counter({
      name: 'message_service_recoveries_total',
      help: 'Registers with a position to resume from, by outcome (recovered, epoch_changed, too_far_behind, no_history)',
      labelNames: ['outcome'] as const,
      registers,
    }),
    publishRetries: new Counter({
      name: 'message_service_publish_retries_total',
      help: 'Publishes of saved operations retried because the engine failed',
      registers,
    }),
    resyncs: new Counter({
      name: 'message_service_resyncs_total',
      help: 'Chats caught up after an engine outage or a gap in the subscription: gap (a lost publication noticed; its catch-up counts again), recovered from history, or lost (their connections closed 1012 to recover)',
      labelNames: ['outcome'] as const,
      registers,
    }),
    publishLate: new Counter({
      name: 'message_service_publish_late_total',
      help: 'Saved operations broadcast late: the engine failed for PUBLISH_RETRY_MS, and they were published once it worked again',
      registers,
    }),
    publishDropped: new Counter({
      name: 'message_service_publish_dropped_total',
      help: 'Saved operations given up without a confirmed broadcast: more than 10,000 (or 64 MiB) waiting for the engine, waiting longer than HISTORY_TTL_MS, or still waiting at shutdown (an attempt that timed out on a stalled Redis may still have run)',
      registers,
    }),
    apiRequests: new Counter({
      name: 'message_service_api_requests_total',
      help: 'Server API requests, by route and HTTP status',
      labelNames: ['route', 'status'] as const,
      registers,
    }),
    engineReady: new Gauge({
      name: 'message_service_engine_ready',
      help: '1 while the engine is connected and serving (as /readyz, without draining)',
      registers,
      collect() {
        this.set(engineReady() ? 1 : 0);
      },
    }),
    /** Makes `engine_ready` read `ready` at each scrape. */
    reportEngineReady(ready: () => boolean): void {
      engineReady = ready;
    },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
