// End-to-end: pusher-js (the Node build) against Switchboard for everything beyond public
// channels: private, encrypted and presence channels, client events, user sign-in, watchlists,
// cache channels, subscription_count, refused connections and reconnecting after a restart.
// Channel and user auth are signed with the official `pusher` server SDK, as a backend would.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';

import {
  apps,
  channelAuthorization,
  collectEvents,
  config,
  connectClient,
  createClient,
  disconnectAll,
  errorCodes,
  freePort,
  nextEmit,
  nextEvent,
  recordErrors,
  recordFrames,
  recordStates,
  roundTrip,
  serverClient,
  signIn,
  sleep,
  startServer,
  subscribe,
  subscriptionError,
  trigger,
  uniqueChannel,
  userAuthentication,
  waitUntil,
  withTimeout,
} from './helpers.mjs';

const TIMEOUT = { timeout: 30_000 };
/** How long to wait before asserting that something did NOT arrive. */
const SETTLE_MS = 700;

after(disconnectAll);

const uniqueId = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`;

/** Members of a pusher-js presence channel as `{id: info}`, read through `members.each`. */
function memberMap(channel) {
  const members = {};
  channel.members.each((member) => {
    members[member.id] = member.info;
  });
  return members;
}

function frameNames(frames) {
  return frames.map((frame) => frame.event);
}

// ---------------------------------------------------------------------------------------------
// Private and encrypted channels

test('a private channel authorized with the server SDK receives events', TIMEOUT, async (t) => {
  const sdk = serverClient();
  const client = await connectClient(t, { channelAuthorization: channelAuthorization(sdk) });
  const channelName = uniqueChannel('private-e2e');
  const channel = await subscribe(client, channelName);

  const received = nextEvent(channel, 'secret-event');
  await trigger(sdk, channelName, 'secret-event', { n: 1 });
  assert.deepEqual(await received, { n: 1 });
});

test(
  'a private channel signed with the wrong secret fails with a 401 subscription error',
  TIMEOUT,
  async (t) => {
    const badSdk = serverClient({ secret: 'not-the-app-secret' });
    const client = await connectClient(t, { channelAuthorization: channelAuthorization(badSdk) });
    const channelName = uniqueChannel('private-e2e');
    const frames = recordFrames(client, channelName);

    const error = await subscriptionError(client, channelName);
    assert.equal(error.type, 'AuthError', JSON.stringify(error));
    assert.equal(error.status, 401, JSON.stringify(error));

    await trigger(serverClient(), channelName, 'leak', { n: 1 });
    await sleep(SETTLE_MS);
    assert.deepEqual(frames, [], 'a socket whose subscription was refused received an event');
    assert.equal(client.connection.state, 'connected', 'a refused subscription closed the socket');
  },
);

test(
  'a private-encrypted channel carries the SDK ciphertext that pusher-js decrypts',
  TIMEOUT,
  async (t) => {
    const sdk = serverClient({ encryptionMasterKeyBase64: randomBytes(32).toString('base64') });
    // authorizeChannel adds the channel's shared_secret, which pusher-js uses to decrypt.
    const client = await connectClient(t, { channelAuthorization: channelAuthorization(sdk) });
    const channelName = uniqueChannel('private-encrypted-e2e');
    const channel = await subscribe(client, channelName);
    const frames = recordFrames(client, channelName);

    const received = nextEvent(channel, 'sealed');
    await trigger(sdk, channelName, 'sealed', { card: '4242' });
    assert.deepEqual(await received, { card: '4242' });
    assert.equal(frames.length, 1);
    assert.deepEqual(Object.keys(frames[0].data).sort(), ['ciphertext', 'nonce']);
  },
);

// ---------------------------------------------------------------------------------------------
// Presence

test(
  'presence: member lists, member_added once per user, member_removed after the last socket',
  { timeout: 60_000 },
  async (t) => {
    const sdk = serverClient();
    const channelName = uniqueChannel('presence-e2e');
    const alice = { user_id: uniqueId('alice'), user_info: { name: 'Alice' } };
    const bob = { user_id: uniqueId('bob'), user_info: { name: 'Bob' } };
    const as = (user) => ({ channelAuthorization: channelAuthorization(sdk, { user }) });

    // Alice's first socket: alone in the channel.
    const alice1 = await connectClient(t, as(alice));
    const alice1Frames = recordFrames(alice1, channelName, { internal: true });
    const alice1Channel = await subscribe(alice1, channelName);
    const alice1Added = collectEvents(alice1Channel, 'pusher:member_added');
    const alice1Removed = collectEvents(alice1Channel, 'pusher:member_removed');
    assert.equal(alice1Channel.members.count, 1);
    assert.deepEqual(memberMap(alice1Channel), { [alice.user_id]: alice.user_info });
    assert.equal(alice1Channel.members.me.id, alice.user_id);

    // Bob joins: he sees both; Alice is told once; Bob is not told about himself.
    const bobClient = await connectClient(t, as(bob));
    const bobFrames = recordFrames(bobClient, channelName, { internal: true });
    const bobChannel = await subscribe(bobClient, channelName);
    const bobAdded = collectEvents(bobChannel, 'pusher:member_added');
    const bobRemoved = collectEvents(bobChannel, 'pusher:member_removed');
    assert.equal(bobChannel.members.count, 2);
    assert.deepEqual(memberMap(bobChannel), {
      [alice.user_id]: alice.user_info,
      [bob.user_id]: bob.user_info,
    });
    await waitUntil(
      () => alice1Added.length > 0,
      5_000,
      'Alice got no pusher:member_added for Bob',
    );
    assert.deepEqual(alice1Added, [{ id: bob.user_id, info: bob.user_info }]);
    assert.equal(alice1Channel.members.count, 2);

    // Alice opens a second socket: she is already a member, so nobody is told.
    const alice2 = await connectClient(t, as(alice));
    const alice2Frames = recordFrames(alice2, channelName, { internal: true });
    const alice2Channel = await subscribe(alice2, channelName);
    assert.equal(alice2Channel.members.count, 2);
    assert.deepEqual(memberMap(alice2Channel), memberMap(bobChannel));
    await sleep(SETTLE_MS);
    assert.equal(alice1Added.length, 1, `Alice's first socket: ${JSON.stringify(alice1Added)}`);
    assert.deepEqual(bobAdded, [], "Bob was told again about Alice's second socket");
    const memberEvents = (frames) => frameNames(frames).filter((name) => name.includes('member_'));
    assert.deepEqual(memberEvents(bobFrames), [], 'frames to Bob');
    assert.deepEqual(memberEvents(alice2Frames), [], "frames to Alice's second socket");
    assert.deepEqual(memberEvents(alice1Frames), ['pusher_internal:member_added']);

    // Alice's first socket leaves: she is still there through the second one.
    alice1.unsubscribe(channelName);
    await roundTrip(alice1);
    await sleep(SETTLE_MS);
    assert.deepEqual(bobRemoved, [], 'member_removed although Alice still has a socket');
    assert.equal(bobChannel.members.count, 2);

    // Her last socket goes: now she is removed, once.
    alice2.disconnect();
    await waitUntil(
      () => bobRemoved.length > 0,
      10_000,
      "Bob got no pusher:member_removed after Alice's last socket left",
    );
    await sleep(SETTLE_MS);
    assert.deepEqual(bobRemoved, [{ id: alice.user_id, info: alice.user_info }]);
    assert.equal(bobChannel.members.count, 1);
    assert.deepEqual(memberMap(bobChannel), { [bob.user_id]: bob.user_info });
    assert.deepEqual(alice1Removed, [], 'the unsubscribed socket was told about member changes');
  },
);

