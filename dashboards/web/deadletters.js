// The Dead letters view: how many messages sit in the dead-letter queue and why (the reasons
// of the first 100, read without taking them), and the webhooks' failing deliveries (none
// until webhooks exist).

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
  const webhooks = h(
    'article',
    { class: 'card wide', id: 'webhook-failures', 'aria-labelledby': 'webhook-failures-title' },
    h('h3', { id: 'webhook-failures-title' }, 'Failing webhook deliveries'),
    status('empty', 'No webhooks are configured: failing deliveries will show here once they are.'),
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
  refresh.addEventListener('click', load);
  load();
  return { unmount: () => controller?.abort() };
}
