export { Client, createClient } from './client.js';
export { newId } from './ids.js';
export type { ChatOptions, ClientOptions, TokenSource, UrlSource } from './options.js';
export { Chat } from './chat.js';
export { ClientError, type ClientErrorCode, type GatewayErrorCode } from './errors.js';
export { MemoryStorage, type OutboxEntry, type OutboxStorage } from './outbox.js';
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
export type * from './types.js';
