import type { TSchema, Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { RequestError } from './errors.js';

/** A JSON object whose `type` is a string: the shape every inbound frame shares. */
export interface RawFrame {
  readonly type: string;
  readonly [key: string]: unknown;
}

/**
 * Parses one text frame. Throws `RequestError('bad_request')` for anything that is not a typed
 * JSON object. Its depth is checked apart (`checkDepth`), once the caller holds the frame, so
 * that error can still name the request.
 */
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
  return value as RawFrame;
}

/**
 * Throws `RequestError('bad_request')` for a frame nested deeper than MAX_DEPTH or holding a
 * number that would not pass through as sent (see `unfitValue`).
 */
export function checkFrame(frame: RawFrame): void {
  const unfit = unfitValue(frame, MAX_DEPTH);
  if (unfit === 'deep') throw new RequestError('bad_request', `frame is nested deeper than ${MAX_DEPTH} levels`);
  if (unfit === 'number') throw new RequestError('bad_request', UNFIT_NUMBER);
}

/**
 * Pass-through fields are re-encoded for the main API; a value nested thousands deep parses
 * but overflows the stack when stringified, so depth is bounded at the edge.
 */
export const MAX_DEPTH = 32;

export const UNFIT_NUMBER = 'a number must be finite and, if whole, within ±(2^53 − 1): send larger values as strings';

/**
 * Why `value` cannot be passed on as sent, or null: nested deeper than `limit`, or a number
 * that JSON parsing changed — a literal past the double range is Infinity (re-encoded as null),
 * a whole number past ±(2^53 − 1) has lost digits (a 64-bit id rounded without a word).
 */
export function unfitValue(value: unknown, limit: number): 'deep' | 'number' | null {
  if (typeof value === 'number') return Number.isFinite(value) && (!Number.isInteger(value) || Number.isSafeInteger(value)) ? null : 'number';
  if (typeof value !== 'object' || value === null) return null;
  if (limit === 0) return 'deep';
  // for…in walks arrays and objects alike without allocating a values array per level.
  for (const key in value) {
    const unfit = unfitValue((value as Record<string, unknown>)[key], limit - 1);
    if (unfit !== null) return unfit;
  }
  return null;
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

/**
 * RFC 3339 `date-time` (section 5.6), with `T`, `t` or a space between date and time (the RFC's
 * note allows the space) and at most nine fraction digits. The shape alone is not enough, and
 * neither is `Date.parse`, which rolls impossible dates over (`2024-02-30` is March 1st,
 * `24:00` the next day): every field is checked against the calendar.
 */
const RFC3339_RE = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:[Zz]|[+-](\d{2}):(\d{2}))$/;

/**
 * Whether `value` is an RFC 3339 timestamp of a real instant: month 01–12, day within its month
 * (29 February only in leap years), hour 00–23, minute 00–59, second 00–59, offset up to ±23:59
 * (`-00:00` included). A leap second (`:60`), which RFC 3339 allows, is refused: JavaScript's
 * `Date` cannot read one, so receivers would get a `created_at` they cannot parse (and none has
 * been inserted since 2016).
 */
export function isRfc3339(value: string): boolean {
  const m = RFC3339_RE.exec(value);
  if (m === null) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return false;
  if (hour > 23 || minute > 59 || second > 59) return false;
  return m[7] === undefined || (Number(m[7]) <= 23 && Number(m[8]) <= 59);
}

/** Days in `month` (1–12) of `year`, in the proleptic Gregorian calendar RFC 3339 uses. */
function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}
