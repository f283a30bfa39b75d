import type { ControlCommand } from '../engine/control.js';
import type { Member, Registry } from '../hub/registry.js';
import type { Logger } from '../log.js';
import { CLOSE } from '../protocol/errors.js';
import type { MainApi } from '../upstream/client.js';

/** What a command needs to act on this instance. */
export interface CommandTargets {
  readonly registry: Registry<Member>;
  /**
   * Connections of this instance, with the user each is bound to (null before its first
   * register); `closed` once the gateway or the peer ended it (it stays listed until its close
   * handshake ends).
   */
  connections(): Iterable<{ readonly user: string | null; readonly closed: boolean; close(code: number, reason: string): void }>;
  readonly api: Pick<MainApi, 'forget' | 'disconnected'>;
  readonly log: Logger;
}

/**
 * Acts on a server-API command on this instance (the engine brings it to every instance it
 * concerns) and returns how many registrations (revoke) or connections (disconnect) it ended.
 * Cached verifies go first, so a register racing the command asks the main API again.
 */
export function createCommandHandler(targets: CommandTargets): (command: ControlCommand) => number {
  return (command) => {
    switch (command.op) {
      case 'forget':
        targets.api.forget(command.user, command.chat);
        return 0;
      case 'revoke': {
        targets.api.forget(command.user, command.chat);
        const members = [...(targets.registry.members(command.chat) ?? [])].filter((m) => m.user === command.user);
        for (const member of members) member.revoke();
        if (members.length > 0) targets.log.info({ chat: command.chat, user: command.user, registrations: members.length }, 'registrations revoked');
        return members.length;
      }
      case 'disconnect': {
        // Marked first: a connection whose first register is under way is not bound to the user
        // yet, so the pass below cannot find it; its register sees the mark and closes it too.
        targets.api.disconnected(command.user);
        // One pass over the instance's connections, copying only the user's (closing edits the set);
        // one closed already (by an earlier disconnect, or still finishing its close handshake) is
        // not counted again.
        const theirs: Array<{ close(code: number, reason: string): void }> = [];
        for (const conn of targets.connections()) if (conn.user === command.user && !conn.closed) theirs.push(conn);
        for (const conn of theirs) conn.close(CLOSE.disconnected, command.reason);
        if (theirs.length > 0) targets.log.info({ user: command.user, connections: theirs.length }, 'user disconnected by the server API');
        return theirs.length;
      }
    }
  };
}