// ---------------------------------------------------------------------------------------------
// Client events

/** Two clients of `app` subscribed to `channelName`; presence identities `sender` / `receiver`. */
async function clientEventPair(t, channelName, { app = apps.dev, users = [] } = {}) {
  const sdk = serverClient({ app });
  const [senderUser, receiverUser] = users;
  const sender = await connectClient(t, {
    app,
    channelAuthorization: channelAuthorization(sdk, { user: senderUser }),
  });
  const receiver = await connectClient(t, {
    app,
    channelAuthorization: channelAuthorization(sdk, { user: receiverUser }),
  });
  return {
    sender,
    receiver,
    senderChannel: await subscribe(sender, channelName),
    receiverChannel: await subscribe(receiver, channelName),
  };
}

test(
  'a client event on a private channel reaches the other subscriber, not the sender',
  TIMEOUT,
  async (t) => {
    const channelName = uniqueChannel('private-e2e');
    const { sender, senderChannel, receiverChannel } = await clientEventPair(t, channelName);
    const senderFrames = recordFrames(sender, channelName);

    const received = nextEmit(receiverChannel, 'client-typing');
    assert.equal(senderChannel.trigger('client-typing', { typing: true }), true);
    const { data, metadata } = await received;
    assert.deepEqual(data, { typing: true });
    assert.equal(metadata.user_id, undefined, 'user_id on a private channel client event');

    await sleep(SETTLE_MS);
    assert.deepEqual(senderFrames, [], 'the client event was echoed to its sender');
  },
);

