// Building DOM nodes without HTML strings: text is always set as text, never parsed.

const SVG = 'http://www.w3.org/2000/svg';

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: `h('button', {type: 'button', onclick}, 'Text')`. */
export function h(tag, attributes, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** An SVG element, as `h`. */
export function s(tag, attributes, ...children) {
  return build(document.createElementNS(SVG, tag), attributes, children);
}

/** Replaces the children of `parent` with `children`. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return build(parent, {}, children);
}

/** A status line: `loading`, `empty` or `error` (announced to screen readers). */
export function status(kind, text) {
  const role = kind === 'error' ? 'alert' : 'status';
  return h('p', { class: `state state-${kind}`, role }, text);
}

const integer = new Intl.NumberFormat('en');

/** A table cell's text for a report value. */
export function cellText(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'number') return integer.format(value);
  return String(value);
}

/** A table of `columns` (header names) and `rows` (arrays of values); numbers align right. */
export function table(columns, rows, { caption } = {}) {
  return h(
    'div',
    { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption ?? 'table' },
    h(
      'table',
      {},
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h(
        'tbody',
        {},
        rows.map((row) =>
          h(
            'tr',
            {},
            row.map((value) =>
              h('td', { class: typeof value === 'number' ? 'num' : null }, cellText(value)),
            ),
          ),
        ),
      ),
    ),
  );
}
