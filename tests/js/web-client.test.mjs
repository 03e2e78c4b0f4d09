// End-to-end: Switchboard's web client (clients/js, the built bundle) in a real headless Chromium
// (Debian's, driven by playwright-core) against servers of the tests' own, with faults from TCP
// proxies the tests control: the RabbitMQ connection cut under 1,000 track calls and two page
// reloads; subscribers cut off while events are published; a gap beyond the recovery window;
// private and presence channels recovered with the auth endpoint's signature. And, without a
// browser, the history route's authorization.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import {
  apps,
  config,
  freePort,
  psql,
  serverClient,
  uniqueChannel,
  waitUntil,
} from './helpers.mjs';
import { startProxy } from './proxy.mjs';
import {
  load,
  openPage,
  query,
  startOwnServer,
  startSite,
  waitReceived,
  waitState,
} from './web-client/harness.mjs';

const TIMEOUT = { timeout: 180_000 };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let browser;

before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium' });
});
after(async () => {
  await browser?.close();
});

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

/** Publishes events `n` = from..to-1 (data `{n}`) on `channels` in order, 10 per signed batch. */
async function publish(sdk, channels, name, from, to) {
  for (let n = from; n < to; n += 10) {
    const batch = range(n, Math.min(n + 10, to)).flatMap((i) =>
      channels.map((channel) => ({ channel, name, data: { n: i } })),
    );
    for (let i = 0; i < batch.length; i += 10) {
      const response = await sdk.triggerBatch(batch.slice(i, i + 10));
      assert.equal(response.status, 200);
    }
  }
}

/** Subscribes the page's client to `event` on `channel` and waits for pusher-js's subscription. */
async function collect(page, channel, event) {
  await page.evaluate(([name, wanted]) => window.collect(name, wanted), [channel, event]);
  await page.waitForFunction(
    (name) => window.sb.pusher.channel(name)?.subscribed === true,
    channel,
    { timeout: 10_000 },
  );
}

/** Waits until the page's connection is no longer `connected` (after a proxy cut). */
async function waitDisconnected(page) {
  await page.waitForFunction(() => window.sb.pusher.connection.state !== 'connected', null, {
    timeout: 20_000,
  });
}

/** Asserts `got` is exactly events `from`..`to`-1 in order, with strictly ascending ids. */
function assertSequence(got, from, to) {
  assert.deepEqual(
    got.map((event) => event.data.n),
    range(from, to),
    'every event once, in order',
  );
  for (let i = 1; i < got.length; i++) {
    assert.ok(got[i - 1].id < got[i].id, `ids ascend: ${got[i - 1].id} < ${got[i].id}`);
  }
}

test(
  '1,000 track calls through a broker cut and two page reloads: every event stored exactly once',
  TIMEOUT,
  async (t) => {
    const { amqp, databaseUrl, port } = await startOwnServer(t);
    const site = await startSite(t);
    const page = await openPage(t, browser, site, { port });
    await waitState(page, 'connected');
    const run = uniqueChannel('run');
    const messageIds = [];
    const track = async (count) => {
      const made = await page.evaluate(
        ([from, count, run]) =>
          Array.from({ length: count }, (_, i) =>
            window.sb.track('Web Client Test', { run, n: from + i }),
          ),
        [messageIds.length, count, run],
      );
      messageIds.push(...made);
    };

    await track(200);
    amqp.cut();
    await track(200);
    // The gateway cannot publish: it refuses the batches for now (retry: true)...
    await page.waitForFunction(
      () => window.log.nacks.some((nack) => nack.retry === true && /RabbitMQ/.test(nack.reason)),
      null,
      { timeout: 20_000 },
    );
    assert.ok((await page.evaluate(() => window.sb.pending)) > 0, 'events wait in the outbox');
    // ...and the page goes away with them unacknowledged (its beacon is refused too): the next
    // page sends them again from the outbox.
    await load(page);
    await track(200);
    amqp.restore();
    await track(200);
    // A reload with batches in flight.
    await load(page);
    await track(200);

    assert.equal(messageIds.length, 1000);
    assert.ok(messageIds.every((id) => UUID.test(id)));
    await page.waitForFunction(() => window.sb.pending === 0, null, { timeout: 90_000 });
    const ids = `'{${messageIds.join(',')}}'::text[]`;
    const stored = () =>
      query(
        databaseUrl,
        `SELECT count(*), count(DISTINCT message_id), count(DISTINCT anonymous_id)
         FROM events WHERE app_id = '${apps.dev.id}' AND message_id = ANY(${ids})`,
      )[0]
        .split('|')
        .map(Number);
    let counts = [];
    await waitUntil(
      () => {
        counts = stored();
        return counts[0] >= 1000;
      },
      60_000,
      () => `stored: ${counts}`,
    );
    assert.deepEqual(counts, [1000, 1000, 1], 'each event once, all from one anonymousId');
    const [names] = query(
      databaseUrl,
      `SELECT count(*) FROM events WHERE name = 'Web Client Test' AND data->'properties'->>'run' = '${run}'`,
    );
    assert.equal(Number(names), 1000, 'nothing stored beyond the 1,000 calls');
    assert.deepEqual(await page.evaluate(() => window.log.errors), []);
  },
);

