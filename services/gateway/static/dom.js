// Building and updating the page's elements without a framework. User text only ever goes in
// through text nodes, never as HTML.

/** `el("li", {class, dataset, onclick, ...attributes}, ...children)`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/**
 * A list whose items are rebuilt only when they change and moved only when out of place, so a
 * live region announces just what is new and a focused button keeps its focus.
 */
export class KeyedList {
  #parent;
  #nodes = new Map(); // key -> {signature, node}

  constructor(parent) {
    this.#parent = parent;
  }

  /** `items`: [{key, signature, build}]; `build()` makes the element when the signature changed. */
  render(items) {
    const next = new Map();
    const wanted = items.map(({ key, signature, build }) => {
      const known = this.#nodes.get(key);
      const node = known && known.signature === signature ? known.node : build();
      next.set(key, { signature, node });
      return node;
    });
    this.#nodes = next;
    const keep = new Set(wanted);
    for (const child of [...this.#parent.childNodes]) if (!keep.has(child)) child.remove();
    let current = this.#parent.firstChild;
    for (const node of wanted) {
      if (node === current) current = current.nextSibling;
      else this.#parent.insertBefore(node, current);
    }
  }

  clear() {
    this.render([]);
  }
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
  return `${(bytes / 1024 ** 3).toFixed(1)} GB`;
}

export function formatTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return when.toDateString() === new Date().toDateString()
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
