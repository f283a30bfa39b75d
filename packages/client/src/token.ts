import { backoffDelay } from './backoff.js';
import type { Core } from './core.js';
import { ClientError, errorText } from './errors.js';
import { jwtClaims } from './jwt.js';
import type { TokenSource } from './options.js';
import type { Timer } from './timers.js';

/** A token expiring sooner than this is not used again to register a chat whose token expired. */
export const EXPIRY_MARGIN_MS = 1000;

type Provider = () => string | Promise<string>;

/** The provider handed back the token that was just refused. */
export class RefusedAgain extends Error {}

/** A wait let go because no chat needs it any more (the last one was left). */
class WaitCancelled extends Error {}

/** What a token provider throws to say the user is logged out: the client ends at once. */
export function loggedOut(err: unknown): err is ClientError {
  return err instanceof ClientError && (err.code === 'unauthorized' || err.code === 'forbidden');
}

/**
 * The token registers are made with: the static one, or the provider's — asked for when there is
 * none yet or it was refused or expired, asked again with backoff when the provider fails, and
 * given up on after too many refusals in a row.
 */
export class TokenKeeper {
  private token: string | null;
  /** Refused or expired: the next register asks the provider for another. */
  private stale = false;
  private request: Promise<string> | null = null;
  /** Failed token provider calls in a row, since when, and when it may be asked again. */
  private providerFailures = 0;
  private providerFailingSince = 0;
  private providerFailedAt = 0;
  private providerRetryAt = 0;
  /** Waits of provider calls (their pacing and timeout), cut short when the client ends. */
  private readonly waits = new Set<{ timer: Timer; reject(err: unknown): void }>();
  /** The last token counted as refused (so N chats refusing one token count once). */
  private refusedToken: string | null = null;
  /** Why `refusedToken` was refused (a provider that hands it back again gives up with this). */
  private refusal: ClientError | null = null;
  private refusedAs: 'unauthorized' | 'forbidden' | null = null;
  private authFailures = 0;

  constructor(
    private readonly core: Core,
    private readonly source: TokenSource,
    /** A token was adopted: its refresh is scheduled. */
    private readonly onAdopt: () => void,
  ) {
    this.token = typeof source === 'string' ? source : null;
  }

  /** The token provider; null for a static token. */
  get provider(): Provider | null {
    return typeof this.source === 'string' ? null : this.source;
  }

  /** The token adopted last, stale or not; null before the provider's first. */
  get current(): string | null {
    return this.token;
  }

  /** The token to register with now; null when the provider must be asked (see `fresh`). */
  get usable(): string | null {
    return this.stale ? null : this.token;
  }

  /** When a failed provider may be asked again (0: at once). */
  get retryAt(): number {
    return this.providerRetryAt;
  }

  /** The kind of the latest refused register since the last successful one. */
  get lastRefusal(): 'unauthorized' | 'forbidden' | null {
    return this.refusedAs;
  }

  /** The token is to be replaced by the provider's next one before it registers anything. */
  markStale(): void {
    this.stale = true;
  }

  /** A registration's token expired: a token expiring this soon is not used again (the provider is asked). */
  registrationExpired(): void {
    if (this.token === null || (jwtClaims(this.token)?.exp ?? 0) - Date.now() < EXPIRY_MARGIN_MS) this.stale = true;
  }

  /** A register succeeded: refusals in a row start anew. */
  accepted(): void {
    this.authFailures = 0;
    this.refusedToken = null;
    this.refusedAs = null;
  }

  /** A register was refused: remembered if it was the token or the chat (see `lastRefusal`). */
  registerRefused(error: ClientError): void {
    if (error.code === 'unauthorized' || error.code === 'forbidden') this.refusedAs = error.code;
  }

  /**
   * The gateway refused the current token (a register or registration `unauthorized`, 4401).
   * Final with a static token; with a provider the next register asks it for a new one. Each
   * token counts once, however many chats it was refused for.
   */
  refused(error: ClientError, code?: number): void {
    if (this.provider === null) return this.core.giveUp(error, code);
    this.stale = true;
    if (this.refusedToken === this.token) return;
    this.refusedToken = this.token;
    this.refusal = error;
    this.authFailed(error, code);
  }

  /** The backend disconnected the user (4403): never this token again, and it counts as refused. */
  userDisconnected(error: ClientError, code: number): void {
    this.stale = true;
    this.refusedToken = this.token;
    this.refusal = error;
    this.authFailed(error, code);
  }