test(
  'a subscriber cut off while 500 events are published gets all 500 when it reconnects, in order and once each, then the live ones',
  TIMEOUT,
  async (t) => {
    const { databaseUrl, port } = await startOwnServer(t);
    const gateway = await startProxy(t, { port });
    const site = await startSite(t);
    const page = await openPage(t, browser, site, { port: gateway.port });
    const channel = uniqueChannel('recover');
    await collect(page, channel, 'n');
    const sdk = serverClient({ port });

    await publish(sdk, [channel], 'n', 0, 5);
    await waitReceived(page, channel, 5);
    gateway.cut();
    await waitDisconnected(page);
    await publish(sdk, [channel], 'n', 5, 505);
    gateway.restore();
    await waitReceived(page, channel, 505, 60_000);
    await publish(sdk, [channel], 'n', 505, 515);
    const got = await waitReceived(page, channel, 515);

    assertSequence(got, 0, 515);
    assert.ok(
      got.slice(5, 505).every((event) => event.replayed),
      'the 500 came from history',
    );
    assert.ok(
      got.slice(505).every((event) => !event.replayed),
      'then live',
    );
    const stored = query(
      databaseUrl,
      `SELECT id FROM events WHERE channel = '${channel}' ORDER BY id`,
    );
    assert.deepEqual(
      got.map((event) => event.id),
      stored,
      "the ids are the events' ids in Postgres",
    );
    assert.deepEqual(await page.evaluate(() => window.log.gaps), []);
  },
);

test(
  'onGap when the last id seen is beyond the recovery window, then live again',
  TIMEOUT,
  async (t) => {
    const { port } = await startOwnServer(t, { env: { SWITCHBOARD_HISTORY__MAX_EVENTS: '20' } });
    const gateway = await startProxy(t, { port });
    const site = await startSite(t);
    const page = await openPage(t, browser, site, { port: gateway.port });
    const channel = uniqueChannel('gap');
    await collect(page, channel, 'n');
    const sdk = serverClient({ port });

    await publish(sdk, [channel], 'n', 0, 1);
    const [first] = await waitReceived(page, channel, 1);
    gateway.cut();
    await waitDisconnected(page);
    await publish(sdk, [channel], 'n', 1, 31);
    gateway.restore();
    await page.waitForFunction(() => window.log.gaps.length > 0, null, { timeout: 30_000 });
    const gaps = await page.evaluate(() => window.log.gaps);
    assert.equal(gaps.length, 1);
    assert.equal(gaps[0].channel, channel);
    assert.equal(gaps[0].lastId, first.id);
    assert.match(gaps[0].reason, /^HTTP 410: .*recovery window/);

    await publish(sdk, [channel], 'n', 31, 32);
    const got = await waitReceived(page, channel, 2);
    assert.deepEqual(
      got.map((event) => [event.data.n, event.replayed]),
      [
        [0, false],
        [31, false],
      ],
      'nothing of the gap, then live',
    );
  },
);

