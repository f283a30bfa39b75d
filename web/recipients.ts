/**
 * Who a write is encrypted to: each chat's device list, loaded ahead of writes, one request at a
 * time, bounded per user, reused for a while when the main API cannot be reached, waited for when
 * there has never been one (docs/chat-page.md, "Recipients").
 */
import { ApiError } from './api.js';
import type { Recipient } from './crypto.js';
import { errorText, log } from './dom.js';
import { boundDevices, type Entry } from './model.js';
import { renderMessages } from './render.js';
import { session, type ChatView } from './state.js';

/** Retries of a chat's device list while a write waits for it: 1 s, doubling up to this. */
const DEVICES_RETRY_MAX_MS = 5000;
/**
 * After the device list could not be reached (a timeout is 5 s), writes use the last list for
 * this long without asking again, so messages queued behind one another do not each wait out
 * their own timeout. A load that succeeds ends it sooner.
 */
const DEVICES_REUSE_MS = 10_000;
/** The gateway's MAX_MESSAGE_BYTES (default): the SDK refuses larger writes `too_large`. */
export const MAX_FRAME_BYTES = 65_536;

/**
 * How a device-list call failed: `unreachable` (no answer: the network, a timeout, or the page
 * server's 502/504 for a main API it cannot reach), `refused` (403: not a member), or `error`
 * (any other answer, e.g. a 500: the API is there but has no list for us now).
 */
function deviceListFailure(err: unknown): 'unreachable' | 'refused' | 'error' {
  if (err instanceof ApiError) return err.status === 403 ? 'refused' : err.status === 502 || err.status === 504 ? 'unreachable' : 'error';
  return 'unreachable'; // fetch threw: a network error or the timeout
}

/**
 * Fetches the chat's device list and keeps it as the last known one; wakes writes waiting for it.
 * One request at a time per chat: whoever asks while one is in flight (a burst of presence, the
 * writes queued behind one another) shares it, so a hanging API costs them one timeout, not one each.
 */
function fetchDevices(view: ChatView): Promise<Recipient[]> {
  const s = session!;
  view.devicesRequest ??= s.api
    .devices(view.chat.id)
    .then(
      (devices) => {
        // Hundreds of devices of one member would make every message too large for the gateway.
        const list = boundDevices(devices).map(({ device_id, public_key }) => ({ device_id, public_key }));
        if (session === s) {
          view.devices = list;
          view.devicesUnreachableAt = 0;
          const waiting = view.devicesLoaded;
          view.devicesLoaded = [];
          for (const wake of waiting) wake();
        }
        return list;
      },
      (err: unknown) => {
        if (deviceListFailure(err) === 'unreachable') view.devicesUnreachableAt = performance.now();
        throw err;
      },
    )
    .finally(() => (view.devicesRequest = null));
  return view.devicesRequest;
}

/** Loads the device list ahead of any write: when the chat registers and when someone comes online. */
export function loadDevices(view: ChatView): void {
  if (view.devicesRequest) return; // one at a time: a burst of presence needs one list
  fetchDevices(view).catch((err: unknown) => log(`${view.name}: device list not loaded (${errorText(err)})`));
}

export class Abandoned extends Error {}

/**
 * The recipients of a write: every device of the chat's members as the main API lists it now,
 * this one always included, with its own key. Encrypting to fewer devices than the chat has would send a message
 * its members cannot read, so without a list the write waits (shown as "waiting for the chat's
 * devices") and retries; only when the API is unreachable does it use the last list loaded.
 */
export async function recipients(view: ChatView, entry: Entry): Promise<Recipient[]> {
  const s = session!;
  let delay = 1000;
  let logged = false;
  for (;;) {
    if (session !== s || view.deleted.has(entry.id)) throw new Abandoned();
    if (view.gone) throw new Error(view.goneReason);
    let devices: Recipient[] | null = null;
    try {
      // The list could not be reached a moment ago: the last one, without waiting again.
      if (view.devices !== null && view.devicesUnreachableAt > 0 && performance.now() - view.devicesUnreachableAt < DEVICES_REUSE_MS) devices = view.devices;
      else devices = await fetchDevices(view);
    } catch (err) {
      const failure = deviceListFailure(err);
      if (failure === 'refused') throw new Error(`not a member of this chat (${errorText(err)})`);
      if (failure === 'unreachable' && view.devices !== null) {
        log(`${view.name}: device list unavailable (${errorText(err)}), using the last one`);
        devices = view.devices;
      } else if (!logged) {
        logged = true;
        log(`${view.name}: waiting for the chat's device list (${errorText(err)})`);
      }
    }
    if (devices) {
      if (entry.sending === 'waiting') entry.sending = 'sending';
      // This device with its own key, whatever key the list gives its id: an envelope wrapped
      // for another key would be one this device (and its other tabs) cannot open.
      const own = { device_id: s.device.id, public_key: s.device.publicKey };
      return [...devices.filter((d) => d.device_id !== own.device_id), own];
    }
    if (entry.sending !== 'waiting') {
      entry.sending = 'waiting';
      renderMessages(view);
    }
    // Until the next retry, or sooner when another load gets the list.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, delay);
      view.devicesLoaded.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    delay = Math.min(delay * 2, DEVICES_RETRY_MAX_MS);
  }
}