test(
  'a client event on a presence channel carries the sender user_id, not echoed',
  TIMEOUT,
  async (t) => {
    const channelName = uniqueChannel('presence-e2e');
    const users = [
      { user_id: uniqueId('sender'), user_info: {} },
      { user_id: uniqueId('receiver'), user_info: {} },
    ];
    const { sender, receiver, senderChannel, receiverChannel } = await clientEventPair(
      t,
      channelName,
      { users },
    );
    const senderFrames = recordFrames(sender, channelName);
    const receiverFrames = recordFrames(receiver, channelName);

    const received = nextEmit(receiverChannel, 'client-hello');
    senderChannel.trigger('client-hello', { text: 'hi' });
    const { data, metadata } = await received;
    assert.deepEqual(data, { text: 'hi' });
    assert.equal(metadata.user_id, users[0].user_id);
    assert.equal(receiverFrames[0].user_id, users[0].user_id);

    await sleep(SETTLE_MS);
    assert.deepEqual(senderFrames, [], 'the client event was echoed to its sender');
  },
);

test(
  'more than 10 client events a second: pusher:error 4301, at most 10 delivered',
  TIMEOUT,
  async (t) => {
    const channelName = uniqueChannel('private-e2e');
    const { sender, senderChannel, receiverChannel } = await clientEventPair(t, channelName);
    const errors = recordErrors(sender);
    const received = collectEvents(receiverChannel, 'client-burst');

    const start = Date.now();
    for (let i = 0; i < 15; i++) senderChannel.trigger('client-burst', { i });
    await waitUntil(
      () => errorCodes(errors).includes(4301),
      5_000,
      () => `no pusher:error 4301 for the sender; errors: ${JSON.stringify(errors)}`,
    );
    await sleep(Math.max(0, 1_000 - (Date.now() - start)));
    assert.ok(received.length <= 10, `${received.length} delivered within a second`);
    assert.ok(received.length > 0, 'none of the burst was delivered');
    await sleep(SETTLE_MS);
    assert.ok(received.length <= 10, `${received.length} delivered: over-limit events came later`);
    assert.equal(sender.connection.state, 'connected', '4301 closed the connection');

    // A new second, a new allowance.
    await sleep(Math.max(0, 1_100 - (Date.now() - start)));
    const after = nextEvent(receiverChannel, 'client-later');
    senderChannel.trigger('client-later', { ok: true });
    assert.deepEqual(await after, { ok: true });
  },
);

test(
  'client events are refused with a pusher:error when the app has them off',
  TIMEOUT,
  async (t) => {
    const channelName = uniqueChannel('private-e2e');
    const { sender, senderChannel, receiver } = await clientEventPair(t, channelName, {
      app: apps.quiet,
    });
    const errors = recordErrors(sender);
    const receiverFrames = recordFrames(receiver, channelName);

    senderChannel.trigger('client-nope', { n: 1 });
    await waitUntil(
      () => errors.length > 0,
      5_000,
      'no pusher:error for a client event on an app with client events off',
    );
    assert.equal(errors[0].type, 'PusherError', JSON.stringify(errors));
    await sleep(SETTLE_MS);
    assert.deepEqual(receiverFrames, [], 'the refused client event was delivered');
  },
);

