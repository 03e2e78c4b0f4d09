// The funnel form (2 to 5 ordered event names and a window) and the weekly retention grid.

import { getJson, reportUrl } from './api.js';
import { barChart, WIDE } from './chart.js';
import { h, replace, status, table } from './dom.js';

const MIN_STEPS = 2;
const MAX_STEPS = 5;
const MAX_WINDOW_DAYS = 90;
const UNIT_MINUTES = { m: 1, h: 60, d: 1440 };

const percent = (part, whole) => (whole > 0 ? `${Math.round((1000 * part) / whole) / 10}%` : '—');

/** The funnel report: a form; run on submit, and again when the range changes. */
export function funnelSection() {
  const names = h('datalist', { id: 'event-names' });
  const steps = h('ol', { class: 'steps' });
  const addButton = h('button', { type: 'button', class: 'secondary' }, 'Add a step');
  const windowCount = h('input', { type: 'number', name: 'window-count', min: 1, value: 1, required: true, class: 'short' });
  const windowUnit = h(
    'select',
    { name: 'window-unit' },
    h('option', { value: 'm' }, 'minutes'),
    h('option', { value: 'h' }, 'hours'),
    h('option', { value: 'd', selected: true }, 'days'),
  );
  const message = h('p', { class: 'form-error', role: 'alert' });
  const body = h('div', { class: 'report-body' }, status('empty', 'Enter 2 to 5 event names in order and run the funnel.'));
  const csv = h('a', { class: 'csv', hidden: true, download: 'funnel.csv' }, 'Download CSV');

  const renumber = () => {
    const items = [...steps.children];
    items.forEach((item, index) => {
      item.querySelector('.step-label').textContent = `Step ${index + 1}`;
      item.querySelector('button').disabled = items.length <= MIN_STEPS;
    });
    addButton.disabled = items.length >= MAX_STEPS;
  };
  const addStep = (value = '') => {
    const input = h('input', { type: 'text', name: 'step', list: 'event-names', value, autocomplete: 'off', maxlength: 200 });
    const item = h(
      'li',
      {},
      h('label', {}, h('span', { class: 'step-label' }), input),
      h('button', { type: 'button', class: 'secondary', 'aria-label': 'Remove this step' }, 'Remove'),
    );
    item.querySelector('button').addEventListener('click', () => {
      item.remove();
      renumber();
      steps.querySelector('input')?.focus();
    });
    steps.append(item);
    renumber();
    return input;
  };
  addStep();
  addStep();
  addButton.addEventListener('click', () => addStep().focus());

  const form = h(
    'form',
    { class: 'funnel-form', novalidate: true },
    h('fieldset', {}, h('legend', {}, 'Steps (event names, in order)'), steps, addButton),
    h('label', { class: 'option' }, 'Within', windowCount, windowUnit),
    h('button', { type: 'submit' }, 'Run the funnel'),
    message,
  );
  const element = h(
    'article',
    { class: 'card report wide', id: 'report-funnel', 'aria-labelledby': 'report-funnel-title' },
    h('header', { class: 'card-head' }, h('h3', { id: 'report-funnel-title' }, 'Funnel'), csv),
    form,
    names,
    body,
  );

  let range = null;
  let submitted = null;
  let controller = null;

  const read = () => {
    const values = [...steps.querySelectorAll('input')].map((input) => input.value.trim());
    if (values.some((value) => value === '')) return { error: 'Every step needs an event name.' };
    const count = Number(windowCount.value);
    const minutes = count * UNIT_MINUTES[windowUnit.value];
    if (!Number.isInteger(count) || count < 1 || minutes > MAX_WINDOW_DAYS * 1440) {
      return { error: `The window is a whole number, at most ${MAX_WINDOW_DAYS} days.` };
    }
    return { steps: values.join(','), window: `${count}${windowUnit.value}` };
  };

  async function run() {
    if (!range || !submitted) return;
    controller?.abort();
    controller = new AbortController();
    const params = { ...range.params, ...submitted };
    element.setAttribute('aria-busy', 'true');
    replace(body, status('loading', 'Loading…'));
    try {
      const answer = await getJson(reportUrl('funnel', params), { signal: controller.signal });
      csv.href = reportUrl('funnel', { ...params, format: 'csv' });
      csv.hidden = false;
      const first = answer.rows[0]?.[2] ?? 0;
      if (first === 0) {
        replace(body, status('empty', 'Nobody did the first step in this range.'));
        return;
      }
      replace(
        body,
        barChart({
          width: WIDE,
          label: 'Users at each funnel step',
          rows: answer.rows.map(([step, name, users]) => ({
            label: `${step}. ${name}`,
            value: users,
            note: `${users} (${percent(users, first)})`,
          })),
        }),
        table(
          [...answer.columns, 'conversion'],
          answer.rows.map((row) => [...row, percent(row[2], first)]),
          { caption: 'Funnel' },
        ),
      );
    } catch (error) {
      if (error.name === 'AbortError') return;
      csv.hidden = true;
      replace(body, status('error', `The funnel failed: ${error.message}`));
    } finally {
      element.removeAttribute('aria-busy');
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const values = read();
    message.textContent = values.error ?? '';
    if (values.error) return;
    submitted = values;
    run();
  });

  async function suggest(params) {
    try {
      const answer = await getJson(reportUrl('top_events', { ...params, limit: 100 }));
      replace(names, answer.rows.map(([name]) => h('option', { value: name })));
    } catch {
      // Only suggestions: the form works without them.
    }
  }

  return {
    element,
    load(next) {
      range = next;
      suggest(next.params);
      run();
    },
    abort: () => controller?.abort(),
  };
}

/** The weekly retention answer as a grid: a row per cohort, a column per week after it. */
export function retentionGrid(answer) {
  const cohorts = new Map();
  let weeks = 0;
  for (const [cohort, users, week, active, retention] of answer.rows) {
    const row = cohorts.get(cohort) ?? { users, cells: new Map() };
    row.cells.set(week, { active, retention });
    cohorts.set(cohort, row);
    weeks = Math.max(weeks, week + 1);
  }
  const headers = ['Cohort (week of)', 'Users', ...Array.from({ length: weeks }, (_, w) => `Week ${w}`)];
  const grid = h(
    'table',
    { class: 'retention' },
    h('caption', { class: 'visually-hidden' }, 'Weekly retention: share of each cohort active N weeks later'),
    h('thead', {}, h('tr', {}, headers.map((text) => h('th', { scope: 'col' }, text)))),
    h(
      'tbody',
      {},
      [...cohorts].map(([cohort, row]) =>
        h(
          'tr',
          {},
          h('th', { scope: 'row' }, String(cohort).slice(0, 10)),
          h('td', { class: 'num' }, row.users),
          Array.from({ length: weeks }, (_, week) => {
            const cell = row.cells.get(week);
            if (!cell) return h('td', { class: 'heat-none' });
            const level = Math.min(5, Math.round(Number(cell.retention) / 20));
            return h(
              'td',
              { class: `num heat-${level}`, title: `${cell.active} of ${row.users} users` },
              `${Number(cell.retention)}%`,
            );
          }),
        ),
      ),
    ),
  );
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Weekly retention' }, grid);
}
