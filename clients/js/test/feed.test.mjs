import assert from 'node:assert/strict';
import { mock, test } from 'node:test';

import { Feed } from '../dist/feed.js';
import { idTime, lowerBound } from '../dist/ids.js';

const T0 = Date.parse('2025-01-01T00:00:00Z');

/** The UUIDv7 of event `n`: made at T0 + n ms, so ids sort by n. */
function id(n) {
  const hex = (T0 + n).toString(16).padStart(12, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8)}-7abc-8def-${String(n).padStart(12, '0')}`;
}

const frame = (n, event = 'e') => ({ id: id(n), event, data: JSON.stringify({ n }) });

/**
 * A feed whose history is `stored` (frames, in id order), answered `pageSize` at a time, or by
 * `answers` (a queue of answers, then the stored ones); `received` gathers [n, replayed].
 */
function setup({ stored = [], pageSize = 1000, answers = [], now = T0, gate = () => {} } = {}) {
  const requests = [];
  const gaps = [];
  const received = [];
  const waiting = [];
  const feed = new Feed('orders', {
    history: async (channel, after) => {
      requests.push({ channel, after });
      await gate();
      if (answers.length > 0) return answers.shift();
      const rest = stored.filter((f) => f.id > after);
      const events = rest.slice(0, pageSize);
      return { ok: true, events, next: rest.length > pageSize ? events.at(-1).id : null };
    },
    onGap: (gap) => gaps.push(gap),
    slackMs: 5_000,
    recentIds: 10_000,
    maxBuffered: 100,
    maxAttempts: 3,
    now: () => now,
    sleep: () => new Promise((resolve) => waiting.push(resolve)),
  });
  feed.on('e', (data, delivery) =>
    received.push([data.n, delivery.replayed, delivery.id === id(data.n)]),
  );
  return { feed, requests, gaps, received, waiting };
}

test('the first subscription fetches nothing; live events are delivered once each', async () => {
  const { feed, requests, received } = setup();
  await feed.subscribed();
  feed.live(frame(1));
  feed.live(frame(2));
  feed.live(frame(2));
  feed.live(frame(3, 'other'));
  assert.deepEqual(requests, []);
  assert.deepEqual(received, [
    [1, false, true],
    [2, false, true],
  ]);
});

test('a re-subscription fetches from a little before the last id, pages through, drops what was delivered, then the live events held meanwhile', async () => {
  const stored = Array.from({ length: 30 }, (_, n) => frame(n + 1));
  const { feed, requests, received } = setup({ stored, pageSize: 7 });
  await feed.subscribed();
  for (let n = 1; n <= 5; n++) feed.live(frame(n));
  received.length = 0;

  const recovering = feed.subscribed();
  feed.live(frame(31));
  feed.live(frame(12));
  await recovering;
  assert.equal(requests[0].after, lowerBound(idTime(id(5)) - 5_000));
  assert.equal(requests.length, 5, '30 events in pages of 7');
  assert.equal(requests[1].after, id(7));
  assert.deepEqual(
    received.map(([n]) => n),
    [...Array.from({ length: 25 }, (_, i) => i + 6), 31],
  );
  assert.ok(received.slice(0, 25).every(([, replayed]) => replayed));
  assert.deepEqual(received.at(-1), [31, false, true]);
});

test("before any event was seen, recovery starts from the first subscription's time", async () => {
  const { feed, requests } = setup({ now: T0 + 60_000 });
  await feed.subscribed();
  await feed.subscribed();
  assert.equal(requests[0].after, lowerBound(T0 + 55_000));
});

test('410 beyond the window: onGap with the last id and the reason, then live again', async () => {
  const { feed, gaps, received } = setup({
    answers: [{ ok: false, status: 410, error: 'after is beyond the recovery window' }],
  });
  await feed.subscribed();
  feed.live(frame(1));
  const recovering = feed.subscribed();
  feed.live(frame(900));
  await recovering;
  assert.deepEqual(gaps, [
    { channel: 'orders', lastId: id(1), reason: 'HTTP 410: after is beyond the recovery window' },
  ]);
  assert.deepEqual(
    received.map(([n]) => n),
    [1, 900],
  );
  feed.live(frame(901));
  assert.deepEqual(
    received.map(([n]) => n),
    [1, 900, 901],
  );
});

test('503 and network failures are retried with a backoff; after maxAttempts the gap is reported', async () => {
  const unavailable = { ok: false, status: 503, error: 'history is not available yet' };
  const retried = setup({
    stored: [frame(2)],
    answers: [unavailable, { ok: false, status: 0, error: 'TypeError: Failed to fetch' }],
  });
  await retried.feed.subscribed();
  retried.feed.live(frame(1));
  const recovering = retried.feed.subscribed();
  for (let i = 0; i < 2; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    retried.waiting.shift()();
  }
  await recovering;
  assert.equal(retried.requests.length, 3);
  assert.deepEqual(
    retried.received.map(([n]) => n),
    [1, 2],
  );
  assert.deepEqual(retried.gaps, []);

  const failing = setup({ answers: [unavailable, unavailable, unavailable] });
  await failing.feed.subscribed();
  const failed = failing.feed.subscribed();
  for (let i = 0; i < 2; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    failing.waiting.shift()();
  }
  await failed;
  assert.equal(failing.requests.length, 3);
  assert.equal(failing.gaps.length, 1);
  assert.match(failing.gaps[0].reason, /HTTP 503: history is not available yet/);
});

test('a newer subscription takes over from a recovery in progress', async () => {
  const stored = Array.from({ length: 10 }, (_, n) => frame(n + 1));
  let release;
  const held = new Promise((resolve) => (release = resolve));
  let calls = 0;
  const { feed, received } = setup({ stored, gate: () => (++calls === 1 ? held : undefined) });
  await feed.subscribed();
  feed.live(frame(1));
  const old = feed.subscribed();
  const newer = feed.subscribed();
  await newer;
  release();
  await old;
  assert.deepEqual(
    received.map(([n]) => n),
    Array.from({ length: 10 }, (_, i) => i + 1),
  );
});

test('live events beyond the buffer during recovery: another round of history fetches them, in order', async () => {
  // History holds 10 events when the first round asks, 170 when the second does.
  const stored = Array.from({ length: 10 }, (_, n) => frame(n + 1));
  let calls = 0;
  const gate = () => {
    if (++calls === 2) stored.push(...Array.from({ length: 160 }, (_, n) => frame(n + 11)));
  };
  const { feed, requests, received } = setup({ stored, gate });
  await feed.subscribed();
  feed.live(frame(1));
  const recovering = feed.subscribed();
  // 150 live events arrive while history is fetched: the buffer holds 100.
  for (let n = 11; n <= 160; n++) feed.live(frame(n));
  await recovering;
  assert.equal(requests.length, 2);
  assert.deepEqual(
    received.map(([n]) => n),
    Array.from({ length: 170 }, (_, i) => i + 1),
  );
});

test('a callback that throws does not stop the others; its error is thrown from a timer', (t) => {
  mock.timers.enable({ apis: ['setTimeout'] });
  t.after(() => mock.timers.reset());
  const { feed, received } = setup();
  feed.on('e', () => {
    throw new Error('app bug');
  });
  const after = [];
  feed.on('e', (data) => after.push(data.n));
  feed.live(frame(1));
  assert.deepEqual(
    received.map(([n]) => n),
    [1],
  );
  assert.deepEqual(after, [1]);
  assert.throws(() => mock.timers.tick(0), /app bug/);
});

test('data that is not JSON is passed as the string; user_id becomes userId', async () => {
  const feed = new Feed('presence-room', {
    history: async () => ({ ok: true, events: [], next: null }),
    onGap: () => {},
    slackMs: 0,
    recentIds: 10,
    maxBuffered: 10,
    maxAttempts: 1,
    now: () => T0,
    sleep: async () => {},
  });
  const got = [];
  feed.on('client-note', (data, delivery) => got.push([data, delivery.userId]));
  feed.live({ id: id(1), event: 'client-note', data: 'plain text', user_id: 'u1' });
  assert.deepEqual(got, [['plain text', 'u1']]);
});
