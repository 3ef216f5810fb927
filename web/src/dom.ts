// A few DOM helpers: elements are built with text nodes only (never innerHTML), so a message
// can hold any characters and never becomes markup.

type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, string | boolean | number | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === false) continue;
    if (name === "class") element.className = String(value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

export function append(parent: Node, children: readonly Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

/** Replace an element's children. */
export function fill(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

// The caller names the element type it knows the id to have.
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters
export function byId<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`#${id} is missing`);
  return element as T;
}

/** A message's text with `@name` mentions marked (plain text otherwise). */
export function textWithMentions(text: string, me: string): DocumentFragment {
  const fragment = document.createDocumentFragment();
  const pattern = /@[\p{L}\p{N}_.-]+|\bhttps?:\/\/[^\s<>"]+/giu;
  let at = 0;
  for (const match of text.matchAll(pattern)) {
    const index = match.index;
    if (index > at) fragment.append(text.slice(at, index));
    if (match[0].startsWith("@")) {
      const name = match[0].slice(1);
      const mine = name.toLowerCase() === me.toLowerCase();
      fragment.append(h("span", { class: mine ? "mention me" : "mention" }, match[0]));
      at = index + match[0].length;
      continue;
    }
    // A link: trailing punctuation belongs to the sentence, not the address.
    const link = match[0].replace(/[.,;:!?)\]'»]+$/u, "");
    const href = safeLink(link);
    fragment.append(
      href === null
        ? link
        : h("a", { href, rel: "noopener noreferrer", target: "_blank", dir: "auto" }, link),
    );
    at = index + link.length;
  }
  if (at < text.length) fragment.append(text.slice(at));
  return fragment;
}

/** The address to link to, or null: http and https only (never javascript: or data:). */
export function safeLink(text: string): string | null {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** Up to two initials of a name, for its avatar. */
export function initials(name: string): string {
  const words = name.split(/[\s._-]+/u).filter((word) => word !== "");
  // eslint-disable-next-line @typescript-eslint/no-misused-spread -- code points, on purpose
  const letters = words.slice(0, 2).map((word) => [...word][0] ?? "");
  // eslint-disable-next-line @typescript-eslint/no-misused-spread -- code points, on purpose
  const text = letters.length === 1 ? [...(words[0] ?? "")].slice(0, 2).join("") : letters.join("");
  return text.toLocaleUpperCase();
}

/** One of eight avatar colours (classes c0…c7 of the stylesheet), the same for a name always. */
export function colourOf(name: string): number {
  let hash = 0;
  for (const unit of name.toLocaleLowerCase())
    hash = (hash * 31 + (unit.codePointAt(0) ?? 0)) >>> 0;
  return hash % 8;
}
