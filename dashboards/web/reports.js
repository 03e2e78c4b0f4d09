// The Reports view: a time-range picker and every report of the reports API as a table, with
// a chart where one helps, a CSV link each, the funnel form and the weekly retention grid.

import { getJson, reportUrl } from './api.js';
import { barChart, lineChart, WIDE } from './chart.js';
import { h, replace, status, table } from './dom.js';
import { funnelSection, retentionGrid } from './funnel.js';

const DAY = 86_400_000;
const MAX_RANGE_DAYS = 366;
const MAX_HOURLY_DAYS = 31;
/** Most rows a table shows; the CSV has them all. */
const SHOWN_ROWS = 500;

const PRESETS = [
  ['1', 'Last 24 hours'],
  ['7', 'Last 7 days'],
  ['30', 'Last 30 days'],
  ['90', 'Last 90 days'],
  ['365', 'Last 365 days'],
  ['custom', 'Custom dates…'],
];

const utcDate = (ms) => new Date(ms).toISOString().slice(0, 10);
const utcMinute = (ms) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
const time = (text) => Date.parse(text);

function select(name, label, choices, value) {
  return h(
    'label',
    { class: 'option' },
    label,
    h('select', { name }, choices.map(([v, text]) => h('option', { value: v, selected: v === value }, text))),
  );
}

/** One report section: heading, its own options, a body and a CSV link, reloaded on demand. */
function section({ id, title, options = [], render, check }) {
  const body = h('div', { class: 'report-body' });
  const csv = h('a', { class: 'csv', hidden: true, download: `${id}.csv` }, 'Download CSV');
  const form = options.length ? h('div', { class: 'report-options' }, options) : null;
  const element = h(
    'article',
    { class: 'card report', id: `report-${id}`, 'aria-labelledby': `report-${id}-title` },
    h('header', { class: 'card-head' }, h('h3', { id: `report-${id}-title` }, title), form, csv),
    body,
  );
  let controller = null;
  let last = null;
  const optionValues = () =>
    Object.fromEntries([...element.querySelectorAll('.report-options select')].map((el) => [el.name, el.value]));
  async function load(range) {
    last = range;
    controller?.abort();
    controller = new AbortController();
    const params = { ...range.params, ...optionValues() };
    const refusal = check?.(params, range);
    if (refusal) {
      csv.hidden = true;
      replace(body, status('error', refusal));
      return;
    }
    element.setAttribute('aria-busy', 'true');
    replace(body, status('loading', 'Loading…'));
    try {
      const answer = await getJson(reportUrl(id, params), { signal: controller.signal });
      csv.href = reportUrl(id, { ...params, format: 'csv' });
      csv.hidden = false;
      if (answer.rows.length === 0) {
        replace(body, status('empty', 'No data in this range.'));
      } else {
        replace(body, render(answer, params, range));
        if (answer.truncated) body.append(status('empty', 'Only the first 10,000 rows: narrow the range.'));
      }
    } catch (error) {
      if (error.name === 'AbortError') return;
      csv.hidden = true;
      replace(
        body,
        status('error', `This report failed: ${error.message}`),
        h('button', { type: 'button', onclick: () => load(last) }, 'Retry'),
      );
    } finally {
      element.removeAttribute('aria-busy');
    }
  }
  element.addEventListener('change', (event) => {
    if (event.target.closest('.report-options') && last) load(last);
  });
  return { element, load, abort: () => controller?.abort() };
}

/** The table of an answer, its first SHOWN_ROWS rows, values passed through `format`. */
function answerTable(answer, title, format = (row) => row) {
  const rows = answer.rows.slice(0, SHOWN_ROWS).map(format);
  const more =
    answer.rows.length > SHOWN_ROWS
      ? status('empty', `Showing ${SHOWN_ROWS} of ${answer.rows.length} rows: the CSV has them all.`)
      : null;
  return [table(answer.columns, rows, { caption: title }), more];
}

function eventsOverTime(answer, params, range) {
  const bucketText = params.bucket === 'hour' ? utcMinute : utcDate;
  const totals = new Map();
  for (const [bucket, source, , events] of answer.rows) {
    const line = totals.get(source) ?? new Map();
    line.set(time(bucket), (line.get(time(bucket)) ?? 0) + events);
    totals.set(source, line);
  }
  const series = [...totals].map(([source, line]) => ({ label: source, points: [...line] }));
  return [
    lineChart({
      label: `Events per ${params.bucket} by source`,
      series,
      x: { from: range.from, to: range.to, format: utcDate },
      width: WIDE,
      height: 240,
    }),
    answerTable(answer, 'Events over time', ([bucket, ...rest]) => [bucketText(time(bucket)), ...rest]),
  ];
}

