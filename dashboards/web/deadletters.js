// The Dead letters view: how many messages sit in the dead-letter queue and why (the reasons
// of the first 100, read without taking them), and the webhook deliveries that fail (still
// retried) or were given up (dead).

import { getJson } from './api.js';
import { h, replace, status, table } from './dom.js';

export function mount(container) {
  const refresh = h('button', { type: 'button' }, 'Refresh');
  const body = h('div', { class: 'report-body' });
  const letters = h(
    'article',
    { class: 'card wide', id: 'dead-letters', 'aria-labelledby': 'dead-letters-title' },
    h('header', { class: 'card-head' }, h('h3', { id: 'dead-letters-title' }, 'Dead-letter queue'), refresh),
    body,
  );
  const webhookBody = h('div', { class: 'report-body' });
  const webhooks = h(
    'article',
    { class: 'card wide', id: 'webhook-failures', 'aria-labelledby': 'webhook-failures-title' },
    h('h3', { id: 'webhook-failures-title' }, 'Failing webhook deliveries'),
    webhookBody,
  );
  container.append(h('div', { class: 'reports' }, letters, webhooks));

  let controller = null;
  async function load() {
    controller?.abort();
    controller = new AbortController();
    letters.setAttribute('aria-busy', 'true');
    replace(body, status('loading', 'Reading the queue…'));
    try {
      const answer = await getJson('/api/dead-letters', { signal: controller.signal });
      const summary = h(
        'p',
        { class: 'dead-summary' },
        `${answer.depth} message${answer.depth === 1 ? '' : 's'} in ${answer.queue}`,
        answer.depth > answer.sampled ? ` (reasons of the first ${answer.sampled})` : '',
        '.',
      );
      if (answer.depth === 0) {
        replace(body, summary, status('empty', 'Nothing was dead-lettered: every event was stored.'));
      } else {
        replace(
          body,
          summary,
          table(['reason', 'messages'], answer.reasons.map(({ reason, count }) => [reason, count]), {
            caption: 'Reasons of the dead letters',
          }),
        );
      }
    } catch (error) {
      if (error.name === 'AbortError') return;
      replace(body, status('error', `The queue could not be read: ${error.message}`));
    } finally {
      letters.removeAttribute('aria-busy');
    }
  }
  async function loadWebhooks() {
    replace(webhookBody, status('loading', 'Reading the deliveries…'));
    try {
      const answer = await getJson('/api/webhook-failures', { signal: controller.signal });
      if (answer.failures.length > 0) {
        replace(
          webhookBody,
          table(
            ['app', 'webhook', 'state', 'batches', 'attempts', 'latest', 'last error'],
            answer.failures.map((f) => [
              f.app_id,
              f.webhook,
              f.status === 'dead' ? 'dead (given up)' : 'retrying',
              f.deliveries,
              f.attempts,
              String(f.latest).replace('T', ' ').slice(0, 19),
              f.last_error ?? '—',
            ]),
            { caption: 'Failing webhook deliveries' },
          ),
        );
      } else if (answer.configured) {
        replace(webhookBody, status('empty', 'No failing deliveries: every webhook batch was taken.'));
      } else {
        replace(webhookBody, status('empty', 'No webhooks are configured ([[apps.webhooks]]).'));
      }
    } catch (error) {
      if (error.name === 'AbortError') return;
      replace(webhookBody, status('error', `The webhook deliveries could not be read: ${error.message}`));
    }
  }
  const loadAll = async () => {
    await load();
    await loadWebhooks();
  };
  refresh.addEventListener('click', loadAll);
  loadAll();
  return { unmount: () => controller?.abort() };
}
