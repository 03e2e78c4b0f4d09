// The durable, bounded outbox: every event waits here, in the order it was made, until the
// server acknowledged it (or refused it for good). Each event is one storage item
// (`<prefix><messageId>`), so adding or removing one writes only that item, and two tabs of
// one origin never overwrite each other's events.
import type { ErrorHandler } from './errors.js';
import { MAX_EVENT_BYTES, type SegmentEvent } from './events.js';

/** What the outbox needs of `localStorage` (any object with these members will do). */
export interface StorageLike {
  readonly length: number;
  key(index: number): string | null;
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface Entry {
  readonly event: SegmentEvent;
  /** The event's JSON text length in UTF-8 bytes. */
  readonly bytes: number;
  /** Sent and not yet answered. */
  inFlight: boolean;
}

interface Stored {
  at: number;
  n: number;
  event: SegmentEvent;
}

const encoder = new TextEncoder();

/** The length of `text` in UTF-8 bytes. */
export function utf8Length(text: string): number {
  return encoder.encode(text).length;
}

export class Outbox {
  /** By `messageId`, in the order the events were made (a `Map` keeps insertion order). */
  private readonly entries = new Map<string, Entry>();
  private count = 0;
  private storageFailed = false;

  constructor(
    private readonly storage: StorageLike | null,
    private readonly prefix: string,
    /** At most this many events; a new one beyond it drops the oldest (reported). */
    readonly max: number,
    private readonly report: ErrorHandler,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** Reads what an earlier page (or another tab) left in storage, oldest first. */
  load(): void {
    if (!this.storage) return;
    const found: Stored[] = [];
    try {
      for (let i = 0; i < this.storage.length; i++) {
        const key = this.storage.key(i);
        if (!key?.startsWith(this.prefix)) continue;
        try {
          found.push(JSON.parse(this.storage.getItem(key) ?? '') as Stored);
        } catch {
          this.storage.removeItem(key);
          i--;
        }
      }
    } catch {
      return;
    }
    found.sort((a, b) => a.at - b.at || a.n - b.n);
    for (const { event } of found) {
      if (!this.entries.has(event.messageId)) this.insert(event, utf8Length(JSON.stringify(event)));
    }
  }

  /**
   * Queues `event` (and stores it), dropping the oldest event when the outbox is full; an event
   * over the server's limit is refused (reported) and false returned.
   */
  add(event: SegmentEvent): boolean {
    const text = JSON.stringify(event);
    const bytes = utf8Length(text);
    if (bytes > MAX_EVENT_BYTES) {
      this.report({
        kind: 'dropped',
        message: `the event is over the server's limit of ${MAX_EVENT_BYTES} bytes`,
        messageIds: [event.messageId],
      });
      return false;
    }
    this.insert(event, bytes);
    if (!this.storage) return true;
    const stored = `{"at":${Date.now()},"n":${this.count},"event":${text}}`;
    try {
      this.storage.setItem(this.prefix + event.messageId, stored);
      this.storageFailed = false;
    } catch (error) {
      if (!this.storageFailed) {
        this.report({
          kind: 'storage',
          message: `could not store the event (${String(error)}); it is kept in memory only`,
          messageIds: [event.messageId],
        });
      }
      this.storageFailed = true;
    }
    return true;
  }

  /**
   * The oldest events not in flight, in order, as many as fit in `maxEvents` and `maxBytes` of
   * JSON; marked in flight.
   */
  take(maxEvents: number, maxBytes: number): Entry[] {
    const taken: Entry[] = [];
    let bytes = 0;
    for (const entry of this.entries.values()) {
      if (entry.inFlight) continue;
      if (taken.length === maxEvents || (taken.length > 0 && bytes + entry.bytes + 1 > maxBytes)) {
        break;
      }
      bytes += entry.bytes + 1;
      entry.inFlight = true;
      taken.push(entry);
    }
    return taken;
  }

  /** Every event still queued, oldest first. */
  all(): Entry[] {
    return [...this.entries.values()];
  }

  /** Removes these events (acknowledged, or refused for good). */
  remove(messageIds: Iterable<string>): void {
    for (const id of messageIds) {
      if (!this.entries.delete(id)) continue;
      try {
        this.storage?.removeItem(this.prefix + id);
      } catch {
        // Left in storage: sent again after a reload, stored once by the server's dedup.
      }
    }
  }

  /** These events are to be sent again (their answer said so, or can no longer come). */
  release(messageIds: Iterable<string>): void {
    for (const id of messageIds) {
      const entry = this.entries.get(id);
      if (entry) entry.inFlight = false;
    }
  }

  /** Whether some event is waiting to be sent (not in flight). */
  hasWaiting(): boolean {
    for (const entry of this.entries.values()) if (!entry.inFlight) return true;
    return false;
  }

  private insert(event: SegmentEvent, bytes: number): void {
    if (this.entries.size >= this.max) {
      const oldest = this.entries.keys().next().value as string;
      this.remove([oldest]);
      this.report({
        kind: 'dropped',
        message: `the outbox is full (${this.max} events): the oldest was dropped`,
        messageIds: [oldest],
      });
    }
    this.count += 1;
    this.entries.set(event.messageId, { event, bytes, inFlight: false });
  }
}
