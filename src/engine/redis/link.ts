/**
 * What the Redis engine's parts share: the command connection with the engine's scripts, the
 * key and channel names, and a view of the link's state. The engine (engine.ts) owns the
 * connections and their recovery; the command plane (commands.ts) and presence (presence.ts)
 * work through this.
 */
import type { Cluster, Redis } from 'ioredis';
import type { IdKey } from '../../protocol/ids.js';
import type { EngineEvents } from '../types.js';

type ScriptCommands = {
  msLeave(chatKey: string, userKey: string, leavingKey: string, now: number, conn: string, user: string, held: number, announceBy: number, keyTtl: number): Promise<number>;
  msSweep(chatKey: string, streamKey: string, leavingKey: string, now: number, userPrefix: string): Promise<[number, string, ...string[]]>;
  msAnnounced(leavingKey: string, ...userDeadlinePairs: Array<string | number>): Promise<number>;
  msWriteEntries(chatKey: string, now: number, expiresAt: number, keyTtl: number, userPrefix: string, ...userConnPairs: string[]): Promise<number[]>;
  msAppend(streamKey: string, historyKey: string, ...args: Array<string | number | Buffer>): Promise<[number, string, number, string?]>;
  msRecoverBuffer(streamKey: string, historyKey: string, ...args: Array<string | number>): Promise<[number, Buffer, Buffer, ...Buffer[]]>;
  msContains(historyKey: string, key: string, historySize: number, maxBytes: number): Promise<number>;
};
/** The command connection (a Cluster client with REDIS_CLUSTER) with the scripts it defines. */
export type Commands = (Redis | Cluster) & ScriptCommands;

export const CHANNEL_PREFIX = 'ms:chat:{';
export const channelOf = (chat: IdKey) => `${CHANNEL_PREFIX}${chat}}`;
export const presenceKey = (chat: IdKey) => `ms:presence:{${chat}}`;
export const userPrefix = (chat: IdKey) => `ms:presence:{${chat}}:u:`;
/** Users of the chat who went offline and whose `offline` is not confirmed sent yet (see LEAVE in scripts.ts). */
export const leavingKey = (chat: IdKey) => `ms:presence:{${chat}}:leaving`;
export const streamKey = (chat: IdKey) => `ms:stream:{${chat}}`;
export const historyKey = (chat: IdKey) => `ms:history:{${chat}}`;

/**
 * In a chat channel's payload header, a second field starting with `!` names a kind of
 * publication other than a frame for clients; `!` alone is a command. Connection ids never
 * start with it. An instance ignores a kind it does not know — so a later version can add kinds
 * without an older instance, mid rolling deploy, handing them to clients as frames.
 */
export const KIND_PREFIX = '!';
export const COMMAND_MARK = KIND_PREFIX;
/**
 * How long any one command may take before it counts as failed (ioredis's commandTimeout); also
 * how long a publish waits for its own echo, and a command for the other instances' answers.
 */
export const COMMAND_TIMEOUT_MS = 2000;

export interface RedisLink {
  /** The command connection (created by `start`). */
  cmd(): Commands;
  readonly cluster: boolean;
  /** Connected and subscribed (the engine's `isConnected`). */
  connected(): boolean;
  /** Connected and answering writes (the engine's `isReady`). */
  serving(): boolean;
  /** Both connections are up (a recovery may still be running). */
  connectionsUp(): boolean;
  closing(): boolean;
  /** The engine's events, once started. */
  events(): EngineEvents | null;
  /** Runs a command while connected; every failure surfaces as EngineUnavailableError (and is logged, limited). */
  whenReady<T>(command: () => Promise<T>): Promise<T>;
  /** PUBLISH, or SPUBLISH in a Cluster: the one place that picks. */
  publishOn(channel: string, payload: string | Buffer): Promise<number>;
}