test(
  'client events on a public channel or an unsubscribed channel are not delivered',
  TIMEOUT,
  async (t) => {
    const publicName = uniqueChannel();
    const sender = await connectClient(t);
    const receiver = await connectClient(t, { channelAuthorization: channelAuthorization() });
    await subscribe(sender, publicName);
    await subscribe(receiver, publicName);
    const privateName = uniqueChannel('private-e2e');
    await subscribe(receiver, privateName);
    const publicFrames = recordFrames(receiver, publicName);
    const privateFrames = recordFrames(receiver, privateName);

    const errors = recordErrors(sender);

    sender.channel(publicName).trigger('client-public', { n: 1 });
    sender.send_event('client-intruder', { n: 2 }, privateName); // not subscribed to it
    await roundTrip(sender);
    await sleep(SETTLE_MS);
    assert.deepEqual(publicFrames, [], 'a client event on a public channel was delivered');
    assert.deepEqual(privateFrames, [], 'a client event from a non-subscriber was delivered');
    assert.deepEqual(
      errors.map((error) => error.type),
      ['PusherError', 'PusherError'],
      `one pusher:error per refused client event: ${JSON.stringify(errors)}`,
    );
    assert.equal(sender.connection.state, 'connected');
  },
);

// ---------------------------------------------------------------------------------------------
// User authentication, sendToUser, terminate_connections, watchlists

test(
  'signin: sendToUser reaches pusher.user; terminateUserConnections closes with 4009',
  TIMEOUT,
  async (t) => {
    const sdk = serverClient();
    const userId = uniqueId('user');
    const otherId = uniqueId('other');
    const client = await connectClient(t, {
      userAuthentication: userAuthentication(sdk, { id: userId, name: 'Uma' }),
    });
    const other = await connectClient(t, {
      userAuthentication: userAuthentication(sdk, { id: otherId }),
    });
    assert.deepEqual(await signIn(client), { id: userId, name: 'Uma' });
    await signIn(other);

    const toUser = nextEvent(client.user, 'notify');
    const response = await sdk.sendToUser(userId, 'notify', { hello: userId });
    assert.equal(response.status, 200);
    assert.deepEqual(await toUser, { hello: userId });

    const errors = recordErrors(client);
    const states = recordStates(client);
    const terminated = await sdk.terminateUserConnections(userId);
    assert.equal(terminated.status, 200);
    assert.equal(await terminated.text(), '{}');
    await waitUntil(
      () => client.connection.state !== 'connected',
      5_000,
      'the terminated user is still connected',
    );
    await waitUntil(
      () => errorCodes(errors).includes(4009),
      5_000,
      () => `no 4009 seen by pusher-js; errors: ${JSON.stringify(errors)}`,
    );
    // 4009 is in 4000–4099: pusher-js must give up, not reconnect.
    await sleep(1_500);
    assert.ok(
      ['disconnected', 'failed', 'unavailable'].includes(client.connection.state),
      `state after 4009: ${client.connection.state} (changes: ${states.join(' -> ')})`,
    );
    assert.ok(!states.includes('connected'), `pusher-js reconnected: ${states.join(' -> ')}`);

    // The other user is untouched.
    assert.equal(other.connection.state, 'connected');
    const toOther = nextEvent(other.user, 'still-here');
    await sdk.sendToUser(otherId, 'still-here', { ok: true });
    assert.deepEqual(await toOther, { ok: true });
  },
);

test('a sign-in signed with the wrong secret is refused with 4009', TIMEOUT, async (t) => {
  const badSdk = serverClient({ secret: 'not-the-app-secret' });
  const client = await connectClient(t, {
    userAuthentication: userAuthentication(badSdk, { id: uniqueId('mallory') }),
  });
  const errors = recordErrors(client);
  client.signin();
  await waitUntil(
    () => errorCodes(errors).includes(4009),
    5_000,
    () => `no 4009 for a bad sign-in; errors: ${JSON.stringify(errors)}`,
  );
  assert.equal(client.user.user_data, null);
});

