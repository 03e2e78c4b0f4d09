// End-to-end: the real pusher-js client and the official `pusher` server SDK against a running
// Switchboard (started by scripts/e2e.sh, which passes its address in SWITCHBOARD_* variables).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import {
  collectEvents,
  config,
  connectClient,
  describeRequestError,
  disconnectAll,
  nextEvent,
  psql,
  recordFrames,
  roundTrip,
  serverClient,
  sleep,
  sqlChannel,
  subscribe,
  trigger,
  uniqueChannel,
  waitUntil,
} from './helpers.mjs';

const TIMEOUT = { timeout: 30_000 };

after(disconnectAll);

/** Asserts that `promise` rejects with a `pusher` RequestError carrying `status`. */
async function assertRejectsWithStatus(promise, status) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.status, status, describeRequestError(error));
    return true;
  });
}

test('pusher-js connects and receives a socket id', TIMEOUT, async (t) => {
  const client = await connectClient(t);
  assert.equal(client.connection.state, 'connected');
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
});

test('a public channel receives an event triggered with the server SDK', TIMEOUT, async (t) => {
  const channelName = uniqueChannel();
  const client = await connectClient(t);
  const channel = await subscribe(client, channelName);

  const received = nextEvent(channel, 'my-event');
  const response = await trigger(serverClient(), channelName, 'my-event', { hello: 'world' });
  assert.equal(response.status, 200);
  assert.equal(await response.text(), '{}');
  assert.deepEqual(await received, { hello: 'world' });
});

test('one trigger reaches every listed channel', TIMEOUT, async (t) => {
  const names = [uniqueChannel(), uniqueChannel()];
  const channels = [];
  for (const name of names) {
    channels.push(await subscribe(await connectClient(t), name));
  }

  const received = channels.map((channel) => nextEvent(channel, 'multi'));
  const response = await trigger(serverClient(), names, 'multi', { n: 2 });
  assert.equal(response.status, 200);
  for (const data of await Promise.all(received)) {
    assert.deepEqual(data, { n: 2 });
  }
});

test('socket_id excludes that connection from the event', TIMEOUT, async (t) => {
  const channelName = uniqueChannel();
  const excluded = await connectClient(t);
  const other = await connectClient(t);
  const excludedChannel = await subscribe(excluded, channelName);
  const otherChannel = await subscribe(other, channelName);
  const excludedFrames = recordFrames(excluded, channelName);
  const sdk = serverClient();

  const toOther = nextEvent(otherChannel, 'excluding');
  const params = { socket_id: excluded.connection.socket_id };
  await trigger(sdk, channelName, 'excluding', { x: 1 }, params);
  assert.deepEqual(await toOther, { x: 1 });
  await sleep(1_000);
  assert.deepEqual(excludedFrames, [], 'the excluded socket received the event');

  const control = nextEvent(excludedChannel, 'control');
  await trigger(sdk, channelName, 'control', { x: 2 });
  assert.deepEqual(await control, { x: 2 }, 'the excluded socket was still subscribed');
});

test('events on one channel arrive in trigger order', TIMEOUT, async (t) => {
  const channelName = uniqueChannel();
  const channel = await subscribe(await connectClient(t), channelName);
  const events = collectEvents(channel, 'seq');
  const sdk = serverClient();
  const expected = Array.from({ length: 20 }, (_, i) => ({ i }));

  for (const data of expected) {
    await trigger(sdk, channelName, 'seq', data);
  }
  await waitUntil(
    () => events.length >= expected.length,
    10_000,
    () => `received ${events.length} of ${expected.length} events: ${JSON.stringify(events)}`,
  );
  await sleep(300);
  assert.deepEqual(events, expected);
});

test('an unsubscribed socket receives no further events', TIMEOUT, async (t) => {
  const channelName = uniqueChannel();
  const leaving = await connectClient(t);
  const staying = await connectClient(t);
  const leavingChannel = await subscribe(leaving, channelName);
  const stayingChannel = await subscribe(staying, channelName);
  const leavingFrames = recordFrames(leaving, channelName);
  const sdk = serverClient();

  const before = nextEvent(leavingChannel, 'before');
  await trigger(sdk, channelName, 'before', { n: 1 });
  assert.deepEqual(await before, { n: 1 });

  leaving.unsubscribe(channelName);
  await roundTrip(leaving);

  const toStaying = nextEvent(stayingChannel, 'after');
  await trigger(sdk, channelName, 'after', { n: 2 });
  assert.deepEqual(await toStaying, { n: 2 });
  await sleep(1_000);
  assert.deepEqual(
    leavingFrames.map((frame) => frame.event),
    ['before'],
    'the server kept sending to an unsubscribed socket',
  );
});

test('a request signed with the wrong secret is rejected with 401', TIMEOUT, async () => {
  const sdk = serverClient({ secret: 'not-the-app-secret' });
  await assertRejectsWithStatus(sdk.trigger(uniqueChannel(), 'my-event', { a: 1 }), 401);
});

test('an invalid channel name is rejected with 400', TIMEOUT, async () => {
  // The SDK refuses invalid names itself, so send the signed request through its raw `post`.
  const body = { name: 'my-event', data: '{"a":1}', channels: ['has space'] };
  await assertRejectsWithStatus(serverClient().post({ path: '/events', body }), 400);
});

test('event data over 10 KB is rejected with 413', TIMEOUT, async () => {
  const data = { blob: 'x'.repeat(11 * 1024) };
  await assertRejectsWithStatus(serverClient().trigger(uniqueChannel(), 'big', data), 413);
});

test('a triggered event is stored exactly once in Postgres', TIMEOUT, async () => {
  const channelName = uniqueChannel();
  const response = await trigger(serverClient(), channelName, 'stored', { hello: 'world' });
  assert.equal(response.status, 200);

  const where = `channel = ${sqlChannel(channelName)}`;
  await waitUntil(
    () => Number(psql(`SELECT count(*) FROM events WHERE ${where}`)[0]) > 0,
    10_000,
    `event on ${channelName} not in the events table`,
  );
  await sleep(1_000);
  const rows = psql(
    "SELECT app_id, source, name, data->>'hello', received_at IS NOT NULL" +
      ` FROM events WHERE ${where}`,
  );
  assert.deepEqual(rows, [`${config.appId}|api|stored|world|t`]);
});
