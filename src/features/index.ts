import type { TSchema } from '@sinclair/typebox';
import { compileValidator, type Validator } from '../protocol/codec.js';
import type { Feature } from './feature.js';
import { deleteMessage } from './delete-message.js';
import { editMessage } from './edit-message.js';
import { message } from './message.js';
import { ping } from './ping.js';
import { refresh } from './refresh.js';
import { register } from './register.js';
import { typing } from './typing.js';
import { unregister } from './unregister.js';

/** Every client → gateway frame type. Adding one is a file plus a line here. */
const FEATURES: readonly Feature[] = [register, unregister, message, editMessage, deleteMessage, typing, ping, refresh] as Feature[];

export interface FeatureEntry {
  feature: Feature;
  validator: Validator<TSchema>;
}

export type FeatureTable = ReadonlyMap<string, FeatureEntry>;

export function createFeatureTable(features: readonly Feature[] = FEATURES): FeatureTable {
  return new Map(features.map((feature) => [feature.type, { feature, validator: compileValidator(feature.schema) }]));
}
