import type { Core } from './core.js';
import { ClientError, errorText } from './errors.js';
import { jwtClaims, refreshDelay } from './jwt.js';
import type { Track } from './requests.js';
import { MAX_TIMER_MS, clearTimer, unref, type Timer } from './timers.js';
import { EXPIRY_MARGIN_MS, loggedOut, type TokenKeeper } from './token.js';

/** Refresh attempts for one token (a provider failing, the gateway refusing) before letting it expire. */
const REFRESH_ATTEMPTS = 3;
/** Added to the wait a paced refresh names (timers and clocks are not exact). */
const REFRESH_PACE_MARGIN_MS = 50;

/** What a refresh needs to know of the chats: whether their registrations hold the token. */
export interface RefreshChats {
  /** Some chat is registered (its registration holds the current token). */
  anyRegistered(): boolean;
  /** Some chat's register is under way. */
  anyRegistering(): boolean;
}

/** A `refresh` sent on the current connection and not answered yet. */
interface Attempt {
  /** The token it hands over. */
  token: string;
  /** The token it replaces. */
  from: string;
  /** Its sends still to be answered (a resend's answer may come too). */
  sends: number;
  /** Sends it again (a no-op once it is answered). */
  resend(): void;
}

/**
 * With a provider and a JWT: the SDK asks the provider for a new token `refreshLeadMs` before
 * `exp` and hands it to the gateway (`refresh`), which switches every registration of the
 * connection to it, so registrations never expire. Its timers do not keep a Node process alive.
 */
export class TokenRefresh {
  /** When the current token (a provider's JWT) is to be refreshed; armed whenever a token is adopted. */
  private timer: Timer | null = null;
  /** Refresh attempts for the current token. */
  private attempts = 0;
  /** Refreshes of the current token answered "refresh again in <n> ms" without a usable <n> (backoff for the next). */
  private paced = 0;
  /** The `refresh` in flight on the current connection: the token it hands over, the one it replaces. */
  private refreshing: Attempt | null = null;
  /** Answers still expected to refreshes already settled (a resend's second answer): recognised, dropped. */
  private echoes = 0;

  constructor(
    private readonly core: Core,
    private readonly keeper: TokenKeeper,
    private readonly leadMs: number | undefined,
    private readonly chats: RefreshChats,
  ) {}

  /** Schedules the refresh of the token just adopted. */
  arm(): void {
    clearTimer(this.timer);
    this.timer = null;
    this.attempts = 0;
    this.paced = 0;
    const token = this.keeper.current;
    if (this.core.ended() || this.keeper.provider === null || token === null) return;
    const delay = refreshDelay(token, this.leadMs, Date.now());
    if (delay === null) return;
    // Timers overflow past 2^31-1 ms (~24.8 days) and fire at once: a long-lived token waits in steps.
    if (delay > MAX_TIMER_MS) this.timer = unref(setTimeout(() => this.arm(), MAX_TIMER_MS));
    else this.timer = unref(setTimeout(() => this.refresh(), delay));
  }

  /** The connection closed before the answer (sent or still queued): the new token is for the next one. */
  abandon(): void {
    this.echoes = 0;
    const attempt = this.refreshing;
    if (attempt === null) return;
    this.refreshing = null;
    if (this.keeper.usable === attempt.from) this.keeper.adopt(attempt.token);
  }

  /** The client ended. */
  stop(): void {
    clearTimer(this.timer);
    this.timer = null;
    this.refreshing = null;
    this.echoes = 0;
  }

  /** `refreshed`: the connection's registrations hold the new token now. False when it answers nothing of ours. */
  onRefreshed(): boolean {
    const request = this.core.requests.answered('f');
    const attempt = this.refreshing;
    if (attempt === null) {
      if (this.echoes > 0) return this.echoes--, true;
      return request !== undefined;
    }
    this.refreshing = null;
    this.echoes += attempt.sends - 1;
    if (this.keeper.usable === attempt.from) this.keeper.adopt(attempt.token);
    return true;
  }

  /**
   * A `refresh` answered with an error; `answersRequest`: a refresh was waiting for an answer.
   * False when it answers nothing of ours.
   *
   * A refresh resent (after a pause or a timeout) whose first send the gateway did read is
   * answered "a refresh is already in progress" (`inProgress`): the first send's answer is still
   * to come. Any other answer (a paced "refresh again in <n> ms" included: then nothing is in
   * progress, the first send was dropped) is the refresh's.
   */
  onError(error: ClientError, answersRequest: boolean, inProgress: boolean): boolean {
    const attempt = this.refreshing;
    if (attempt !== null && attempt.sends > 1 && inProgress) {
      attempt.sends--;
      return true;
    }
    if (answersRequest || attempt !== null) {
      this.refused(error);
      return true;
    }
    if (this.echoes > 0) {
      this.echoes--;
      return true;
    }
    return false;
  }

  /**
   * A send of a `refresh` refused by the gateway's token bucket (`rate_limited` with
   * `retry_after_ms`): not read, so not the refresh's answer. Sent again, with the same token, once
   * the gateway reads again (the pacer holds it back meanwhile), as the requests dropped with it
   * are: not a failed attempt, and the provider is not asked again. False when it answers nothing
   * of ours.
   */
  onUnread(answersRequest: boolean): boolean {
    const attempt = this.refreshing;
    if (attempt === null) {
      if (this.echoes > 0) return this.echoes--, true; // a resend of a refresh settled already
      return answersRequest;
    }
    attempt.sends--; // that send is answered
    attempt.resend();
    return true;
  }

