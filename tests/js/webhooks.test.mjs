// End-to-end: webhooks checked by the npm `pusher` SDK as a backend would. The server
// (scripts/e2e.sh) sends the hook app's `client_event` and `cache_miss` webhooks of
// `private-*` channels to the receiver this suite runs; each request must pass
// `pusher.webhook({headers, rawBody}).isValid()` and carry the events in `getEvents()`.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';

import {
  channelAuthorization,
  connectClient,
  disconnectAll,
  serverClient,
  subscribe,
  uniqueChannel,
  waitUntil,
} from './helpers.mjs';

const TIMEOUT = { timeout: 30_000 };
const hookApp = {
  id: process.env.SWITCHBOARD_HOOK_APP_ID ?? '5151',
  key: process.env.SWITCHBOARD_HOOK_APP_KEY ?? 'hook-key',
  secret: process.env.SWITCHBOARD_HOOK_APP_SECRET ?? 'hook-secret',
};
const receiverPort = Number(process.env.SWITCHBOARD_E2E_WEBHOOK_JS_PORT ?? 8080);

/** Every request the receiver took: the SDK's verdict, its events, and the delivery id. */
const received = [];
let receiver;

before(async () => {
  const sdk = serverClient({ app: hookApp });
  receiver = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const webhook = sdk.webhook({ headers: request.headers, rawBody });
      const valid = webhook.isValid();
      received.push({
        valid,
        events: valid ? webhook.getEvents() : [],
        id: request.headers['x-switchboard-webhook-id'],
        time: valid ? webhook.getTime() : null,
      });
      response.writeHead(valid ? 200 : 401).end();
    });
  });
  await new Promise((resolve) => receiver.listen(receiverPort, '127.0.0.1', resolve));
});

after(async () => {
  disconnectAll();
  await new Promise((resolve) => receiver.close(resolve));
});

/** The events received so far for `channelName`. */
const eventsOf = (channelName) =>
  received.flatMap((r) => r.events).filter((event) => event.channel === channelName);

test('a client event sent by pusher-js arrives as a valid client_event webhook', TIMEOUT, async (t) => {
  const channelName = uniqueChannel('private-js-hook');
  const sdk = serverClient({ app: hookApp });
  const sender = await connectClient(t, { app: hookApp, channelAuthorization: channelAuthorization(sdk) });
  const channel = await subscribe(sender, channelName);
  assert.equal(channel.trigger('client-typing', { who: 'ann', n: 1 }), true);

  const [event] = await waitUntil(
    () => (eventsOf(channelName).length ? eventsOf(channelName) : null),
    20_000,
    () => `no webhook for ${channelName}; received ${JSON.stringify(received)}`,
  );
  assert.deepEqual(event, {
    name: 'client_event',
    channel: channelName,
    event: 'client-typing',
    data: JSON.stringify({ who: 'ann', n: 1 }),
    socket_id: sender.connection.socket_id,
  });
  assert.ok(received.every((r) => r.valid), 'every request passes isValid()');
  const request = received.find((r) => r.events.some((e) => e.channel === channelName));
  assert.match(request.id, /^[0-9a-f-]{36}$/);
  assert.ok(Math.abs(Date.now() - request.time.getTime()) < 60_000, 'time_ms is recent');
});

test('a cache channel without a cached event makes a cache_miss webhook', TIMEOUT, async (t) => {
  const channelName = uniqueChannel('private-cache-js-hook');
  const sdk = serverClient({ app: hookApp });
  const client = await connectClient(t, { app: hookApp, channelAuthorization: channelAuthorization(sdk) });
  await subscribe(client, channelName);
  const events = await waitUntil(
    () => (eventsOf(channelName).length ? eventsOf(channelName) : null),
    20_000,
    () => `no cache_miss for ${channelName}; received ${JSON.stringify(received)}`,
  );
  assert.deepEqual(events, [{ name: 'cache_miss', channel: channelName }]);
});
