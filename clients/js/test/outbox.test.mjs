import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Outbox } from '../dist/outbox.js';
import { MemoryStorage, errorLog, trackEvent } from './support.mjs';

const PREFIX = 'switchboard:app-key:outbox:';

test('events survive a reload in the order they were made, each one storage item', () => {
  const storage = new MemoryStorage();
  const first = new Outbox(storage, PREFIX, 10, errorLog().report);
  const events = [trackEvent({ n: 1 }), trackEvent({ n: 2 }), trackEvent({ n: 3 })];
  for (const event of events) assert.equal(first.add(event), true);
  assert.equal(storage.length, 3);
  storage.setItem('unrelated', 'kept');
  storage.setItem(`${PREFIX}broken`, '{not json');

  const reloaded = new Outbox(storage, PREFIX, 10, errorLog().report);
  reloaded.load();
  assert.deepEqual(
    reloaded.all().map((entry) => entry.event),
    events,
  );
  assert.equal(storage.getItem(`${PREFIX}broken`), null, 'an unreadable item is removed');
  assert.equal(storage.getItem('unrelated'), 'kept');

  reloaded.remove([events[1].messageId]);
  assert.equal(storage.getItem(PREFIX + events[1].messageId), null);
  assert.equal(reloaded.size, 2);
});

test("two tabs on one storage keep both tabs' events", () => {
  const storage = new MemoryStorage();
  const tabA = new Outbox(storage, PREFIX, 10, errorLog().report);
  const tabB = new Outbox(storage, PREFIX, 10, errorLog().report);
  const a = trackEvent({ tab: 'a' });
  const b = trackEvent({ tab: 'b' });
  tabA.add(a);
  tabB.add(b);
  const reloaded = new Outbox(storage, PREFIX, 10, errorLog().report);
  reloaded.load();
  assert.deepEqual(
    new Set(reloaded.all().map((entry) => entry.event.messageId)),
    new Set([a.messageId, b.messageId]),
  );
});

test('full: the oldest event is dropped and reported', () => {
  const storage = new MemoryStorage();
  const { errors, report } = errorLog();
  const outbox = new Outbox(storage, PREFIX, 3, report);
  const events = [1, 2, 3, 4, 5].map((n) => trackEvent({ n }));
  for (const event of events) outbox.add(event);
  assert.deepEqual(
    outbox.all().map((entry) => entry.event.properties.n),
    [3, 4, 5],
  );
  assert.equal(storage.length, 3, 'dropped events leave storage too');
  assert.deepEqual(
    errors.map((error) => [error.kind, error.messageIds]),
    [
      ['dropped', [events[0].messageId]],
      ['dropped', [events[1].messageId]],
    ],
  );
  assert.match(errors[0].message, /outbox is full \(3 events\)/);
});

test('an event over 32 KB is refused and reported, never queued', () => {
  const { errors, report } = errorLog();
  const outbox = new Outbox(new MemoryStorage(), PREFIX, 10, report);
  const big = trackEvent({ text: 'x'.repeat(32 * 1024) });
  assert.equal(outbox.add(big), false);
  assert.equal(outbox.size, 0);
  assert.deepEqual(
    errors.map((error) => [error.kind, error.messageIds]),
    [['dropped', [big.messageId]]],
  );
  // One just under the limit fits (its JSON is the properties plus the rest of the event).
  const overhead = JSON.stringify(trackEvent({ text: '' })).length;
  assert.equal(outbox.add(trackEvent({ text: 'y'.repeat(32 * 1024 - overhead) })), true);
});

test('storage full: the event is kept in memory and the failure reported once', () => {
  const { errors, report } = errorLog();
  const storage = new MemoryStorage(1_000);
  const outbox = new Outbox(storage, PREFIX, 100, report);
  for (let n = 0; n < 10; n++) outbox.add(trackEvent({ n }));
  assert.equal(outbox.size, 10, 'all kept in memory');
  assert.ok(storage.length < 10, 'not all stored');
  assert.equal(errors.filter((error) => error.kind === 'storage').length, 1);
});

test('take: events not in flight, in order, within the count and byte budgets', () => {
  const outbox = new Outbox(null, PREFIX, 100, errorLog().report);
  const events = [0, 1, 2, 3, 4, 5].map((n) => trackEvent({ n }));
  for (const event of events) outbox.add(event);
  const size = outbox.all()[0].bytes;
  const numbers = (entries) => entries.map((entry) => entry.event.properties.n);

  const first = outbox.take(2, 10_000);
  assert.deepEqual(numbers(first), [0, 1]);
  assert.ok(first.every((entry) => entry.inFlight));
  assert.deepEqual(numbers(outbox.take(10, 2 * (size + 1))), [2, 3], 'two fit the bytes');
  assert.deepEqual(numbers(outbox.take(10, 1)), [4], 'one always goes, whatever its size');
  assert.equal(outbox.hasWaiting(), true);
  assert.deepEqual(numbers(outbox.take(10, 10_000)), [5]);
  assert.equal(outbox.hasWaiting(), false, 'everything is in flight');
  assert.deepEqual(outbox.take(10, 10_000), []);

  outbox.release([events[3].messageId, events[0].messageId]);
  assert.deepEqual(numbers(outbox.take(10, 10_000)), [0, 3], 'released ones go again, in order');
});
