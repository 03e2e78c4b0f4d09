// End-to-end: the web console in a real headless Chromium (Debian's, driven by playwright-core),
// logged in with HTTP Basic auth, against fixture data sent through the Segment API. Every view
// must render without a console error; a screenshot of each is saved (config.screenshots).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import {
  apps,
  connectClient,
  disconnectAll,
  nextEvent,
  serverClient,
  subscribe,
  trigger,
  uniqueChannel,
  waitUntil,
  config,
} from './helpers.mjs';

const TIMEOUT = { timeout: 120_000 };
const ADMIN = `http://${config.host}:${config.adminPort}`;
const AUTH = `Basic ${Buffer.from(`admin:${config.dashboardPassword}`).toString('base64')}`;
const CHROME =
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36';
const SAFARI_IPHONE =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1';
const FIREFOX_LINUX = 'Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0';

let browser;

before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium' });
  mkdirSync(config.screenshots, { recursive: true });
});
after(async () => {
  disconnectAll();
  await browser?.close();
});

/** A logged-in page that records console errors and uncaught exceptions in `errors`. */
async function openConsole(t, { viewport = { width: 1280, height: 900 } } = {}) {
  const context = await browser.newContext({
    httpCredentials: { username: 'admin', password: config.dashboardPassword },
    viewport,
  });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  return { page, errors };
}

async function admin(path) {
  const response = await fetch(`${ADMIN}${path}`, { headers: { authorization: AUTH } });
  assert.equal(response.status, 200, `${path}: ${await response.clone().text()}`);
  return response.json();
}

