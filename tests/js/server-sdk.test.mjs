// End-to-end: the official npm `pusher` server SDK against Switchboard's HTTP API. Replies
// (status and JSON bodies) are checked against live state made with real pusher-js clients.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';

import {
  apps,
  collectEvents,
  connectClient,
  describeRequestError,
  disconnectAll,
  errorCodes,
  joinPresence,
  jsonBody,
  nextEvent,
  recordErrors,
  serverClient,
  signIn,
  subscribe,
  uniqueChannel,
  userAuthentication,
  waitUntil,
} from './helpers.mjs';

const TIMEOUT = { timeout: 30_000 };

after(disconnectAll);

const uniqueId = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`;
const user = (prefix) => ({ user_id: uniqueId(prefix), user_info: { name: prefix } });
const sortedIds = (users) => users.map((u) => u.id).sort();

/** Asserts that `promise` rejects with a `pusher` RequestError carrying `status`. */
async function assertStatus(promise, status) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.status, status, describeRequestError(error));
    return true;
  });
}

/** `n` pusher-js clients subscribed to the public `channelName`; resolves with their channels. */
async function publicSubscribers(t, channelName, n) {
  const channels = [];
  for (let i = 0; i < n; i++) channels.push(await subscribe(await connectClient(t), channelName));
  return channels;
}

test('trigger to one channel: 200 {}, and with info the subscription_count', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const channelName = uniqueChannel();
  const [first] = await publicSubscribers(t, channelName, 2);

  const plain = nextEvent(first, 'plain');
  const response = await sdk.trigger(channelName, 'plain', { a: 1 });
  assert.equal(response.status, 200);
  assert.equal(await response.text(), '{}');
  assert.deepEqual(await plain, { a: 1 });

  const counted = nextEvent(first, 'counted');
  const body = await jsonBody(
    sdk.trigger(channelName, 'counted', { a: 2 }, { info: 'subscription_count' }),
  );
  assert.deepEqual(body, { channels: { [channelName]: { subscription_count: 2 } } });
  assert.deepEqual(await counted, { a: 2 });
});

test(
  'trigger to several channels, with info user_count and subscription_count',
  TIMEOUT,
  async (t) => {
    const sdk = serverClient();
    const publicName = uniqueChannel();
    const presenceName = uniqueChannel('presence-e2e');
    const [publicChannel] = await publicSubscribers(t, publicName, 1);
    const { channel: presenceChannel } = await joinPresence(t, presenceName, user('ann'));
    await joinPresence(t, presenceName, user('ben'));

    const received = [nextEvent(publicChannel, 'fan'), nextEvent(presenceChannel, 'fan')];
    const body = await jsonBody(
      sdk.trigger(
        [publicName, presenceName],
        'fan',
        { n: 3 },
        {
          info: 'user_count,subscription_count',
        },
      ),
    );
    // user_count applies to presence channels only and is left out for the public one.
    assert.deepEqual(body, {
      channels: {
        [publicName]: { subscription_count: 1 },
        [presenceName]: { user_count: 2, subscription_count: 2 },
      },
    });
    for (const data of await Promise.all(received)) assert.deepEqual(data, { n: 3 });
  },
);

test('triggerBatch without info: 200 {}, every event delivered in order', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const names = [uniqueChannel(), uniqueChannel()];
  const [a] = await publicSubscribers(t, names[0], 1);
  const [b] = await publicSubscribers(t, names[1], 1);
  const onA = collectEvents(a, 'batched');
  const onB = nextEvent(b, 'batched');

  const response = await sdk.triggerBatch([
    { channel: names[0], name: 'batched', data: { i: 1 } },
    { channel: names[1], name: 'batched', data: { i: 2 } },
    { channel: names[0], name: 'batched', data: { i: 3 } },
  ]);
  assert.equal(response.status, 200);
  assert.equal(await response.text(), '{}');
  assert.deepEqual(await onB, { i: 2 });
  await waitUntil(
    () => onA.length >= 2,
    5_000,
    () => `on A: ${JSON.stringify(onA)}`,
  );
  assert.deepEqual(onA, [{ i: 1 }, { i: 3 }]);
});

test('triggerBatch with info: one result per event, in request order', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const publicName = uniqueChannel();
  const presenceName = uniqueChannel('presence-e2e');
  await publicSubscribers(t, publicName, 2);
  await joinPresence(t, presenceName, user('cy'));

  const body = await jsonBody(
    sdk.triggerBatch([
      { channel: presenceName, name: 'b', data: { i: 1 }, info: 'user_count' },
      { channel: publicName, name: 'b', data: { i: 2 } },
      { channel: publicName, name: 'b', data: { i: 3 }, info: 'subscription_count' },
    ]),
  );
  assert.deepEqual(body, { batch: [{ user_count: 1 }, {}, { subscription_count: 2 }] });
});

test('GET /channels: occupied channels, filter_by_prefix and user_count', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const publicName = uniqueChannel();
  const big = uniqueChannel('presence-e2e');
  const small = uniqueChannel('presence-e2e');
  await publicSubscribers(t, publicName, 1);
  const dana = user('dana');
  await joinPresence(t, big, dana);
  await joinPresence(t, big, dana); // a second socket of the same user counts once
  await joinPresence(t, big, user('eli'));
  await joinPresence(t, small, user('fay'));

  const presence = await jsonBody(
    sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } }),
  );
  assert.deepEqual(presence.channels[big], { user_count: 2 });
  assert.deepEqual(presence.channels[small], { user_count: 1 });
  for (const name of Object.keys(presence.channels)) {
    assert.ok(name.startsWith('presence-'), `${name} listed under filter_by_prefix=presence-`);
  }

  const all = await jsonBody(sdk.get({ path: '/channels' }));
  assert.deepEqual(all.channels[publicName], {});
  assert.deepEqual(all.channels[big], {});
  assert.equal(all.channels[uniqueChannel()], undefined);

  // user_count needs the presence- prefix.
  await assertStatus(sdk.get({ path: '/channels', params: { info: 'user_count' } }), 400);
});

test('GET /channels/{name}: occupied, subscription_count and user_count', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const publicName = uniqueChannel();
  const presenceName = uniqueChannel('presence-e2e');
  await publicSubscribers(t, publicName, 2);
  const gus = user('gus');
  await joinPresence(t, presenceName, gus);
  await joinPresence(t, presenceName, gus);
  await joinPresence(t, presenceName, user('hal'));

  const channelInfo = (name, info) =>
    jsonBody(sdk.get({ path: `/channels/${name}`, params: info ? { info } : {} }));
  assert.deepEqual(await channelInfo(publicName, 'subscription_count'), {
    occupied: true,
    subscription_count: 2,
  });
  assert.deepEqual(await channelInfo(publicName), { occupied: true });
  assert.deepEqual(await channelInfo(presenceName, 'user_count,subscription_count'), {
    occupied: true,
    user_count: 2,
    subscription_count: 3,
  });
  assert.deepEqual(await channelInfo(uniqueChannel()), { occupied: false });

  // user_count is only valid for presence channels.
  const info = { info: 'user_count' };
  await assertStatus(sdk.get({ path: `/channels/${publicName}`, params: info }), 400);
});

test('GET /channels/{name}/users lists the presence members once each', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const channelName = uniqueChannel('presence-e2e');
  const ivy = user('ivy');
  const jon = user('jon');
  await joinPresence(t, channelName, ivy);
  await joinPresence(t, channelName, ivy);
  await joinPresence(t, channelName, jon);

  const body = await jsonBody(sdk.get({ path: `/channels/${channelName}/users` }));
  assert.deepEqual(Object.keys(body), ['users']);
  assert.deepEqual(sortedIds(body.users), [ivy.user_id, jon.user_id].sort());
  for (const entry of body.users) assert.deepEqual(Object.keys(entry), ['id']);

  // Only presence channels have users.
  const publicName = uniqueChannel();
  await assertStatus(sdk.get({ path: `/channels/${publicName}/users` }), 400);
});

test(
  'presence user ids are compared as strings: user_id 10 and "10" are one member',
  TIMEOUT,
  async (t) => {
    const sdk = serverClient();
    const channelName = uniqueChannel('presence-e2e');
    const numeric = { user_id: 10, user_info: { name: 'Mr. Pusher' } };
    const { channel: first } = await joinPresence(t, channelName, numeric);
    const added = collectEvents(first, 'pusher:member_added');
    const { channel: second } = await joinPresence(t, channelName, { ...numeric, user_id: '10' });
    assert.equal(second.members.count, 1);
    assert.deepEqual(second.members.get('10'), { id: '10', info: numeric.user_info });

    const body = await jsonBody(sdk.get({ path: `/channels/${channelName}/users` }));
    assert.deepEqual(body, { users: [{ id: '10' }] });
    const info = await jsonBody(
      sdk.get({ path: `/channels/${channelName}`, params: { info: 'user_count' } }),
    );
    assert.deepEqual(info, { occupied: true, user_count: 1 });
    assert.deepEqual(added, [], 'member_added for a user already present');
  },
);

test(
  'sendToUser and terminateUserConnections against signed-in pusher-js users',
  TIMEOUT,
  async (t) => {
    const sdk = serverClient();
    const kim = uniqueId('kim');
    const lee = uniqueId('lee');
    const presenceName = uniqueChannel('presence-e2e');
    const signedIn = async (id) => {
      const client = await connectClient(t, {
        userAuthentication: userAuthentication(sdk, { id }),
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, callback) =>
            callback(null, sdk.authorizeChannel(socketId, channelName, { user_id: id })),
        },
      });
      await signIn(client);
      await subscribe(client, presenceName);
      return client;
    };
    const kimClient = await signedIn(kim);
    const leeClient = await signedIn(lee);

    const toKim = nextEvent(kimClient.user, 'greet');
    const sent = await sdk.sendToUser(kim, 'greet', { to: kim });
    assert.equal(sent.status, 200);
    assert.equal(await sent.text(), '{}');
    assert.deepEqual(await toKim, { to: kim });

    const users = () => jsonBody(sdk.get({ path: `/channels/${presenceName}/users` }));
    assert.deepEqual(sortedIds((await users()).users), [kim, lee].sort());

    const errors = recordErrors(kimClient);
    const terminated = await sdk.terminateUserConnections(kim);
    assert.equal(terminated.status, 200);
    assert.equal(await terminated.text(), '{}');
    await waitUntil(
      () => errorCodes(errors).includes(4009),
      5_000,
      () => `Kim's connection was not closed with 4009; errors ${JSON.stringify(errors)}`,
    );
    await waitUntil(
      async () => sortedIds((await users()).users).join() === lee,
      5_000,
      'the terminated user is still a presence member',
    );
    assert.equal(leeClient.connection.state, 'connected');
  },
);

