/**
 * The chat page's DOM helpers and its text outputs: the connection log, the screen reader's live
 * region, and the line under the composer.
 */
import { ClientError } from '../packages/client/src/index.js';

const LOG_LINES = 60;

export function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
}

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: { className?: string; text?: string } = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props.className) node.className = props.className;
  if (props.text !== undefined) node.textContent = props.text;
  node.append(...children);
  return node;
}

export function errorText(err: unknown): string {
  if (err instanceof ClientError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

export function log(line: string): void {
  const list = $('log');
  const stamp = new Date().toTimeString().slice(0, 8);
  list.prepend(el('li', {}, el('time', { text: stamp }), line));
  while (list.children.length > LOG_LINES) list.lastElementChild?.remove();
}

/** A screen reader hears new messages of the open chat here (the list is no live region: a history load would be read out whole). */
export function announce(text: string): void {
  $('announce').textContent = text;
}

/** A line under the composer about what just happened to it (empty: hidden). */
export function notice(text: string): void {
  const el = $('notice');
  el.textContent = text;
  el.hidden = text === '';
}
