// End-to-end: the real `@segment/analytics-node` library pointed at Switchboard (its `host`
// option), and a pusher-js dashboard on `private-analytics` watching the same events live.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';

import { Analytics } from '@segment/analytics-node';

import {
  channelAuthorization,
  config,
  connectClient,
  disconnectAll,
  nextEvent,
  psql,
  subscribe,
  waitUntil,
} from './helpers.mjs';

const TIMEOUT = { timeout: 60_000 };
const CHROME =
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36';

after(disconnectAll);

/** An analytics-node client sending every call at once to Switchboard; records the answers. */
function analyticsClient() {
  const analytics = new Analytics({
    writeKey: config.key,
    host: `http://${config.host}:${config.port}`,
    flushAt: 1,
    maxRetries: 0,
  });
  const statuses = [];
  const errors = [];
  analytics.on('http_response', (response) => statuses.push(response.status));
  analytics.on('error', (error) => errors.push(error));
  return { analytics, statuses, errors };
}

/** A run-unique id made of SQL-safe characters. */
function uniqueId(prefix) {
  return `${prefix}-${Date.now()}-${randomBytes(6).toString('hex')}`;
}

test('analytics-node calls arrive as rows with the right columns', TIMEOUT, async () => {
  const userId = uniqueId('node-user');
  const previousId = uniqueId('node-anon');
  const groupId = uniqueId('node-group');
  const { analytics, statuses, errors } = analyticsClient();

  analytics.identify({ userId, traits: { plan: 'pro', email: 'ada@example.com' } });
  analytics.track({
    userId,
    event: 'Order Completed',
    properties: { total: 42.5, currency: 'EUR' },
    context: {
      ip: '203.0.113.5',
      userAgent: CHROME,
      page: {
        path: '/checkout',
        url: 'https://shop.example/checkout',
        referrer: 'https://www.google.com/',
        title: 'Checkout',
      },
      campaign: { source: 'newsletter', medium: 'email', name: 'spring-sale' },
    },
  });
  analytics.page({
    userId,
    name: 'Pricing',
    properties: {
      path: '/pricing',
      url: 'https://shop.example/pricing?utm_source=google&utm_medium=cpc&utm_campaign=brand',
      search: '?utm_source=google&utm_medium=cpc&utm_campaign=brand',
      referrer: 'https://news.example/',
      title: 'Pricing',
    },
  });
  analytics.group({ userId, groupId, traits: { name: 'ACME' } });
  analytics.alias({ userId, previousId });
  await analytics.closeAndFlush({ timeout: 15_000 });

  assert.deepEqual(errors, []);
  assert.deepEqual(statuses, [200, 200, 200, 200, 200]);

  const columns = `type, name, source, channel, message_id IS NOT NULL AND message_id <> '',
    occurred_at <= received_at, sent_at IS NOT NULL, original_timestamp IS NOT NULL,
    coalesce(page_path, ''), coalesce(page_referrer, ''), coalesce(page_title, ''),
    coalesce(utm_source, ''), coalesce(utm_medium, ''), coalesce(utm_campaign, ''),
    coalesce(host(ip), ''), coalesce(browser, ''), coalesce(os, ''), coalesce(device_class, ''),
    is_bot, coalesce(group_id, ''), coalesce(previous_id, ''),
    coalesce(data -> 'properties' ->> 'total', data -> 'traits' ->> 'plan', ''),
    context -> 'library' ->> 'name'`;
  const rows = await waitUntil(
    () => {
      const found = psql(
        `SELECT ${columns} FROM events WHERE user_id = '${userId}' ORDER BY type`,
      );
      return found.length === 5 ? found : null;
    },
    15_000,
    () => `five rows for ${userId}`,
  );
  const library = '@segment/analytics-node';
  assert.deepEqual(
    rows.map((row) => row.split('|')),
    [
      ['alias', 'alias', 'track', 'private-analytics', 't', 't', 't', 't',
       '', '', '', '', '', '', '127.0.0.1', '', '', '', 'f', '', previousId, '', library],
      ['group', 'group', 'track', 'private-analytics', 't', 't', 't', 't',
       '', '', '', '', '', '', '127.0.0.1', '', '', '', 'f', groupId, '', '', library],
      ['identify', 'identify', 'track', 'private-analytics', 't', 't', 't', 't',
       '', '', '', '', '', '', '127.0.0.1', '', '', '', 'f', '', '', 'pro', library],
      ['page', 'page', 'track', 'private-analytics', 't', 't', 't', 't',
       '/pricing', 'https://news.example/', 'Pricing', 'google', 'cpc', 'brand',
       '127.0.0.1', '', '', '', 'f', '', '', '', library],
      ['track', 'Order Completed', 'track', 'private-analytics', 't', 't', 't', 't',
       '/checkout', 'https://www.google.com/', 'Checkout', 'newsletter', 'email', 'spring-sale',
       '203.0.113.5', 'Chrome', 'Windows 10', 'desktop', 'f', '', '', '42.5', library],
    ],
  );

  // The rollups counted each row once.
  const [users] = psql(
    `SELECT count(*) FROM reports.active_users_daily WHERE user_key = '${userId}'`,
  );
  assert.equal(users, '1');
});

test('a pusher-js dashboard on private-analytics sees Segment calls live', TIMEOUT, async (t) => {
  const dashboard = await connectClient(t, { channelAuthorization: channelAuthorization() });
  const channel = await subscribe(dashboard, 'private-analytics');
  const userId = uniqueId('live-user');
  const received = nextEvent(channel, 'Signed Up', 10_000);
  const { analytics, errors } = analyticsClient();
  analytics.track({ userId, event: 'Signed Up', properties: { plan: 'trial' } });
  await analytics.closeAndFlush({ timeout: 15_000 });
  assert.deepEqual(errors, []);
  const event = await received;
  assert.equal(event.type, 'track');
  assert.equal(event.userId, userId);
  assert.deepEqual(event.properties, { plan: 'trial' });
  assert.equal(event.context.library.name, '@segment/analytics-node');
});