test('refused requests: wrong secret 401, disabled app 403, unknown app 404', TIMEOUT, async () => {
  const channelName = uniqueChannel();
  const wrongSecret = serverClient({ secret: 'not-the-app-secret' });
  await assertStatus(wrongSecret.trigger(channelName, 'e', {}), 401);
  await assertStatus(wrongSecret.get({ path: '/channels' }), 401);
  await assertStatus(serverClient({ app: apps.disabled }).trigger(channelName, 'e', {}), 403);
  const unknown = { id: 'no-such-app', key: 'no-such-key', secret: 'no-such-secret' };
  await assertStatus(serverClient({ app: unknown }).trigger(channelName, 'e', {}), 404);
});

test(
  'invalid triggers: encrypted channel among several, over 10 batch events → 400',
  TIMEOUT,
  async () => {
    const sdk = serverClient();
    // The SDK refuses both itself, so send the signed requests through its raw `post`.
    const data = JSON.stringify({ a: 1 });
    const encryptedAmongSeveral = {
      name: 'e',
      data,
      channels: [uniqueChannel('private-encrypted-e2e'), uniqueChannel()],
    };
    await assertStatus(sdk.post({ path: '/events', body: encryptedAmongSeveral }), 400);

    const channel = uniqueChannel();
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel, name: 'e', data: `${i}` }));
    await assertStatus(sdk.post({ path: '/batch_events', body: { batch } }), 400);
  },
);
