// One subscribed channel: its callbacks, the ids it delivered, and the recovery that runs on
// every re-subscription — what was published since the last id seen is fetched from the history
// route and delivered, in id order, before the live events that arrived meanwhile; every event
// exactly once (by id).
import { idTime, lowerBound, RecentIds } from './ids.js';

/** An event as a live frame or the history route carries it (`data` a string). */
export interface Frame {
  id: string;
  event: string;
  data: string;
  user_id?: string | null;
}

/** What a callback learns besides the data. */
export interface Delivery {
  id: string;
  channel: string;
  event: string;
  userId?: string;
  /** Fetched from history after a reconnect (false: received live). */
  replayed: boolean;
}

export type Callback = (data: unknown, delivery: Delivery) => void;

/** A stretch of the channel that could not be recovered; live delivery goes on after it. */
export interface Gap {
  channel: string;
  /** The last id delivered before the gap (null: none yet). */
  lastId: string | null;
  reason: string;
}

export type HistoryAnswer =
  { ok: true; events: Frame[]; next: string | null } | { ok: false; status: number; error: string };

export interface FeedOptions {
  /** Fetches one page of the channel's history after `after` (the history route). */
  history(channel: string, after: string): Promise<HistoryAnswer>;
  onGap(gap: Gap): void;
  /** How far before the last id seen recovery starts (5,000 ms): ids of events published on
   * several gateways at once are not strictly in arrival order. */
  slackMs: number;
  /** Ids remembered to drop repeats (10,000). */
  recentIds: number;
  /** Live events held while history is fetched (10,000; beyond: another round of history). */
  maxBuffered: number;
  /** Failed history requests (503, network) tried again before the gap is reported (5). */
  maxAttempts: number;
  now(): number;
  sleep(ms: number): Promise<void>;
}

/** `data` as pusher-js passes it: parsed when it is JSON, else the string itself. */
function parse(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

export class Feed {
  private readonly callbacks = new Map<string, Set<Callback>>();
  private readonly seen: RecentIds;
  private lastId: string | null = null;
  private subscribedAt: number | null = null;
  private generation = 0;
  private recovering = false;
  private buffer: Frame[] = [];
  private overflowed = false;

  constructor(
    readonly channel: string,
    private readonly options: FeedOptions,
  ) {
    this.seen = new RecentIds(options.recentIds);
  }

  /** Adds a callback for `event`. */
  on(event: string, callback: Callback): void {
    const set = this.callbacks.get(event) ?? new Set();
    set.add(callback);
    this.callbacks.set(event, set);
  }

  /** Removes a callback; true when the feed has none left. */
  off(event: string, callback: Callback): boolean {
    const set = this.callbacks.get(event);
    set?.delete(callback);
    if (set?.size === 0) this.callbacks.delete(event);
    return this.callbacks.size === 0;
  }

  /** A live event of the channel (with its id). */
  live(frame: Frame): void {
    if (!this.recovering) {
      this.deliver(frame, false);
    } else if (this.buffer.length < this.options.maxBuffered) {
      this.buffer.push(frame);
    } else {
      // Full: history has these too (they were published); fetch another round for them.
      this.buffer = [];
      this.overflowed = true;
    }
  }

  /**
   * The server confirmed a subscription. The first one starts the feed; each later one (after a
   * reconnect) recovers what was published meanwhile. A newer subscription ends an older
   * recovery (it picks up where that one stopped).
   */
  async subscribed(): Promise<void> {
    const generation = ++this.generation;
    if (this.subscribedAt === null) {
      this.subscribedAt = this.options.now();
      return;
    }
    this.recovering = true;
    let filled: boolean;
    do {
      this.overflowed = false;
      filled = await this.recover(generation);
      if (generation !== this.generation) return;
    } while (filled && this.overflowed);
    this.recovering = false;
    const buffered = this.buffer;
    this.buffer = [];
    for (const frame of buffered) this.deliver(frame, false);
  }

  /** Fetches and delivers what came after the last id seen; false when a gap was reported. */
  private async recover(generation: number): Promise<boolean> {
    const from = this.lastId === null ? (this.subscribedAt ?? 0) : idTime(this.lastId);
    let after = lowerBound(from - this.options.slackMs);
    let attempts = 0;
    for (;;) {
      const answer = await this.options.history(this.channel, after);
      if (generation !== this.generation) return true;
      if (answer.ok) {
        attempts = 0;
        for (const frame of answer.events) this.deliver(frame, true);
        if (answer.next === null) return true;
        after = answer.next;
        continue;
      }
      const retryable = answer.status === 0 || answer.status === 429 || answer.status >= 500;
      if (retryable && ++attempts < this.options.maxAttempts) {
        await this.options.sleep(Math.min(8_000, 250 * 2 ** attempts));
        if (generation !== this.generation) return true;
        continue;
      }
      const reason = answer.status === 0 ? answer.error : `HTTP ${answer.status}: ${answer.error}`;
      this.options.onGap({ channel: this.channel, lastId: this.lastId, reason });
      return false;
    }
  }

  private deliver(frame: Frame, replayed: boolean): void {
    if (!this.seen.add(frame.id)) return;
    if (this.lastId === null || frame.id > this.lastId) this.lastId = frame.id;
    const callbacks = this.callbacks.get(frame.event);
    if (!callbacks) return;
    const delivery: Delivery = {
      id: frame.id,
      channel: this.channel,
      event: frame.event,
      replayed,
    };
    if (frame.user_id) delivery.userId = frame.user_id;
    const data = parse(frame.data);
    for (const callback of callbacks) {
      try {
        callback(data, delivery);
      } catch (error) {
        // An app's callback that throws must not stop the others; the error still shows.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
