/** The default `refreshLeadMs`, and the share of a token's lifetime it is limited to. */
const REFRESH_LEAD_MS = 30_000;
const REFRESH_LEAD_SHARE = 0.1;

/** A JWT's payload claims `exp` and `iat` in ms (decoded, not verified: only for timing); null for other tokens. */
export function jwtClaims(token: string): { exp: number; iat: number | null } | null {
  const parts = token.split('.');
  if (parts.length !== 3 || !parts[1]) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const payload: unknown = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    if (typeof payload !== 'object' || payload === null) return null;
    const { exp, iat } = payload as { exp?: unknown; iat?: unknown };
    if (typeof exp !== 'number' || !Number.isFinite(exp)) return null;
    return { exp: exp * 1000, iat: typeof iat === 'number' && Number.isFinite(iat) ? iat * 1000 : null };
  } catch {
    return null;
  }
}

/**
 * How long until a token should be refreshed (null: never — not a JWT, or expired already).
 * The time left is this clock's `exp - now`, but never more than the lifetime `exp - iat` (a
 * clock behind the issuer's would refresh too late). The lead is `leadMs` capped at half the
 * lifetime, or by default 30 s capped at 10 % of it.
 */
export function refreshDelay(token: string, leadMs: number | undefined, now: number): number | null {
  const claims = jwtClaims(token);
  if (claims === null) return null;
  let left = claims.exp - now;
  const lifetime = claims.iat !== null && claims.exp > claims.iat ? claims.exp - claims.iat : left;
  left = Math.min(left, lifetime);
  if (left <= 0) return null;
  const lead = leadMs === undefined ? Math.min(REFRESH_LEAD_MS, lifetime * REFRESH_LEAD_SHARE) : Math.min(Math.max(0, leadMs), lifetime / 2);
  return Math.max(0, left - lead);
}
