// The Debug console: a live log of an app's connections, subscriptions and events on every
// gateway, read from its reserved channel with our own Pusher client, and of the webhooks the
// workers sent and failed (polled: the workers deliver them); filters, pause, clear, the most
// frequent channels and events, and the event creator.

import { ApiError, getJson, postJson } from './api.js';
import { h, replace, status } from './dom.js';
import { PusherConnection } from './pusher.js';

/** Records kept in memory, and shown. */
const KEPT = 2000;
const SHOWN = 500;
/** How often the webhook attempts are asked for. */
const WEBHOOK_POLL_MS = 1000;
/** Deliveries on other nodes kept for an event whose record has not arrived yet. */
const EARLY_DELIVERIES = 500;
const CHANNEL_NAME = /^[A-Za-z0-9_\-=@,.;]{1,200}$/;

const TYPES = [
  ['', 'every type'],
  ['connection_opened', 'connections opened'],
  ['connection_closed', 'connections closed'],
  ['subscribed', 'subscriptions'],
  ['unsubscribed', 'unsubscriptions'],
  ['api_event', 'API events'],
  ['client_event', 'client events'],
  ['segment_event', 'Segment events'],
  ['slow_consumer_closed', 'slow-consumer closes'],
  ['webhook_sent', 'webhooks sent'],
  ['webhook_failed', 'webhooks failed'],
];
/** What one record is, in its row. */
const LABELS = {
  connection_opened: 'connection opened',
  connection_closed: 'connection closed',
  subscribed: 'subscribed',
  unsubscribed: 'unsubscribed',
  api_event: 'API event',
  client_event: 'client event',
  segment_event: 'Segment event',
  slow_consumer_closed: 'slow consumer closed',
  webhook_sent: 'webhook sent',
  webhook_failed: 'webhook failed',
};
const STATES = {
  connecting: 'Connecting…',
  subscribed: 'Live',
  reconnecting: 'Disconnected: reconnecting…',
};

const clock = (ms) => new Date(ms).toISOString().slice(11, 23);

function describe(record) {
  switch (record.type) {
    case 'connection_opened':
      return `socket ${record.socket_id}`;
    case 'connection_closed':
      return `socket ${record.socket_id}, close code ${record.code}`;
    case 'subscribed':
    case 'unsubscribed':
    case 'slow_consumer_closed':
      return `socket ${record.socket_id} · ${record.channel}`;
    case 'webhook_sent':
      return `${record.webhook} · ${record.events} event${record.events === 1 ? '' : 's'} (${record.event_types.join(', ')}), attempt ${record.attempts}`;
    case 'webhook_failed':
      return `${record.webhook} · attempt ${record.attempts}: ${record.error}${record.dead ? ' — given up (dead)' : ', retried later'}`;
    default:
      return `${record.channel} · ${record.event} → ${record.delivered} socket${record.delivered === 1 ? '' : 's'}`;
  }
}

function row(record) {
  const isEvent = record.type.endsWith('_event');
  return h(
    'li',
    { class: `record record-${record.type}` },
    h('time', { datetime: new Date(record.t).toISOString() }, clock(record.t)),
    h('span', { class: 'badge' }, LABELS[record.type] ?? record.type),
    h('span', { class: 'summary' }, describe(record)),
    isEvent ? h('code', { class: 'data' }, record.data + (record.truncated ? '…' : '')) : null,
  );
}

/** Counts by key, the top `n` as `[key, count]`. */
function top(counts, n = 5) {
  return [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, n);
}

function ranking(title, entries) {
  return [
    h('h4', {}, title),
    entries.length === 0
      ? status('empty', 'Nothing yet.')
      : h('ol', { class: 'ranking' }, entries.map(([name, count]) => h('li', {}, h('span', {}, name), h('span', { class: 'num' }, count)))),
  ];
}