function uniqueUsers(answer, _params, range) {
  return [
    lineChart({
      label: 'Unique users per day',
      series: [{ label: 'users', points: answer.rows.map(([day, users]) => [time(day), users]) }],
      x: { from: range.from, to: range.to, format: utcDate },
    }),
    answerTable(answer, 'Unique users per day'),
  ];
}

/** A top-N report: bars of its first number column, and the table. */
function ranking(title) {
  return (answer) => [
    barChart({
      label: title,
      rows: answer.rows.map(([name, value]) => ({ label: name ?? '(none)', value })),
    }),
    answerTable(answer, title),
  ];
}

const limit = select('limit', 'Show', [['5', 'top 5'], ['10', 'top 10'], ['25', 'top 25'], ['100', 'top 100']], '10');

function sections() {
  return [
    section({
      id: 'events_over_time',
      title: 'Events over time',
      options: [select('bucket', 'Per', [['hour', 'hour'], ['day', 'day'], ['week', 'week']], 'day')],
      render: eventsOverTime,
      check: (params, range) =>
        params.bucket === 'hour' && range.to - range.from > MAX_HOURLY_DAYS * DAY
          ? `Hourly buckets cover at most ${MAX_HOURLY_DAYS} days: pick a shorter range or another bucket.`
          : null,
    }),
    section({ id: 'unique_users', title: 'Unique users per day', render: uniqueUsers }),
    section({ id: 'top_events', title: 'Top events', options: [limit.cloneNode(true)], render: ranking('Top events') }),
    section({ id: 'top_pages', title: 'Top pages', options: [limit.cloneNode(true)], render: ranking('Top pages') }),
    section({ id: 'top_referrers', title: 'Top referrers', options: [limit.cloneNode(true)], render: ranking('Top referrers') }),
    section({ id: 'utm_campaigns', title: 'UTM campaigns', render: (answer) => answerTable(answer, 'UTM campaigns') }),
    section({
      id: 'technology',
      title: 'Browsers, OS and devices',
      options: [select('dimension', 'By', [['browser', 'browser'], ['os', 'OS'], ['device_class', 'device']], 'browser')],
      render: ranking('Users by technology'),
    }),
    section({ id: 'retention', title: 'Weekly retention', render: retentionGrid }),
  ];
}

/** The range picker; calls `changed(range)` with `{from, to, params}` or `{error}`. */
function rangePicker(changed) {
  const preset = select('range', 'Range', PRESETS, '7');
  const today = utcDate(Date.now());
  const fromInput = h('input', { type: 'date', name: 'from', value: utcDate(Date.now() - 6 * DAY), max: today });
  const toInput = h('input', { type: 'date', name: 'to', value: today, max: today });
  const custom = h(
    'span',
    { class: 'custom-range', hidden: true },
    h('label', { class: 'option' }, 'From', fromInput),
    h('label', { class: 'option' }, 'To', toInput),
  );
  const message = h('span', { class: 'range-error', role: 'alert' });
  const refresh = h('button', { type: 'button' }, 'Refresh');
  const read = () => {
    const choice = preset.querySelector('select').value;
    custom.hidden = choice !== 'custom';
    if (choice !== 'custom') {
      const to = Date.now();
      const from = to - Number(choice) * DAY;
      return { from, to, params: { from: new Date(from).toISOString(), to: new Date(to).toISOString() } };
    }
    const from = Date.parse(fromInput.value);
    const to = Date.parse(toInput.value) + DAY;
    if (!Number.isFinite(from) || !Number.isFinite(to)) return { error: 'Pick both dates.' };
    if (from >= to) return { error: 'The first day must not be after the last.' };
    if (to - from > MAX_RANGE_DAYS * DAY) return { error: `A range covers at most ${MAX_RANGE_DAYS} days.` };
    return { from, to, params: { from: utcDate(from), to: utcDate(to) } };
  };
  const apply = () => {
    const range = read();
    message.textContent = range.error ?? '';
    if (!range.error) changed(range);
  };
  preset.addEventListener('change', apply);
  custom.addEventListener('change', apply);
  refresh.addEventListener('click', apply);
  const element = h('div', { class: 'toolbar' }, preset, custom, refresh, h('span', { class: 'hint' }, 'Times in UTC'), message);
  return { element, apply };
}

export function mount(container, { app }) {
  const all = sections();
  const funnel = funnelSection();
  const picker = rangePicker((range) => {
    const withApp = { ...range, params: { app_id: app, ...range.params } };
    for (const report of all) report.load(withApp);
    funnel.load(withApp);
  });
  const grid = h('div', { class: 'reports' }, all.slice(0, -1).map((r) => r.element), funnel.element, all.at(-1).element);
  container.append(picker.element, grid);
  picker.apply();
  return {
    unmount() {
      for (const report of all) report.abort();
      funnel.abort();
    },
  };
}
