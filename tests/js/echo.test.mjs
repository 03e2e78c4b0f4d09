// End-to-end: Laravel Echo (`laravel-echo`, broadcaster 'pusher', driving the real pusher-js)
// against Switchboard, configured the way a Laravel app points Echo at a self-hosted server.
// Channels are authorized by an `authorizer` that signs locally with the `pusher` server SDK,
// standing in for Laravel's /broadcasting/auth endpoint.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';

import Echo from 'laravel-echo';
import PusherClient from 'pusher-js';

import {
  clientOptions,
  config,
  disconnectAll,
  serverClient,
  sleep,
  trackClient,
  trigger,
  uniqueChannel,
  waitConnected,
  waitUntil,
  withTimeout,
} from './helpers.mjs';

const TIMEOUT = { timeout: 30_000 };

after(disconnectAll);

/**
 * A connected Echo instance. `user` is the presence identity the authorizer signs; `sdk` the
 * server SDK that signs (one with the wrong secret signs badly).
 */
async function connectEcho(t, { user, sdk = serverClient() } = {}) {
  const echo = new Echo({
    broadcaster: 'pusher',
    key: config.key,
    ...clientOptions(),
    Pusher: PusherClient,
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        let response;
        try {
          const presence = channel.name.startsWith('presence-') ? user : undefined;
          response = sdk.authorizeChannel(socketId, channel.name, presence);
        } catch (error) {
          callback(error, null);
          return;
        }
        callback(null, response);
      },
    }),
  });
  trackClient(t, echo.connector.pusher);
  await waitConnected(echo.connector.pusher);
  assert.match(echo.socketId(), /^\d+\.\d+$/);
  return echo;
}

/** Resolves once Echo's channel is subscribed (at once if it already is). */
function subscribed(channel, name) {
  if (channel.subscription.subscribed) return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => channel.subscribed(resolve)),
    10_000,
    `Echo channel ${name} not subscribed`,
  );
}

/** A promise for the first call of a callback, with the callback to hand to Echo. */
function firstCall(what, ms = 5_000) {
  let callback;
  const called = new Promise((resolve) => {
    callback = resolve;
  });
  return { callback, called: () => withTimeout(called, ms, `${what} not called`) };
}

test(
  "Echo.channel().listen('OrderShipped') receives the server's App\\Events\\OrderShipped",
  TIMEOUT,
  async (t) => {
    const echo = await connectEcho(t);
    const channelName = uniqueChannel('orders');
    const shipped = firstCall('listen(OrderShipped)');
    const raw = firstCall("listen('.raw.name')");
    const channel = echo
      .channel(channelName)
      .listen('OrderShipped', shipped.callback)
      .listen('.raw.name', raw.callback);
    await subscribed(channel, channelName);

    // Laravel broadcasts the event class name, backslashes and all.
    const sdk = serverClient();
    await trigger(sdk, channelName, 'App\\Events\\OrderShipped', { order: { id: 42 } });
    assert.deepEqual(await shipped.called(), { order: { id: 42 } });
    await trigger(sdk, channelName, 'raw.name', { raw: true });
    assert.deepEqual(await raw.called(), { raw: true });
  },
);

test(
  'Echo.private(App.Models.User.N).notification() receives a Laravel notification',
  TIMEOUT,
  async (t) => {
    const echo = await connectEcho(t);
    const userId = Date.now();
    const channelName = `App.Models.User.${userId}`;
    const notified = firstCall('notification()');
    const channel = echo.private(channelName).notification(notified.callback);
    await subscribed(channel, channelName);

    // What Laravel's BroadcastNotificationCreated sends for `$user->notify(new InvoicePaid)`.
    const payload = { id: 'b1f0c1c6', type: 'App\\Notifications\\InvoicePaid', amount: 42 };
    await trigger(
      serverClient(),
      `private-${channelName}`,
      'Illuminate\\Notifications\\Events\\BroadcastNotificationCreated',
      payload,
    );
    assert.deepEqual(await notified.called(), payload);
  },
);

test('Echo.encryptedPrivate() decrypts what the server SDK encrypted', TIMEOUT, async (t) => {
  const sdk = serverClient({ encryptionMasterKeyBase64: randomBytes(32).toString('base64') });
  const echo = await connectEcho(t, { sdk });
  const name = `vault-${randomBytes(6).toString('hex')}`;
  const opened = firstCall("listen('.opened')");
  const channel = echo.encryptedPrivate(name).listen('.opened', opened.callback);
  await subscribed(channel, name);

  await trigger(sdk, `private-encrypted-${name}`, 'opened', { secret: 'sesame' });
  assert.deepEqual(await opened.called(), { secret: 'sesame' });
});

test('Echo.private().whisper() reaches another client listenForWhisper()', TIMEOUT, async (t) => {
  const sender = await connectEcho(t);
  const receiver = await connectEcho(t);
  const room = `chat-${randomBytes(6).toString('hex')}`;
  const typing = firstCall('listenForWhisper(typing)');
  const echoed = [];
  const senderChannel = sender.private(room).listenForWhisper('typing', (e) => echoed.push(e));
  const receiverChannel = receiver.private(room).listenForWhisper('typing', typing.callback);
  await Promise.all([subscribed(senderChannel, room), subscribed(receiverChannel, room)]);

  senderChannel.whisper('typing', { name: 'Taylor' });
  assert.deepEqual(await typing.called(), { name: 'Taylor' });
  await sleep(500);
  assert.deepEqual(echoed, [], 'the whisper was echoed to its sender');
});

test('Echo.join() here / joining / leaving with two users', TIMEOUT, async (t) => {
  const room = `room-${randomBytes(6).toString('hex')}`;
  const taylor = { user_id: 'taylor', user_info: { id: 'taylor', name: 'Taylor' } };
  const abigail = { user_id: 'abigail', user_info: { id: 'abigail', name: 'Abigail' } };
  const byId = (users) => [...users].sort((a, b) => a.id.localeCompare(b.id));

  const first = await connectEcho(t, { user: taylor });
  const firstHere = firstCall('here() for Taylor');
  const joined = firstCall('joining()');
  const left = firstCall('leaving()', 10_000);
  first.join(room).here(firstHere.callback).joining(joined.callback).leaving(left.callback);
  assert.deepEqual(await firstHere.called(), [taylor.user_info]);

  const second = await connectEcho(t, { user: abigail });
  const secondHere = firstCall('here() for Abigail');
  second.join(room).here(secondHere.callback);
  assert.deepEqual(byId(await secondHere.called()), byId([taylor.user_info, abigail.user_info]));
  assert.deepEqual(await joined.called(), abigail.user_info);

  second.leave(room);
  assert.deepEqual(await left.called(), abigail.user_info);
});

test(
  'Echo .error() fires for a private channel whose authorizer signs badly',
  TIMEOUT,
  async (t) => {
    const echo = await connectEcho(t, { sdk: serverClient({ secret: 'not-the-app-secret' }) });
    const name = `orders-${randomBytes(6).toString('hex')}`;
    const failed = firstCall('error()');
    let succeeded = false;
    echo
      .private(name)
      .subscribed(() => {
        succeeded = true;
      })
      .error(failed.callback);
    const error = await failed.called();
    assert.equal(error.type, 'AuthError', JSON.stringify(error));
    assert.equal(error.status, 401, JSON.stringify(error));
    await waitUntil(() => echo.connectionStatus() === 'connected', 1_000, 'Echo disconnected');
    assert.equal(succeeded, false);
  },
);