/** The event creator: channel, event, JSON data, sent as a backend's trigger. */
function creator(app) {
  const channel = h('input', { name: 'channel', value: 'my-channel', required: true, maxlength: 200, autocomplete: 'off' });
  const event = h('input', { name: 'event', value: 'my-event', required: true, maxlength: 200, autocomplete: 'off' });
  const data = h('textarea', { name: 'data', rows: 4, spellcheck: 'false' }, '{"message": "hello"}');
  const result = h('p', { class: 'send-result', role: 'status' });
  const form = h(
    'form',
    { class: 'creator', novalidate: true },
    h('label', {}, 'Channel', channel),
    h('label', {}, 'Event', event),
    h('label', { class: 'wide-field' }, 'Data (JSON)', data),
    h('button', { type: 'submit' }, 'Send the event'),
    result,
  );
  form.addEventListener('submit', async (submitted) => {
    submitted.preventDefault();
    result.classList.remove('state-error');
    const fail = (text) => {
      result.textContent = text;
      result.classList.add('state-error');
    };
    if (!CHANNEL_NAME.test(channel.value)) return fail('The channel name may use A–Z a–z 0–9 and _-=@,.; (at most 200).');
    if (event.value.trim() === '') return fail('The event needs a name.');
    try {
      JSON.parse(data.value);
    } catch (error) {
      return fail(`The data is not JSON: ${error.message}`);
    }
    result.textContent = 'Sending…';
    try {
      await postJson(`/api/console/${encodeURIComponent(app)}/events`, {
        channel: channel.value,
        event: event.value,
        data: data.value,
      });
      result.textContent = `Sent ${event.value} on ${channel.value}.`;
    } catch (error) {
      fail(`Not sent: ${error instanceof ApiError ? error.message : error}`);
    }
    return undefined;
  });
  return h('article', { class: 'card', id: 'console-creator', 'aria-labelledby': 'creator-title' }, h('h3', { id: 'creator-title' }, 'Event creator'), form);
}

