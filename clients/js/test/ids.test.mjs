import assert from 'node:assert/strict';
import { test } from 'node:test';

import { idTime, lowerBound, RecentIds, randomId } from '../dist/ids.js';

test('idTime reads the milliseconds of a UUIDv7 and lowerBound makes the smallest id of one', () => {
  // A UUIDv7 made at 2024-10-29T12:34:56.789Z (0x0192d845a895 ms).
  const id = '0192d845-a895-7c3a-9e1f-8d2a61b3c4f0';
  assert.equal(idTime(id), Date.parse('2024-10-29T12:34:56.789Z'));
  const bound = lowerBound(idTime(id));
  assert.equal(bound, '0192d845-a895-7000-8000-000000000000');
  assert.ok(bound < id, 'every id of that millisecond sorts above its lower bound');
  assert.ok(lowerBound(idTime(id) + 1) > id, 'and below the next millisecond');
  assert.equal(idTime(bound), idTime(id));
  assert.equal(lowerBound(-5), '00000000-0000-7000-8000-000000000000');
});

test('RecentIds tells new ids from repeats, forgets the oldest beyond its bound and never takes one at or below them back', () => {
  const ids = new RecentIds(3);
  const id = (n) => `0192d83d-d9b5-7000-8000-${String(n).padStart(12, '0')}`;
  assert.equal(ids.add(id(1)), true);
  assert.equal(ids.add(id(1)), false);
  assert.equal(ids.add(id(3)), true);
  assert.equal(ids.add(id(2)), true, 'out of order is still new');
  assert.equal(ids.add(id(4)), true, 'the fourth forgets id 1');
  assert.equal(ids.add(id(1)), false, 'a forgotten id is not new again');
  assert.equal(ids.add(id(5)), true, 'forgets id 3');
  assert.equal(ids.add(id(2)), false, 'remembered still');
  assert.equal(ids.add(id(3)), false, 'forgotten, at the floor');
});

test('randomId makes version-4 UUIDs', () => {
  const seen = new Set();
  for (let i = 0; i < 100; i++) {
    const id = randomId();
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    seen.add(id);
  }
  assert.equal(seen.size, 100);
});