  private refresh(): void {
    this.timer = null;
    const from = this.keeper.usable;
    const provider = this.keeper.provider;
    if (this.core.ended() || from === null || provider === null) return;
    if (this.refreshing !== null) {
      // The refresh of an earlier token is still out: this one's comes after its answer.
      this.timer = unref(setTimeout(() => this.refresh(), 250));
      return;
    }
    if (!this.core.isOpen() || !this.chats.anyRegistered()) {
      if (this.core.isOpen() && this.chats.anyRegistering() && (jwtClaims(from)?.exp ?? 0) > Date.now()) {
        // Just reconnected: refresh once a registration holds the token.
        this.timer = unref(setTimeout(() => this.refresh(), 250));
        return;
      }
      // No registration holds the token: the next register asks the provider for a new one.
      this.keeper.markStale();
      return;
    }
    this.attempts++;
    this.keeper
      .call(provider)
      .then((token) => {
        if (this.core.ended() || this.keeper.usable !== from) return; // replaced meanwhile
        if (typeof token !== 'string' || token === '') throw new Error('the token provider returned no token');
        if (token === from) throw new Error('the token provider returned the current token again');
        // The connection dropped meanwhile: the registers of the next one carry the new token.
        if (!this.core.isOpen()) return this.keeper.adopt(token);
        this.send(from, token);
      })
      .catch((err: unknown) => {
        // The provider says the user is logged out: no more refreshes, no more chats.
        if (loggedOut(err)) return this.core.giveUp(err);
        this.failed(from, new ClientError('unauthorized', `token refresh: ${errorText(err)}`));
      });
  }

  private send(from: string, token: string): void {
    const text = JSON.stringify({ type: 'refresh', token });
    const attempt: Attempt = { token, from, sends: 1, resend: () => void (this.refreshing === attempt && this.core.transmit(text, false, track) && attempt.sends++) };
    const track: Track = { key: 'f', resend: attempt.resend };
    this.refreshing = attempt;
    this.core.transmit(text, false, track);
  }

  /** The refresh in flight was answered with an error. */
  private refused(error: ClientError): void {
    const attempt = this.refreshing;
    if (attempt === null) return;
    this.refreshing = null;
    this.echoes += attempt.sends - 1;
    // No registration holds the old token (they ended meanwhile): the new one is for the next registers.
    if (error.code === 'not_registered') {
      if (this.keeper.usable === attempt.from) this.keeper.adopt(attempt.token);
      return;
    }
    this.failed(attempt.from, error, attempt.token);
  }

  /**
   * Tries again a little later, a few times; then lets the token expire: the gateway ends the
   * registrations (`token_expired`) and the SDK registers them again with a new token and `since`.
   */
  private failed(from: string, error: ClientError, token?: string): void {
    if (this.core.ended() || this.keeper.usable !== from) return;
    const left = (jwtClaims(from)?.exp ?? 0) - Date.now();
    const paced = refreshPacedFor(error);
    if (paced !== undefined && token !== undefined) {
      // The gateway paces refreshes (its verifies of the last one): not a failed attempt. The same
      // new token is sent again when it says, if the current one is still valid then.
      const wait = paced ?? Math.min(1000 * 2 ** this.paced++, 30_000);
      if (wait + REFRESH_PACE_MARGIN_MS < left - EXPIRY_MARGIN_MS) {
        if (this.attempts > 0) this.attempts--;
        clearTimer(this.timer);
        this.timer = unref(setTimeout(() => this.sendAgain(from, token), wait + REFRESH_PACE_MARGIN_MS));
        return;
      }
      this.core.emit('error', { error, during: 'token refresh (paced by the gateway past the token\'s expiry: the registrations will expire and be registered again)' });
      return;
    }
    if (this.attempts >= REFRESH_ATTEMPTS || left <= 0) {
      this.core.emit('error', { error, during: 'token refresh (the registrations will expire and be registered again)' });
      return;
    }
    const delay = Math.min(1000 * 2 ** (this.attempts - 1), left / 3);
    clearTimer(this.timer);
    this.timer = unref(setTimeout(() => this.refresh(), delay));
  }

  /** After a paced refresh: the same new token, sent again (the provider is not asked again). */
  private sendAgain(from: string, token: string): void {
    this.timer = null;
    if (this.core.ended() || this.keeper.usable !== from) return;
    // The connection dropped meanwhile: the registers of the next one carry the new token.
    if (!this.core.isOpen()) return this.keeper.adopt(token);
    // A refresh still out, or a new connection whose registers (with the old token) are under
    // way: like `refresh`, wait for them, so the refresh covers every registration.
    if (this.refreshing !== null || (this.chats.anyRegistering() && (jwtClaims(from)?.exp ?? 0) > Date.now())) {
      this.timer = unref(setTimeout(() => this.sendAgain(from, token), 250));
      return;
    }
    // No registration holds the old token any more: the next registers carry the new one.
    if (!this.chats.anyRegistered()) return this.keeper.adopt(token);
    this.attempts++; // given back if it is paced again
    this.send(from, token);
  }
}

/**
 * A refresh answered `rate_limited` because refreshes are paced (`refresh again in <n> ms`): the
 * wait it names, null when it names none; undefined for any other error.
 */
function refreshPacedFor(error: ClientError): number | null | undefined {
  if (error.code !== 'rate_limited' || !/refreshes are paced|refresh again in/i.test(error.message)) return undefined;
  const ms = /refresh again in (\d+) ?ms/i.exec(error.message);
  return ms === null ? null : Number(ms[1]);
}