test(
  'watchlist: a signed-in user is told when a watched user comes online and goes offline',
  TIMEOUT,
  async (t) => {
    const sdk = serverClient();
    const watched = uniqueId('watched');
    const watcher = await connectClient(t, {
      userAuthentication: userAuthentication(sdk, {
        id: uniqueId('watcher'),
        watchlist: [watched],
      }),
    });
    const online = [];
    const offline = [];
    watcher.user.watchlist.bind('online', (event) => online.push(...event.user_ids));
    watcher.user.watchlist.bind('offline', (event) => offline.push(...event.user_ids));
    await signIn(watcher);
    assert.deepEqual(online, [], 'the watched user was reported online before signing in');

    const watchedClient = await connectClient(t, {
      userAuthentication: userAuthentication(sdk, { id: watched }),
    });
    await signIn(watchedClient);
    await waitUntil(
      () => online.includes(watched),
      5_000,
      () => `no watchlist 'online' for ${watched}; online: ${online}, offline: ${offline}`,
    );

    watchedClient.disconnect();
    await waitUntil(
      () => offline.includes(watched),
      10_000,
      () => `no watchlist 'offline' for ${watched}; offline: ${offline}`,
    );
  },
);

// ---------------------------------------------------------------------------------------------
// Cache channels

const cacheUsers = { user: { user_id: 'cache-reader', user_info: {} } };

for (const prefix of ['cache-', 'private-cache-', 'presence-cache-']) {
  test(
    `${prefix} channel: the last event is replayed right after subscription_succeeded`,
    TIMEOUT,
    async (t) => {
      const sdk = serverClient();
      const channelName = uniqueChannel(`${prefix}e2e`);
      await trigger(sdk, channelName, 'older', { n: 1 });
      await trigger(sdk, channelName, 'latest', { n: 2 });

      const client = await connectClient(t, {
        channelAuthorization: channelAuthorization(sdk, cacheUsers),
      });
      const frames = recordFrames(client, channelName, { internal: true });
      const channel = client.subscribe(channelName);
      const replayed = nextEvent(channel, 'latest');
      const missed = collectEvents(channel, 'pusher:cache_miss');
      assert.deepEqual(await replayed, { n: 2 });
      await sleep(SETTLE_MS);
      assert.deepEqual(frameNames(frames), ['pusher_internal:subscription_succeeded', 'latest']);
      assert.deepEqual(missed, []);
    },
  );

  test(`${prefix} channel: pusher:cache_miss when nothing is cached`, TIMEOUT, async (t) => {
    const client = await connectClient(t, {
      channelAuthorization: channelAuthorization(serverClient(), cacheUsers),
    });
    const channelName = uniqueChannel(`${prefix}e2e`);
    const frames = recordFrames(client, channelName, { internal: true });
    const missed = nextEvent(client.subscribe(channelName), 'pusher:cache_miss');
    await missed;
    assert.deepEqual(frameNames(frames), [
      'pusher_internal:subscription_succeeded',
      'pusher:cache_miss',
    ]);
  });
}

// ---------------------------------------------------------------------------------------------
// subscription_count

test(
  'an app with subscription_count: pusher:subscription_count follows the subscribers',
  TIMEOUT,
  async (t) => {
    const app = apps.subscriptionCount;
    const channelName = uniqueChannel();
    const first = await connectClient(t, { app });
    const firstChannel = await subscribe(first, channelName);
    const counts = collectEvents(firstChannel, 'pusher:subscription_count');

    const second = await connectClient(t, { app });
    const secondChannel = await subscribe(second, channelName);
    await waitUntil(
      () => counts.some((data) => data.subscription_count === 2),
      5_000,
      () => `no pusher:subscription_count 2 on the first client; got ${JSON.stringify(counts)}`,
    );
    assert.equal(firstChannel.subscriptionCount, 2);

    const afterLeave = collectEvents(secondChannel, 'pusher:subscription_count');
    first.unsubscribe(channelName);
    await waitUntil(
      () => afterLeave.some((data) => data.subscription_count === 1),
      5_000,
      () => `no pusher:subscription_count 1 after one left; got ${JSON.stringify(afterLeave)}`,
    );
  },
);