export function mount(container, { app }) {
  const line = h('p', { class: 'hint console-state', role: 'status' }, 'Connecting…');
  const type = h('select', { name: 'type' }, TYPES.map(([value, text]) => h('option', { value }, text)));
  const channelFilter = h('input', { name: 'channel-filter', type: 'search', placeholder: 'any channel', autocomplete: 'off' });
  const eventFilter = h('input', { name: 'event-filter', type: 'search', placeholder: 'any event', autocomplete: 'off' });
  const pause = h('button', { type: 'button', 'aria-pressed': 'false' }, 'Pause');
  const clear = h('button', { type: 'button', class: 'secondary' }, 'Clear');
  const counter = h('span', { class: 'hint', 'aria-live': 'off' });
  const log = h('ol', { class: 'log', 'aria-label': 'Debug records, newest first' });
  const frequent = h('div', { class: 'frequent' });
  container.append(
    h(
      'div',
      { class: 'toolbar' },
      line,
      h('label', { class: 'option' }, 'Show', type),
      h('label', { class: 'option' }, 'Channel', channelFilter),
      h('label', { class: 'option' }, 'Event', eventFilter),
      pause,
      clear,
      counter,
    ),
    h(
      'div',
      { class: 'console' },
      h('article', { class: 'card log-card', 'aria-labelledby': 'log-title' }, h('h3', { id: 'log-title' }, 'Live log'), log),
      h('div', { class: 'side' }, h('article', { class: 'card', id: 'console-frequent' }, frequent), creator(app)),
    ),
  );

  let records = [];
  let paused = false;
  let unseen = 0;
  const channels = new Map();
  const events = new Map();
  const matches = (record) =>
    (!type.value || record.type === type.value) &&
    (!channelFilter.value || (record.channel ?? '').includes(channelFilter.value)) &&
    (!eventFilter.value || (record.event ?? '').includes(eventFilter.value));
  const render = () => {
    const shown = records.filter(matches).slice(-SHOWN).reverse();
    if (records.length === 0) replace(log, h('li', {}, status('empty', 'Waiting for activity on this app…')));
    else if (shown.length === 0) replace(log, h('li', {}, status('empty', 'No record matches the filters.')));
    else replace(log, shown.map(row));
    counter.textContent = `${records.length} records` + (paused ? ` · paused, ${unseen} new` : '');
    replace(frequent, h('h3', {}, 'Most frequent'), ranking('Channels', top(channels)), ranking('Events', top(events)));
  };
  // Deliveries on other gateways, by event id, until the event's own record arrives.
  const early = new Map();
  const delivered = (record) => {
    for (let i = records.length - 1; i >= 0; i -= 1) {
      if (records[i].id === record.id) {
        records[i] = { ...records[i], delivered: records[i].delivered + record.delivered };
        if (!paused) render();
        return;
      }
    }
    early.set(record.id, (early.get(record.id) ?? 0) + record.delivered);
    if (early.size > EARLY_DELIVERIES) early.delete(early.keys().next().value);
  };
  const add = (received) => {
    if (received.type === 'delivered') {
      delivered(received);
      return;
    }
    const record = early.has(received.id) ? { ...received, delivered: received.delivered + early.get(received.id) } : received;
    early.delete(received.id);
    records.push(record);
    if (records.length > KEPT) records = records.slice(-KEPT);
    if (record.channel) channels.set(record.channel, (channels.get(record.channel) ?? 0) + 1);
    if (record.event) events.set(record.event, (events.get(record.event) ?? 0) + 1);
    if (paused) {
      unseen += 1;
      counter.textContent = `${records.length} records · paused, ${unseen} new`;
    } else {
      render();
    }
  };
  for (const input of [type, channelFilter, eventFilter]) input.addEventListener('input', render);
  pause.addEventListener('click', () => {
    paused = !paused;
    unseen = 0;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    render();
  });
  clear.addEventListener('click', () => {
    records = [];
    unseen = 0;
    channels.clear();
    events.clear();
    render();
  });
  render();

  let connection = null;
  let stopped = false;
  let webhookTimer = null;
  // Webhook attempts, polled: each shown once (by delivery id and attempt count).
  const shownAttempts = new Set();
  const pollWebhooks = async (since) => {
    let next = since;
    try {
      const query = since === undefined ? '' : `?since=${since}`;
      const answer = await getJson(`/api/console/${encodeURIComponent(app)}/webhooks${query}`);
      for (const record of answer.records) {
        const key = `${record.id}:${record.attempts}`;
        if (shownAttempts.has(key)) continue;
        shownAttempts.add(key);
        if (shownAttempts.size > KEPT) shownAttempts.delete(shownAttempts.values().next().value);
        add(record);
      }
      next = answer.now;
    } catch {
      // The next poll asks again from the same point.
    }
    if (!stopped) webhookTimer = setTimeout(() => pollWebhooks(next), WEBHOOK_POLL_MS);
  };
  pollWebhooks(undefined);
  (async () => {
    let target;
    try {
      target = await getJson(`/api/console/${encodeURIComponent(app)}`);
    } catch (error) {
      line.textContent = `The console cannot start: ${error.message}`;
      return;
    }
    if (!target.gateway) {
      line.textContent = 'This process has no gateway: there is nothing to watch here.';
      return;
    }
    if (stopped) return;
    const { host, port, tls } = target.gateway;
    const url = `${tls ? 'wss' : 'ws'}://${host ?? location.hostname}:${port}/app/${encodeURIComponent(target.key)}?protocol=7&client=switchboard-console&version=1.0`;
    connection = new PusherConnection({
      url,
      channel: target.channel,
      authorize: async (socketId) =>
        (await postJson(`/api/console/${encodeURIComponent(app)}/auth`, { socket_id: socketId })).auth,
      onState: (state, detail) => {
        line.textContent = STATES[state] ?? `Stopped: ${detail}`;
        line.dataset.state = state;
      },
      onEvent: (event, data) => {
        if (event === 'record' && data && typeof data === 'object') add(data);
      },
    });
    connection.connect();
  })();
  return {
    unmount() {
      stopped = true;
      clearTimeout(webhookTimer);
      connection?.close();
    },
  };
}
