// The System view: the last 15 minutes at one sample a second, pushed by the server
// (Server-Sent Events from /api/system/stream); connections are per-second peaks, drawn
// against the app's quota.

import { lineChart } from './chart.js';
import { h, replace, status } from './dom.js';

const WINDOW_MS = 15 * 60_000;
const HISTORY = 900;

const clock = (ms) => new Date(ms).toISOString().slice(11, 19);
const integer = new Intl.NumberFormat('en');
const milliseconds = (value) => `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;

/** A card whose chart and headline are redrawn from the samples. */
function card(id, title) {
  const headline = h('output', { class: 'current', 'aria-live': 'off' });
  const body = h('div', { class: 'card-body' });
  const element = h(
    'article',
    { class: 'card', id: `system-${id}`, 'aria-labelledby': `system-${id}-title` },
    h('header', { class: 'card-head' }, h('h3', { id: `system-${id}-title` }, title), headline),
    body,
  );
  return { element, headline, body };
}

const points = (samples, read) =>
  samples.flatMap((sample) => {
    const value = read(sample);
    return value === null || value === undefined ? [] : [[sample.t, value]];
  });

function chart(label, samples, series, options = {}) {
  const to = samples.at(-1).t;
  return lineChart({
    label,
    series: series.map(([name, read]) => ({ label: name, points: points(samples, read) })),
    x: { from: to - WINDOW_MS, to, format: clock },
    height: 170,
    ...options,
  });
}

const peakOf = (samples, read) => Math.max(0, ...samples.map((s) => read(s) ?? 0));

/** The fixed cards; `draw(samples)` redraws them all. */
function cards(app) {
  const events = card('events', 'Events in, per second');
  const deliveries = card('deliveries', 'Deliveries out, per second');
  const connections = card('connections', `Connections of ${app} (peak each second)`);
  const subscriptions = card('subscriptions', `Subscriptions of ${app} on this node (peak each second)`);
  const confirm = card('confirm', 'Publish-confirm latency');
  const persist = card('persist', 'Persisting');
  const queues = card('queues', 'Queue depths (messages)');
  const slow = card('slow', 'Slow-consumer closes, per second');
  const all = [events, deliveries, connections, subscriptions, confirm, persist, queues, slow];

  function draw(samples) {
    const last = samples.at(-1);
    const inTotal = (s) => s.events_in.api + s.events_in.client + s.events_in.track;
    events.headline.value = `${integer.format(inTotal(last))}/s now · peak ${integer.format(peakOf(samples, inTotal))}/s`;
    replace(
      events.body,
      chart('Events in per second by source', samples, [
        ['api', (s) => s.events_in.api],
        ['client', (s) => s.events_in.client],
        ['track', (s) => s.events_in.track],
      ]),
    );
    deliveries.headline.value = `${integer.format(last.deliveries)}/s now · peak ${integer.format(peakOf(samples, (s) => s.deliveries))}/s`;
    replace(deliveries.body, chart('Deliveries per second', samples, [['deliveries', (s) => s.deliveries]]));

    const ofApp = (s) => s.connections.find((c) => c.app_id === app);
    const current = ofApp(last);
    if (!current) {
      connections.headline.value = '';
      replace(connections.body, status('empty', 'This process has no gateway: it serves no connections.'));
    } else {
      const peak = peakOf(samples, (s) => ofApp(s)?.peak);
      const quota = current.quota;
      connections.headline.value =
        `${integer.format(current.now)} now · peak ${integer.format(peak)}` +
        (quota === null ? ' · no quota' : ` of ${integer.format(quota)}`);
      // The quota is drawn when it is within reach of what the chart shows.
      const limits = quota !== null && quota <= 20 * Math.max(peak, 1) ? [{ label: 'quota', y: quota }] : [];
      replace(
        connections.body,
        chart(`Connections of ${app}, peak per second`, samples, [['peak', (s) => ofApp(s)?.peak]], { limits }),
      );
    }

    if (current) {
      const peak = peakOf(samples, (s) => ofApp(s)?.subscriptions_peak);
      subscriptions.headline.value = `${integer.format(current.subscriptions_now)} now · peak ${integer.format(peak)}`;
      replace(
        subscriptions.body,
        chart(`Subscriptions of ${app} on this node, peak per second`, samples, [
          ['peak', (s) => ofApp(s)?.subscriptions_peak],
        ]),
      );
    } else {
      subscriptions.headline.value = '';
      replace(subscriptions.body, status('empty', 'This process has no gateway: it serves no subscriptions.'));
    }

    confirm.headline.value = last.confirm ? `max ${milliseconds(last.confirm.max_ms)} now` : 'no publishes now';
    replace(
      confirm.body,
      chart(
        'Publish-confirm latency in milliseconds',
        samples,
        [
          ['slowest', (s) => s.confirm?.max_ms],
          ['mean', (s) => s.confirm?.mean_ms],
        ],
        { y: { format: milliseconds, integer: false } },
      ),
    );

    const lag = last.persist_lag;
    persist.headline.value =
      `${integer.format(last.stored)}/s stored` + (lag === null ? '' : ` · ${integer.format(lag)} accepted, not yet stored`);
    replace(
      persist.body,
      chart('Events accepted and stored per second, and the persist lag', samples, [
        ['accepted', inTotal],
        ['stored', (s) => s.stored],
        ['lag', (s) => s.persist_lag],
      ]),
      chart('Slowest persist batch in milliseconds', samples, [['slowest batch', (s) => s.persist?.max_ms]], {
        y: { format: milliseconds, integer: false },
      }),
    );

    const depth = (value) => (value === null ? 'unknown' : integer.format(value));
    queues.headline.value =
      `persist ${depth(last.queues.persist)} · dead-letter ${depth(last.queues.dead)} · webhooks ${depth(last.queues.webhooks)}`;
    replace(
      queues.body,
      chart('Queue depths in messages', samples, [
        ['persist', (s) => s.queues.persist],
        ['dead-letter', (s) => s.queues.dead],
        ['webhooks', (s) => s.queues.webhooks],
      ]),
    );

    slow.headline.value = `${integer.format(peakOf(samples, (s) => s.slow_closes))} at most in a second`;
    replace(slow.body, chart('Slow-consumer closes per second', samples, [['closed', (s) => s.slow_closes]]));
  }
  return { elements: all.map((c) => c.element), draw };
}

export function mount(container, { app }) {
  const line = h('p', { class: 'hint' }, 'Connecting…');
  const grid = h('div', { class: 'reports system' });
  container.append(
    h('div', { class: 'toolbar' }, line, h('span', { class: 'hint' }, 'Last 15 minutes, one sample a second, times in UTC')),
    grid,
  );
  replace(grid, status('loading', 'Waiting for the first sample…'));
  const view = cards(app);
  let samples = [];
  let pending = false;
  const draw = () => {
    pending = false;
    if (samples.length === 0) return;
    if (!grid.contains(view.elements[0])) replace(grid, view.elements);
    view.draw(samples);
  };
  const schedule = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(draw);
    }
  };
  const source = new EventSource(`/api/system/stream?app_id=${encodeURIComponent(app)}`);
  source.addEventListener('history', (event) => {
    samples = JSON.parse(event.data);
    line.textContent = 'Live';
    schedule();
  });
  source.addEventListener('sample', (event) => {
    samples.push(JSON.parse(event.data));
    if (samples.length > HISTORY) samples.splice(0, samples.length - HISTORY);
    line.textContent = 'Live';
    schedule();
  });
  source.addEventListener('error', () => {
    line.textContent = 'Disconnected: reconnecting…';
  });
  return { unmount: () => source.close() };
}
