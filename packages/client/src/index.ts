export { Client, createClient, newId, type ChatOptions, type ClientOptions, type TokenSource, type UrlSource } from './client.js';
export { Chat } from './chat.js';
export { ClientError, type ClientErrorCode, type GatewayErrorCode } from './errors.js';
export { MemoryStorage, type OutboxEntry, type OutboxStorage } from './outbox.js';
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
export type * from './types.js';
