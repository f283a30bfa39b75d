/** A minimal typed event emitter (no dependency on Node's `events` or the DOM's EventTarget). */
export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<(event: never) => void>>();

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): () => void {
    let set = this.listeners.get(type);
    if (set === undefined) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  off<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): void {
    this.listeners.get(type)?.delete(listener);
  }

  /**
   * Calls every listener. A listener that throws must not leave the SDK half-way through a
   * frame, so its error is rethrown on its own (an uncaught error, as with Node's emitters).
   */
  protected emit<K extends keyof Events>(type: K, event: Events[K]): void {
    const set = this.listeners.get(type);
    if (set === undefined) return;
    for (const listener of [...set] as Array<(event: Events[K]) => void>) {
      try {
        listener(event);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

/** An emitter's `emit`, for the parts of its owner that tell the events. */
export type Emit<Events extends object> = <K extends keyof Events>(type: K, event: Events[K]) => void;
