import type { TSchema, Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { RequestError } from './errors.js';

/** A JSON object whose `type` is a string: the shape every inbound frame shares. */
export interface RawFrame {
  readonly type: string;
  readonly [key: string]: unknown;
}

/** Parses one text frame. Throws `RequestError('bad_request')` for anything that is not a typed JSON object. */
export function parseFrame(text: string): RawFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new RequestError('bad_request', 'frame is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new RequestError('bad_request', 'frame must be a JSON object');
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string') {
    throw new RequestError('bad_request', 'frame has no string "type"');
  }
  if (nestedDeeperThan(value, MAX_DEPTH)) {
    throw new RequestError('bad_request', `frame is nested deeper than ${MAX_DEPTH} levels`);
  }
  return value as RawFrame;
}

/**
 * Pass-through fields are re-encoded for the main API; a value nested thousands deep parses
 * but overflows the stack when stringified, so depth is bounded at the edge.
 */
export const MAX_DEPTH = 32;

export function nestedDeeperThan(value: unknown, limit: number): boolean {
  if (typeof value !== 'object' || value === null) return false;
  if (limit === 0) return true;
  // for…in walks arrays and objects alike without allocating a values array per level.
  for (const key in value) {
    if (nestedDeeperThan((value as Record<string, unknown>)[key], limit - 1)) return true;
  }
  return false;
}

export interface Validator<T extends TSchema> {
  /** Returns the typed frame or throws `RequestError('bad_request')` naming the first bad field. */
  decode(frame: RawFrame): Static<T>;
}

/** Compiles a schema once (TypeBox's JIT checker); decoding is then a plain function call. */
export function compileValidator<T extends TSchema>(schema: T): Validator<T> {
  const check = TypeCompiler.Compile(schema);
  return {
    decode(frame) {
      if (check.Check(frame)) return frame as Static<T>;
      const first = check.Errors(frame).First();
      const where = first?.path ? first.path.replace(/^\//, '').replaceAll('/', '.') : 'frame';
      throw new RequestError('bad_request', `${where}: ${first?.message ?? 'invalid'}`);
    },
  };
}

/** Serialises an outbound frame once; the same bytes go to every receiver. */
export function encode(frame: object): Buffer {
  return Buffer.from(JSON.stringify(frame));
}

const RFC3339_RE = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

export function isRfc3339(value: string): boolean {
  return RFC3339_RE.test(value) && !Number.isNaN(Date.parse(value));
}