/** Three visitors over the last ten days, through the Segment API (its `/v1/batch`). */
async function sendFixture() {
  const day = 86_400_000;
  const base = Date.now() - 10 * day;
  const at = (days, minutes = 0) => new Date(base + days * day + minutes * 60_000).toISOString();
  const utm = '?utm_source=google&utm_medium=cpc&utm_campaign=spring';
  const visitors = [
    [
      CHROME,
      [
        { type: 'identify', userId: 'u1', timestamp: at(0), traits: { plan: 'pro' } },
        {
          type: 'page',
          userId: 'u1',
          timestamp: at(0, 1),
          properties: { path: '/', url: `https://shop.example/${utm}`, search: utm, referrer: 'https://www.google.com/' },
        },
        { type: 'track', userId: 'u1', event: 'Signed Up', timestamp: at(0, 2) },
        { type: 'track', userId: 'u1', event: 'Order Completed', timestamp: at(0, 7), properties: { total: 30 } },
        { type: 'page', userId: 'u1', timestamp: at(7), properties: { path: '/pricing', url: 'https://shop.example/pricing' } },
      ],
    ],
    [
      SAFARI_IPHONE,
      [
        {
          type: 'page',
          userId: 'u2',
          timestamp: at(1),
          properties: { path: '/', url: 'https://shop.example/', referrer: 'https://news.ycombinator.com/item?id=1' },
        },
        { type: 'track', userId: 'u2', event: 'Signed Up', timestamp: at(1, 30) },
      ],
    ],
    [
      FIREFOX_LINUX,
      [
        { type: 'page', anonymousId: 'a3', timestamp: at(2), properties: { path: '/pricing', url: 'https://shop.example/pricing' } },
        { type: 'track', anonymousId: 'a3', event: 'Signed Up', timestamp: at(2, 10) },
        { type: 'track', anonymousId: 'a3', event: 'Order Completed', timestamp: at(2, 40) },
      ],
    ],
  ];
  for (const [userAgent, batch] of visitors) {
    const response = await fetch(`http://${config.host}:${config.port}/v1/batch`, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${apps.dashboard.key}:`).toString('base64')}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify({ batch, context: { userAgent } }),
    });
    assert.equal(response.status, 200, await response.text());
  }
  // Stored (the reports read what the worker wrote): wait for every row.
  await waitUntil(
    async () => {
      const from = new Date(Date.now() - 30 * day).toISOString();
      const { rows } = await admin(`/api/reports/top_events?app_id=${apps.dashboard.id}&from=${from}`);
      return rows.reduce((sum, [, events]) => sum + events, 0) === 10;
    },
    30_000,
    'the fixture was not stored',
  );
}

test('the admin port redirects to the console, which asks for the password', TIMEOUT, async () => {
  const root = await fetch(`${ADMIN}/`, { redirect: 'manual' });
  assert.equal(root.status, 303);
  assert.equal(root.headers.get('location'), '/dashboard');
  const anonymous = await fetch(`${ADMIN}/dashboard`);
  assert.equal(anonymous.status, 401);
  assert.match(anonymous.headers.get('www-authenticate'), /^Basic /);
});

test('every report renders from the fixture without console errors', TIMEOUT, async (t) => {
  await sendFixture();
  const { page, errors } = await openConsole(t);
  await page.goto(`${ADMIN}/`);
  assert.equal(new URL(page.url()).pathname, '/dashboard');
  await page.selectOption('#app', apps.dashboard.id);
  await page.locator('select[name=range]').selectOption('30');

  const card = (id) => page.locator(`#report-${id}`);
  const rowsOf = async (id) => (await card(id).locator('tbody tr').allInnerTexts()).map((row) => row.split('\t'));
  for (const id of ['events_over_time', 'unique_users', 'top_events', 'top_pages', 'top_referrers', 'utm_campaigns', 'technology', 'retention']) {
    await card(id).locator('table').waitFor({ timeout: 15_000 });
    assert.equal(await card(id).locator('.csv').getAttribute('download'), `${id}.csv`, id);
  }
  assert.deepEqual(await rowsOf('top_events'), [
    ['page', '4', '3'],
    ['Signed Up', '3', '3'],
    ['Order Completed', '2', '2'],
    ['identify', '1', '1'],
  ]);
  assert.deepEqual(await rowsOf('top_pages'), [
    ['/', '2', '2'],
    ['/pricing', '2', '2'],
  ]);
  assert.deepEqual(await rowsOf('utm_campaigns'), [['google', 'cpc', 'spring', '1', '1']]);
  assert.equal(await card('events_over_time').locator('svg path.line, svg circle.dot').count() > 0, true);
  assert.equal(await card('unique_users').locator('svg path.line').count(), 1);
  assert.equal(await card('unique_users').locator('svg circle.dot').count(), 4, 'one dot a day with users');
  assert.equal(await card('retention').locator('thead th').first().innerText(), 'Cohort (week of)');
  assert.match(await card('retention').locator('tbody').innerText(), /100%/);

  // A report's own options reload it alone.
  await card('technology').locator('select[name=dimension]').selectOption('device_class');
  await waitUntil(async () => (await rowsOf('technology')).some(([value]) => value === 'mobile'), 10_000, 'no device rows');
  await card('events_over_time').locator('select[name=bucket]').selectOption('hour');
  await card('events_over_time').locator('tbody tr').first().waitFor();
  assert.match((await rowsOf('events_over_time'))[0][0], /^\d{4}-\d\d-\d\d \d\d:\d\d$/);

  // CSV downloads are the API's CSV.
  const href = await card('top_events').locator('.csv').getAttribute('href');
  const csv = await fetch(`${ADMIN}${href}`, { headers: { authorization: AUTH } });
  assert.equal(csv.headers.get('content-type'), 'text/csv; charset=utf-8');
  assert.match(await csv.text(), /^name,events,users\npage,4,3\n/);

  // The funnel form: too few names is refused in the page, 2 steps run.
  const funnel = card('funnel');
  await funnel.getByRole('button', { name: 'Run the funnel' }).click();
  assert.equal(await funnel.locator('.form-error').innerText(), 'Every step needs an event name.');
  await funnel.getByLabel('Step 1').fill('Signed Up');
  await funnel.getByLabel('Step 2').fill('Order Completed');
  await funnel.getByRole('button', { name: 'Add a step' }).click();
  await funnel.getByLabel('Step 3').fill('page');
  await funnel.getByRole('button', { name: 'Remove this step' }).nth(2).click();
  await funnel.getByRole('button', { name: 'Run the funnel' }).click();
  await funnel.locator('table').waitFor();
  assert.deepEqual(
    (await funnel.locator('tbody tr').allInnerTexts()).map((row) => row.split('\t')),
    [
      ['1', 'Signed Up', '3', '100%'],
      ['2', 'Order Completed', '2', '66.7%'],
    ],
  );
  await page.screenshot({ path: join(config.screenshots, 'reports.png'), fullPage: true });
  assert.deepEqual(errors, []);
});

test('the reports view works from the keyboard and at phone width', TIMEOUT, async (t) => {
  const { page, errors } = await openConsole(t, { viewport: { width: 390, height: 844 } });
  await page.goto(`${ADMIN}/dashboard`);
  await page.locator('#report-top_events table, #report-top_events .state-empty').first().waitFor();
  // The page is no wider than the phone.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the viewport`);

  // The skip link comes first, then the views and the app picker, all reachable with Tab.
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to the content');
  const reached = [];
  for (let i = 0; i < 6; i += 1) {
    await page.keyboard.press('Tab');
    reached.push(await page.evaluate(() => document.activeElement.id || document.activeElement.textContent.trim()));
  }
  assert.ok(reached.includes('Reports'), reached.join(', '));
  assert.ok(reached.includes('app'), reached.join(', '));
  // A range picked with the keyboard reloads the reports.
  await page.locator('select[name=range]').focus();
  await page.keyboard.press('ArrowDown');
  await page.locator('#report-top_events table, #report-top_events .state-empty').first().waitFor();
  await page.screenshot({ path: join(config.screenshots, 'reports-phone.png'), fullPage: true });

  // Every other view fits the phone too.
  for (const [view, ready] of [
    ['system', '#system-events svg'],
    ['console', '.console-state[data-state=subscribed]'],
    ['dead-letters', '#dead-letters .dead-summary'],
  ]) {
    await page.goto(`${ADMIN}/dashboard#/${view}`);
    await page.locator(ready).waitFor({ timeout: 10_000 });
    const wider = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(wider <= 0, `${view}: the page is ${wider}px wider than the viewport`);
    await page.screenshot({ path: join(config.screenshots, `${view}-phone.png`), fullPage: true });
  }
  assert.deepEqual(errors, []);
});

test('the system charts move under load, connections against the quota', TIMEOUT, async (t) => {
  const { page, errors } = await openConsole(t);
  await page.goto(`${ADMIN}/dashboard#/system`);
  await page.selectOption('#app', apps.dashboard.id);
  const connections = page.locator('#system-connections');
  await connections.locator('svg').waitFor({ timeout: 10_000 });
  const headline = (id) => page.locator(`#system-${id} .current`).innerText();

  const channel = uniqueChannel('system');
  for (let i = 0; i < 3; i += 1) {
    const client = await connectClient(t, { app: apps.dashboard });
    await subscribe(client, channel);
  }
  const sdk = serverClient({ app: apps.dashboard });
  for (let i = 0; i < 20; i += 1) await trigger(sdk, channel, 'load', { i });

  await waitUntil(
    async () => (await headline('connections')).startsWith('3 now · peak 3 of 50'),
    10_000,
    'the connections chart does not show the 3 clients against the quota of 50',
  );
  await waitUntil(
    async () => (await headline('subscriptions')).startsWith('3 now · peak 3'),
    10_000,
    'the subscriptions chart does not show the 3 subscriptions',
  );
  await waitUntil(async () => /peak [1-9]/.test(await headline('events')), 10_000, 'no events in on the chart');
  await waitUntil(async () => /peak [1-9]/.test(await headline('deliveries')), 10_000, 'no deliveries on the chart');
  assert.equal(await connections.locator('line.limit').count(), 1, 'the quota is drawn');
  const before = await page.locator('#system-events path.line').first().getAttribute('d');
  await waitUntil(
    async () => (await page.locator('#system-events path.line').first().getAttribute('d')) !== before,
    5_000,
    'the chart did not move',
  );
  await page.screenshot({ path: join(config.screenshots, 'system.png'), fullPage: true });
  assert.deepEqual(errors, []);
});

test('the debug console shows an API event within 1 s; its event creator reaches pusher-js', TIMEOUT, async (t) => {
  const { page, errors } = await openConsole(t);
  await page.goto(`${ADMIN}/dashboard#/console`);
  await page.selectOption('#app', apps.dashboard.id);
  await page.locator('.console-state[data-state=subscribed]').waitFor({ timeout: 10_000 });
  const log = page.locator('.log');

  const channel = uniqueChannel('console');
  const client = await connectClient(t, { app: apps.dashboard });
  const subscription = await subscribe(client, channel);
  await log.locator('.record-subscribed', { hasText: channel }).waitFor({ timeout: 5_000 });
  assert.equal(await log.locator('.record-connection_opened', { hasText: client.connection.socket_id }).count(), 1);

  const sdk = serverClient({ app: apps.dashboard });
  await trigger(sdk, channel, 'console-check', { n: 1 });
  const triggered = Date.now();
  await log.locator('.record-api_event', { hasText: 'console-check' }).waitFor({ timeout: 1_000 });
  const latency = Date.now() - triggered;
  assert.ok(latency <= 1_000, `shown after ${latency} ms`);
  assert.match(await log.locator('.record-api_event').first().innerText(), /"n":1/);

  // The event creator sends through the backend trigger's path: pusher-js receives it.
  const received = nextEvent(subscription, 'from-console');
  const creator = page.locator('#console-creator');
  await creator.locator('input[name=channel]').fill(channel);
  await creator.locator('input[name=event]').fill('from-console');
  await creator.locator('textarea[name=data]').fill('{"hello": "world"}');
  await creator.getByRole('button', { name: 'Send the event' }).click();
  assert.deepEqual(await received, { hello: 'world' });
  await creator.locator('.send-result', { hasText: 'Sent from-console' }).waitFor();

  // Filters, the most frequent channels and events, pause and clear.
  await page.locator('select[name=type]').selectOption('subscribed');
  assert.deepEqual(
    new Set(await log.locator('.record .badge').allInnerTexts()),
    new Set(['subscribed']),
  );
  await page.locator('select[name=type]').selectOption('');
  await page.locator('input[name=event-filter]').fill('from-console');
  assert.equal(await log.locator('.record').count(), 1);
  await page.locator('input[name=event-filter]').fill('');
  assert.match(await page.locator('#console-frequent').innerText(), new RegExp(channel));
  assert.match(await page.locator('#console-frequent').innerText(), /console-check/);

  await page.getByRole('button', { name: 'Pause' }).click();
  await trigger(sdk, channel, 'while-paused', {});
  await waitUntil(async () => /paused, [1-9]/.test(await page.locator('.toolbar').innerText()), 5_000, 'nothing counted while paused');
  assert.equal(await log.locator('.record', { hasText: 'while-paused' }).count(), 0);
  await page.getByRole('button', { name: 'Resume' }).click();
  assert.equal(await log.locator('.record', { hasText: 'while-paused' }).count(), 1);

  client.disconnect();
  await log.locator('.record-connection_closed', { hasText: 'close code' }).waitFor({ timeout: 5_000 });
  await page.screenshot({ path: join(config.screenshots, 'console.png'), fullPage: true });
  await page.getByRole('button', { name: 'Clear' }).click();
  assert.equal(await log.locator('.record').count(), 0);
  assert.deepEqual(errors, []);
});

test('the dead letters view counts what could not be stored, by reason', TIMEOUT, async (t) => {
  // Postgres refuses a NUL character in jsonb: the worker dead-letters this event for its data.
  const sdk = serverClient({ app: apps.dashboard });
  await trigger(sdk, uniqueChannel('dead'), 'poison', '{"text": "\\u0000"}');

  const { page, errors } = await openConsole(t);
  await page.goto(`${ADMIN}/dashboard#/dead-letters`);
  const card = page.locator('#dead-letters');
  await waitUntil(
    async () => {
      await card.getByRole('button', { name: 'Refresh' }).click();
      await card.locator('.dead-summary').waitFor();
      return /^[1-9]\d* messages? in /.test(await card.locator('.dead-summary').innerText());
    },
    15_000,
    'the dead letter did not show',
    250,
  );
  const rows = await card.locator('tbody tr').allInnerTexts();
  assert.ok(rows.length >= 1, 'a reason is listed');
  assert.match(rows.join('\n'), /\t[1-9]\d*$/m);
  await page.locator('#webhook-failures table, #webhook-failures .state-empty').first().waitFor();
  assert.doesNotMatch(await page.locator('#webhook-failures').innerText(), /could not be read/);
  await page.screenshot({ path: join(config.screenshots, 'dead-letters.png'), fullPage: true });
  assert.deepEqual(errors, []);
});