test(
  'private and presence channels recover with the signature the auth endpoint gave the current socket',
  TIMEOUT,
  async (t) => {
    const { port } = await startOwnServer(t);
    const gateway = await startProxy(t, { port });
    const site = await startSite(t);
    const page = await openPage(t, browser, site, { port: gateway.port });
    const channels = [uniqueChannel('private-recover'), uniqueChannel('presence-recover')];
    for (const channel of channels) await collect(page, channel, 'n');
    const sdk = serverClient({ port });

    await publish(sdk, channels, 'n', 0, 2);
    for (const channel of channels) await waitReceived(page, channel, 2);
    gateway.cut();
    await waitDisconnected(page);
    await publish(sdk, channels, 'n', 2, 32);
    gateway.restore();
    for (const channel of channels) await waitReceived(page, channel, 32, 60_000);
    await publish(sdk, channels, 'n', 32, 33);
    for (const channel of channels) {
      const got = await waitReceived(page, channel, 33);
      assertSequence(got, 0, 33);
      assert.ok(
        got.slice(2, 32).every((event) => event.replayed),
        `${channel}: from history`,
      );
      assert.ok(site.authCalls.get(channel) >= 2, `${channel}: signed again for the new socket`);
    }
    assert.deepEqual(await page.evaluate(() => window.log.gaps), []);
  },
);

test(
  'without a WebSocket (none connects, or the browser has none) the client sends by POST /v1/batch; leaving the page hands the rest to sendBeacon',
  TIMEOUT,
  async (t) => {
    const site = await startSite(t);
    // The WebSocket goes to a port where nothing listens; HTTP to the gateway.
    const deadPort = await freePort();
    const sent = await openPage(t, browser, site, {
      port: config.port,
      httpFallbackMs: 1_000,
      pusher: { wsPort: deadPort },
    });
    const run = uniqueChannel('http');
    const track = (page, count) =>
      page.evaluate(
        ([count, run]) =>
          Array.from({ length: count }, (_, i) =>
            window.sb.track('Web Client HTTP', { run, n: i }),
          ),
        [count, run],
      );
    const posted = await track(sent, 50);
    await sent.waitForFunction(() => window.sb.pending === 0, null, { timeout: 30_000 });

    // A browser without WebSocket: pusher-js fails at once, and the client uses HTTP at once.
    const socketless = await openPage(
      t,
      browser,
      site,
      { port: config.port, httpFallbackMs: 600_000 },
      { withoutWebSocket: true },
    );
    const withoutSocket = await track(socketless, 20);
    await socketless.waitForFunction(
      () => window.sb.pending === 0 && window.sb.pusher.connection.state === 'failed',
      null,
      { timeout: 30_000 },
    );

    // Never falls back within the test: what is left when the page goes goes by beacon.
    const beaconed = await openPage(t, browser, site, {
      port: config.port,
      httpFallbackMs: 600_000,
      pusher: { wsPort: deadPort },
    });
    const left = await track(beaconed, 30);
    assert.equal(await beaconed.evaluate(() => window.sb.pending), 30);
    await beaconed.goto('about:blank');

    const ids = `'{${[...posted, ...withoutSocket, ...left].join(',')}}'::text[]`;
    let count = 0;
    await waitUntil(
      () => {
        [count] = psql(`SELECT count(*) FROM events WHERE message_id = ANY(${ids})`).map(Number);
        return count >= 100;
      },
      30_000,
      () => `${count} of 100 stored`,
    );
    assert.equal(count, 100);
  },
);

