// Small SVG charts of our own: a line chart over time (with optional horizontal limit lines,
// e.g. a connection quota) and horizontal bars. Colours come from CSS classes (series-0…7).

import { h, s } from './dom.js';

const WIDTH = 640;
/** The width of a chart across the whole grid (the others are half as wide). */
export const WIDE = 1200;
const MARGIN = { top: 14, right: 14, bottom: 26, left: 56 };
const SERIES_CLASSES = 8;
/** Series with at most this many points have each point marked. */
const DOTS_UP_TO = 60;

const compact = new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 1 });

/** The smallest "nice" number (1, 2, 2.5, 5 × 10^n) at least `value`. */
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/**
 * A line chart. `series`: `[{label, points: [[x, y], …]}]` with `x` a number (e.g. ms since
 * the epoch); `limits`: `[{label, y}]` drawn dashed; `x`: `{from, to, format}`; `y.format`
 * formats values. Returns a <figure> with the chart and its legend.
 */
export function lineChart({ label, series, limits = [], x, y = {}, height = 200, width = WIDTH }) {
  const formatY = y.format ?? ((value) => compact.format(value));
  const counts = y.integer ?? true;
  const xs = series.flatMap((line) => line.points.map(([px]) => px));
  const from = x?.from ?? Math.min(...xs);
  const to = x?.to ?? Math.max(...xs);
  const highest = Math.max(0, ...series.flatMap((line) => line.points.map(([, py]) => py)), ...limits.map((l) => l.y));
  // Counts get whole-number ticks.
  const top = niceCeiling(counts ? Math.max(highest, 2) : highest);
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const plotHeight = height - MARGIN.top - MARGIN.bottom;
  const px = (value) => MARGIN.left + (to > from ? ((value - from) / (to - from)) * plotWidth : plotWidth / 2);
  const py = (value) => MARGIN.top + plotHeight - (value / top) * plotHeight;

  const svg = s('svg', {
    viewBox: `0 0 ${width} ${height}`,
    class: 'chart-svg',
    role: 'img',
    'aria-label': label,
  });
  svg.append(s('title', {}, label));
  for (const fraction of [0, 0.5, 1]) {
    const at = py(top * fraction);
    svg.append(
      s('line', { class: 'grid', x1: MARGIN.left, x2: width - MARGIN.right, y1: at, y2: at }),
      s('text', { class: 'tick', x: MARGIN.left - 6, y: at + 4, 'text-anchor': 'end' }, formatY(top * fraction)),
    );
  }
  if (x?.format && Number.isFinite(from) && Number.isFinite(to)) {
    const ticks = to > from ? [from, (from + to) / 2, to] : [from];
    ticks.forEach((tick, index) => {
      const anchor = ticks.length === 1 ? 'middle' : ['start', 'middle', 'end'][index];
      svg.append(s('text', { class: 'tick', x: px(tick), y: height - 8, 'text-anchor': anchor }, x.format(tick)));
    });
  }
  for (const limit of limits) {
    const at = py(limit.y);
    svg.append(
      s('line', { class: 'limit', x1: MARGIN.left, x2: width - MARGIN.right, y1: at, y2: at }),
      s('text', { class: 'limit-label', x: width - MARGIN.right - 4, y: at - 4, 'text-anchor': 'end' }, `${limit.label} ${formatY(limit.y)}`),
    );
  }
  series.forEach((line, index) => {
    const css = `series-${index % SERIES_CLASSES}`;
    const points = [...line.points].sort((a, b) => a[0] - b[0]);
    if (points.length > 1) {
      const d = points.map(([a, b], i) => `${i ? 'L' : 'M'}${px(a).toFixed(1)},${py(b).toFixed(1)}`).join('');
      svg.append(s('path', { class: `line ${css}`, d }));
    }
    // Few points: each is marked, so sparse data does not read as a trend.
    if (points.length <= DOTS_UP_TO) {
      for (const [a, b] of points) {
        svg.append(s('circle', { class: `dot ${css}`, cx: px(a), cy: py(b), r: 3 }, s('title', {}, `${line.label}: ${formatY(b)}`)));
      }
    }
  });
  const legend = h(
    'ul',
    { class: 'legend' },
    series.map((line, index) =>
      h('li', {}, h('span', { class: `swatch series-${index % SERIES_CLASSES}`, 'aria-hidden': 'true' }), line.label),
    ),
    limits.map((limit) => h('li', {}, h('span', { class: 'swatch limit', 'aria-hidden': 'true' }), limit.label)),
  );
  return h('figure', { class: 'chart' }, svg, h('figcaption', {}, legend));
}

/** Horizontal bars: `rows` of `{label, value, note}`, scaled to the largest value. */
export function barChart({ label, rows, width = WIDTH }) {
  const top = Math.max(1, ...rows.map((row) => row.value));
  const rowHeight = 26;
  const labelWidth = 200;
  const height = rows.length * rowHeight + 4;
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart-svg bars', role: 'img', 'aria-label': label });
  svg.append(s('title', {}, label));
  rows.forEach((row, index) => {
    const y = index * rowHeight + 2;
    const length = ((width - labelWidth - 90) * row.value) / top;
    svg.append(
      s('text', { class: 'bar-label', x: labelWidth - 8, y: y + 17, 'text-anchor': 'end' }, row.label),
      s('rect', { class: `bar series-${index % SERIES_CLASSES}`, x: labelWidth, y, width: Math.max(length, 1), height: rowHeight - 6, rx: 3 }),
      s('text', { class: 'bar-value', x: labelWidth + Math.max(length, 1) + 6, y: y + 17 }, row.note ?? compact.format(row.value)),
    );
  });
  return h('figure', { class: 'chart' }, svg);
}
