// Test support: an in-memory `localStorage`, and segment events made like the client makes them.
import { randomUUID } from 'node:crypto';

/** A Storage with localStorage's members, its items in a Map; `quota` bytes of values at most. */
export class MemoryStorage {
  constructor(quota = Infinity) {
    this.items = new Map();
    this.quota = quota;
  }

  get length() {
    return this.items.size;
  }

  key(index) {
    return [...this.items.keys()][index] ?? null;
  }

  getItem(key) {
    return this.items.get(key) ?? null;
  }

  setItem(key, value) {
    const used = [...this.items.values()].reduce((sum, item) => sum + item.length, 0);
    if (used + value.length > this.quota) throw new Error('QuotaExceededError');
    this.items.set(key, String(value));
  }

  removeItem(key) {
    this.items.delete(key);
  }
}

/** A track event as `Identity.event` makes it. */
export function trackEvent(properties = {}) {
  return {
    type: 'track',
    messageId: randomUUID(),
    anonymousId: 'anon',
    timestamp: new Date().toISOString(),
    event: 'Clicked',
    properties,
    context: { library: { name: '@switchboard/client', version: 'test' } },
  };
}

/** Records what `onError` was told. */
export function errorLog() {
  const errors = [];
  const report = (error) => errors.push(error);
  return { errors, report };
}