test(
  'an app that takes no analytics over the WebSocket: the client sends them by POST /v1/batch',
  TIMEOUT,
  async (t) => {
    const { databaseUrl, port } = await startOwnServer(t, {
      apps: `
[[apps]]
id = "ws-track-off-id"
key = "ws-track-off-key"
secret = "ws-track-off-secret"

[apps.limits]
track_batches_per_second = 0
`,
    });
    const site = await startSite(t);
    const page = await openPage(t, browser, site, { port, key: 'ws-track-off-key' });
    await waitState(page, 'connected');
    const messageIds = await page.evaluate(() =>
      Array.from({ length: 10 }, (_, n) => window.sb.track('Web Client Off', { n })),
    );
    await page.waitForFunction(() => window.sb.pending === 0, null, { timeout: 30_000 });
    const nacks = await page.evaluate(() => window.log.nacks);
    assert.ok(
      nacks.length > 0 && nacks.every((nack) => /track_batches_per_second = 0/.test(nack.reason)),
      JSON.stringify(nacks),
    );
    const ids = `'{${messageIds.join(',')}}'::text[]`;
    let count = 0;
    await waitUntil(
      () => {
        [count] = query(
          databaseUrl,
          `SELECT count(*) FROM events WHERE app_id = 'ws-track-off-id' AND message_id = ANY(${ids})`,
        ).map(Number);
        return count >= 10;
      },
      30_000,
      () => `${count} of 10 stored`,
    );
    assert.equal(count, 10);
    assert.equal(
      await page.evaluate(() => window.sb.pusher.connection.state),
      'connected',
      'the WebSocket stays for subscriptions',
    );
  },
);

test(
  'the history route refuses a private or presence channel without a valid signature',
  TIMEOUT,
  async () => {
    const sdk = serverClient();
    const privateChannel = uniqueChannel('private-history');
    const presenceChannel = uniqueChannel('presence-history');
    await publish(sdk, [privateChannel, presenceChannel], 'n', 0, 3);
    const socketId = '123.456';
    const history = async (channel, params = {}, key = apps.dev.key) => {
      const query = new URLSearchParams({ limit: '10', ...params });
      const response = await fetch(
        `http://${config.host}:${config.port}/app/${key}/channels/${channel}/events?${query}`,
      );
      return { status: response.status, body: await response.json().catch(() => null) };
    };
    const signed = (channel, presence) => sdk.authorizeChannel(socketId, channel, presence);
    const wrongSecret = serverClient({ app: { ...apps.dev, secret: 'not-the-secret' } });

    for (const params of [
      {},
      { socket_id: socketId },
      { socket_id: socketId, auth: signed(uniqueChannel('private-other')).auth },
      { socket_id: socketId, auth: wrongSecret.authorizeChannel(socketId, privateChannel).auth },
      { socket_id: '654.321', auth: signed(privateChannel).auth },
    ]) {
      const answer = await history(privateChannel, params);
      assert.equal(answer.status, 401, `${JSON.stringify(params)}: ${JSON.stringify(answer.body)}`);
      assert.equal(typeof answer.body?.error, 'string');
    }
    const allowed = await history(privateChannel, {
      socket_id: socketId,
      auth: signed(privateChannel).auth,
    });
    assert.equal(allowed.status, 200, JSON.stringify(allowed.body));
    assert.deepEqual(
      allowed.body.events.map((event) => JSON.parse(event.data).n),
      [0, 1, 2],
    );

    const member = { user_id: 'u1', user_info: { name: 'One' } };
    const presence = signed(presenceChannel, member);
    const withoutData = await history(presenceChannel, {
      socket_id: socketId,
      auth: presence.auth,
    });
    assert.equal(withoutData.status, 401, JSON.stringify(withoutData.body));
    const withData = await history(presenceChannel, {
      socket_id: socketId,
      auth: presence.auth,
      channel_data: presence.channel_data,
    });
    assert.equal(withData.status, 200, JSON.stringify(withData.body));
    assert.equal(withData.body.events.length, 3);

    assert.equal((await history(privateChannel, {}, 'no-such-key')).status, 404);
  },
);
