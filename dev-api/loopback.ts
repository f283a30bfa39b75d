/**
 * DNS rebinding: a server bound to a loopback address is out of reach of other machines, but not
 * of the web pages in this machine's browser. A site whose name is made to resolve to 127.0.0.1
 * (after its page loaded) is same-origin with the loopback server *under that name*: its scripts
 * can call every route and read the answers. The browser still sends the site's name in `Host`,
 * so a loopback server answers only requests addressed to a loopback name. Shared by the dev API
 * (dev-api/app.ts) and the chat page's server (web/server.ts).
 */
import { isIPv4, isIPv6 } from 'node:net';

/** True when `host` (a bind address) only accepts connections from this machine. */
export function isLoopbackAddress(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice('::ffff:'.length) : h;
  if (isIPv4(v4)) return v4.startsWith('127.');
  return isIPv6(h) && /^(0{0,4}:){2,7}0{0,3}1$/.test(h); // ::1, however spelled
}

/**
 * A `Host` header naming this machine: `localhost`, `127.0.0.1` or `[::1]`, with a port or none.
 * Any port: a rebinding site controls the name the browser sends, not the port (and a local
 * proxy in front of the server, such as bench/abuse.ts's, forwards its own port).
 */
const LOOPBACK_HOST = /^(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?$/i;

export function isLoopbackHostHeader(host: string | undefined): boolean {
  return host !== undefined && LOOPBACK_HOST.test(host);
}

export const MISDIRECTED = {
  status: 421,
  error: 'misdirected request: this server is bound to a loopback address and answers only Host localhost, 127.0.0.1 or [::1]',
} as const;