test('an app without subscription_count sends no pusher:subscription_count', TIMEOUT, async (t) => {
  const channelName = uniqueChannel();
  const first = await connectClient(t);
  const frames = recordFrames(first, channelName, { internal: true });
  await subscribe(first, channelName);
  await subscribe(await connectClient(t), channelName);
  await sleep(SETTLE_MS);
  assert.deepEqual(frameNames(frames), ['pusher_internal:subscription_succeeded']);
});

// ---------------------------------------------------------------------------------------------
// Refused connections

async function refusal(t, key) {
  const client = createClient(t, { app: { key } });
  const errors = recordErrors(client);
  const states = recordStates(client);
  await waitUntil(
    () => errorCodes(errors).length > 0,
    10_000,
    () => `no error code for key ${key}; errors ${JSON.stringify(errors)}, states ${states}`,
  );
  await sleep(SETTLE_MS);
  return { codes: errorCodes(errors), states, state: client.connection.state };
}

test('an unknown app key is refused with 4001 and pusher-js gives up', TIMEOUT, async (t) => {
  const { codes, states, state } = await refusal(t, 'no-such-key');
  assert.equal(codes[0], 4001, `codes ${codes}`);
  assert.ok(!states.includes('connected'), `states ${states}`);
  assert.notEqual(state, 'connecting', `pusher-js keeps retrying: ${states}`);
});

test('a disabled app is refused with 4003 and pusher-js gives up', TIMEOUT, async (t) => {
  const { codes, states, state } = await refusal(t, apps.disabled.key);
  assert.equal(codes[0], 4003, `codes ${codes}`);
  assert.ok(!states.includes('connected'), `states ${states}`);
  assert.notEqual(state, 'connecting', `pusher-js keeps retrying: ${states}`);
});

// ---------------------------------------------------------------------------------------------
// Server restart: 4200, then pusher-js reconnects and resubscribes by itself

test(
  'after a SIGTERM (close 4200) pusher-js reconnects to the restarted server and resubscribes',
  { timeout: 90_000 },
  async (t) => {
    const port = await freePort();
    const adminPort = await freePort();
    const amqpPrefix = `${config.amqpPrefix}restart`;
    let server = await startServer(t, { port, adminPort, amqpPrefix });
    const sdk = serverClient({ port });

    const client = await connectClient(t, { wsPort: port });
    const firstSocketId = client.connection.socket_id;
    const channelName = uniqueChannel();
    const channel = await subscribe(client, channelName);
    const before = nextEvent(channel, 'before');
    await trigger(sdk, channelName, 'before', { n: 1 });
    assert.deepEqual(await before, { n: 1 });

    const errors = recordErrors(client);
    const states = recordStates(client);
    const exit = await server.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM:\n${server.log()}`);
    await waitUntil(
      () => errorCodes(errors).includes(4200),
      5_000,
      () => `pusher-js saw no 4200; errors ${JSON.stringify(errors)}, states ${states}`,
    );
    assert.notEqual(client.connection.state, 'connected');
    assert.ok(states.includes('connecting'), `pusher-js did not try to reconnect: ${states}`);

    server = await startServer(t, { port, adminPort, amqpPrefix });
    // pusher-js retries a refused attempt only after its 15 s attempt timeout.
    await waitUntil(
      () => client.connection.state === 'connected',
      40_000,
      () => `pusher-js did not reconnect; states ${states.join(' -> ')}`,
      200,
    );
    assert.notEqual(client.connection.socket_id, firstSocketId, 'the socket id did not change');
    assert.match(client.connection.socket_id, /^\d+\.\d+$/);
    await waitUntil(() => channel.subscribed, 10_000, `${channelName} was not resubscribed`);

    const again = nextEvent(channel, 'again');
    await trigger(sdk, channelName, 'again', { n: 2 });
    assert.deepEqual(await again, { n: 2 });

    client.disconnect();
    const finalExit = await withTimeout(server.stop(), 20_000, 'restarted server did not stop');
    assert.deepEqual(finalExit, { code: 0, signal: null }, server.log());
  },
);
