import { WebSocket } from 'ws';
import type { Session } from './session.js';

/**
 * The gateway's WebSocket class (WebSocketServer's `WebSocket` option): each socket carries its
 * session, so one set of listeners serves every connection. A closure per listener and their
 * shared context would cost ~250 bytes of heap per connection, idle or not.
 */
export class SessionSocket extends WebSocket {
  /** Set as the connection is accepted, before any listener is added. */
  session!: Session;

  /** The session of a socket the gateway accepted (`this` of a listener is typed WebSocket). */
  static sessionOf(ws: WebSocket): Session {
    return (ws as SessionSocket).session;
  }
}