  /**
   * The token to register with: the static one, or the provider's (asked again once refused or
   * expired; one call at a time, shared by every chat waiting). A provider handing back the token
   * that was just refused counts as a refusal; a provider that fails is asked again later.
   */
  fresh(): Promise<string> {
    if (this.token !== null && !this.stale) return Promise.resolve(this.token);
    const source = this.source;
    if (typeof source === 'string') return Promise.resolve(source);
    if (this.request === null) {
      const request = this.askProvider(source).finally(() => {
        if (this.request === request) this.request = null;
      });
      this.request = request;
    }
    return this.request;
  }

  /** The token from now on (for registers, reconnects and the next refresh). */
  adopt(token: string): void {
    this.token = token;
    this.stale = false;
    this.onAdopt();
  }

  /** One provider call, bounded by `tokenTimeoutMs`; its answer must be a non-empty string. */
  async call(provider: Provider): Promise<string> {
    const { tokenTimeoutMs } = this.core.cfg;
    const limit = this.wait(tokenTimeoutMs);
    const timeout = limit.done.then(() => {
      throw new Error(`no answer within ${tokenTimeoutMs} ms`);
    });
    timeout.catch(() => undefined);
    try {
      const token: unknown = await Promise.race([Promise.resolve().then(provider), timeout]);
      if (typeof token !== 'string' || token === '') throw new Error('not a non-empty string');
      this.providerFailures = 0;
      this.providerRetryAt = 0;
      return token;
    } finally {
      limit.cancel();
    }
  }

  /** No chat waits for a token: a provider call (or its pacing) is let go; the next chat asks anew. */
  letGo(): void {
    this.endWaits(new WaitCancelled());
    this.request = null;
  }

  /** The client ended: every wait rejects with `error`. */
  end(error: ClientError): void {
    this.endWaits(error);
  }

  private async askProvider(provider: Provider): Promise<string> {
    await this.wait(this.providerRetryAt - Date.now()).done;
    const token = await this.call(provider).catch((err: unknown) => {
      this.providerFailed(err);
      throw err;
    });
    if (token === this.refusedToken) {
      const refusal = this.refusal ?? new ClientError('unauthorized', 'the token was refused');
      this.authFailed(new ClientError(refusal.code, `${refusal.message}; the token provider returned the refused token again`, refusal.details), refusal.details.closeCode);
      throw new RefusedAgain();
    }
    this.adopt(token);
    return token;
  }

  /** Refused tokens in a row: past `maxAuthFailures` the client gives up. */
  private authFailed(error: ClientError, code?: number): void {
    if (++this.authFailures >= this.core.cfg.maxAuthFailures) this.core.giveUp(error, code);
  }

  /**
   * A provider call failed: asked again after a backoff delay (the chats waiting for it share
   * the next call), and given up on after `tokenGiveUpMs` of failures in a row — or at once when
   * the provider says the user is logged out (a `ClientError` unauthorized / forbidden).
   */
  private providerFailed(err: unknown): void {
    if (this.core.ended() || err instanceof WaitCancelled) return;
    if (loggedOut(err)) return this.core.giveUp(err);
    const { tokenGiveUpMs, backoff } = this.core.cfg;
    const now = Date.now();
    // "In a row": a failure long after the last one (the chats were left meanwhile) starts anew.
    if (this.providerFailures > 0 && now - this.providerFailedAt > tokenGiveUpMs) this.providerFailures = 0;
    this.providerFailedAt = now;
    if (this.providerFailures++ === 0) this.providerFailingSince = now;
    const error = new ClientError('unauthorized', `the token provider failed: ${errorText(err)}`);
    if (now - this.providerFailingSince >= tokenGiveUpMs) return this.core.giveUp(error);
    this.providerRetryAt = now + Math.max(backoff.minDelayMs, backoffDelay(this.providerFailures - 1, backoff));
    this.core.emit('error', { error, during: 'token provider (asked again after a backoff delay)' });
  }

  /**
   * `done` resolves after `ms` (at once for ≤ 0) and rejects if the client ends first, so no
   * wait keeps a Node process alive after `close()`; `cancel()` drops it (it never settles then).
   */
  private wait(ms: number): { done: Promise<void>; cancel(): void } {
    const ended = this.core.ended();
    if (ended) return { done: Promise.reject(ended), cancel: () => undefined };
    if (ms <= 0) return { done: Promise.resolve(), cancel: () => undefined };
    let entry!: { timer: Timer; reject(err: unknown): void };
    const done = new Promise<void>((resolve, reject) => {
      entry = { timer: setTimeout(() => (this.waits.delete(entry), resolve()), ms), reject };
    });
    this.waits.add(entry);
    const cancel = () => {
      clearTimeout(entry.timer);
      this.waits.delete(entry);
    };
    return { done, cancel };
  }

  private endWaits(error: unknown): void {
    for (const entry of this.waits) {
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    this.waits.clear();
  }
}
