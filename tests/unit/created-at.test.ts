import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isRfc3339 } from '../../src/protocol/codec.js';

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/** Whether (year, month, day) is a real date, by asking Date.UTC whether it rolls over. */
function realDate(year: number, month: number, day: number): boolean {
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  return d.getUTCFullYear() === year && d.getUTCMonth() === month - 1 && d.getUTCDate() === day;
}

describe('created_at: RFC 3339 against the calendar', () => {
  it('accepts exactly the real dates and times, whatever the digits say', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 9999 }),
        fc.integer({ min: 0, max: 13 }),
        fc.integer({ min: 0, max: 32 }),
        fc.integer({ min: 0, max: 25 }),
        fc.integer({ min: 0, max: 61 }),
        fc.integer({ min: 0, max: 61 }),
        fc.option(fc.tuple(fc.constantFrom('+', '-'), fc.integer({ min: 0, max: 25 }), fc.integer({ min: 0, max: 61 }))),
        (year, month, day, hour, minute, second, offset) => {
          const zone = offset === null ? 'Z' : `${offset[0]}${pad(offset[1])}:${pad(offset[2])}`;
          const text = `${pad(year, 4)}-${pad(month)}-${pad(day)}T${pad(hour)}:${pad(minute)}:${pad(second)}${zone}`;
          const valid =
            month >= 1 && month <= 12 && day >= 1 && realDate(year, month, day) && hour <= 23 && minute <= 59 && second <= 59 && (offset === null || (offset[1] <= 23 && offset[2] <= 59));
          assert.equal(isRfc3339(text), valid, text);
          // Whatever it accepts, JavaScript reads as that very instant (no rollover).
          if (valid) {
            const sign = offset?.[0] === '-' ? -1 : 1;
            const offsetMs = offset === null ? 0 : sign * (offset[1] * 60 + offset[2]) * 60_000;
            const local = new Date(0);
            local.setUTCFullYear(year, month - 1, day);
            local.setUTCHours(hour, minute, second, 0);
            assert.equal(Date.parse(text), local.getTime() - offsetMs, text);
          }
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('leap years, fractions, separators, and the shapes it refuses', () => {
    for (const ok of ['2024-02-29T00:00:00Z', '2000-02-29T00:00:00Z', '2024-01-01t00:00:00z', '2024-01-01 00:00:00.5+01:00', '2024-01-01T00:00:00.123456789-00:00']) {
      assert.ok(isRfc3339(ok), ok);
    }
    for (const bad of [
      '2023-02-29T00:00:00Z',
      '1900-02-29T00:00:00Z',
      '2100-02-29T00:00:00Z',
      '2016-12-31T23:59:60Z', // leap second: refused on purpose (JavaScript's Date cannot read it)
      '2024-01-01T24:00:00Z',
      '2024-01-01T00:00:00.1234567890Z',
      '2024-01-01T00:00:00',
      '2024-01-01T00:00Z',
      '2024-01-01',
      '+002024-01-01T00:00:00Z',
      '2024-01-01T00:00:00+0100',
      '2024-1-01T00:00:00Z',
    ]) {
      assert.ok(!isRfc3339(bad), bad);
    }
  });
});
