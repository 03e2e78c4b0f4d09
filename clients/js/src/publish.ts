// Sending the outbox: batches over the open WebSocket (`switchboard:track`, answered by
// `switchboard:ack` / `switchboard:nack`), `POST /v1/batch` once there has been no WebSocket for
// a while, and `navigator.sendBeacon` when the page goes away. An event leaves the outbox only
// when the server acknowledged it or refused it for good.
import type { ErrorHandler } from './errors.js';
import type { SegmentEvent } from './events.js';
import { utf8Length, type Outbox } from './outbox.js';

export interface Transport {
  /** Sends one `switchboard:track` frame; false when there is no open connection. */
  frame(batch: SegmentEvent[]): boolean;
  /** POSTs `body` to `/v1/batch`: the status (0 when no answer came) and the JSON body, if any. */
  post(body: string): Promise<{ status: number; body: unknown }>;
  /** Hands `body` for `/v1/batch` to `navigator.sendBeacon`; false when the browser refused it. */
  beacon(body: string): boolean;
}

export interface PublishOptions {
  /** The app's key, `writeKey` in `/v1/batch` bodies. */
  writeKey: string;
  /** Events per batch (20). */
  batchSize: number;
  /** How long a new event waits for others to share its batch (100 ms). */
  batchDelayMs: number;
  /** JSON bytes per batch (60,000: the gateway's frames are at most 64 KiB). */
  maxBatchBytes: number;
  /** Batches awaiting their answer (8; the gateway takes 16 per connection). */
  maxInFlight: number;
  /** A batch without an answer after this long is sent again (15,000 ms). */
  answerTimeoutMs: number;
  /** Without a WebSocket for this long, batches go by `POST /v1/batch` (5,000 ms). */
  httpFallbackMs: number;
}

interface Batch {
  /** Its events still awaiting an answer. */
  readonly ids: Set<string>;
  readonly overWebSocket: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

/** The JSON bytes a beacon may carry: Chrome allows 64 KiB in flight for all of a page's. */
const MAX_BEACON_BYTES = 60_000;

/** The pause after `failures` refusals in a row: 0.5 s doubling to 30 s, with jitter (50–100 %). */
export function backoff(failures: number): number {
  return Math.min(30_000, 500 * 2 ** Math.max(0, failures - 1)) * (0.5 + Math.random() / 2);
}

/** The `index`es and reasons of a Segment 400 answer's `errors`. */
function invalidEvents(body: unknown): Map<number, string> {
  const invalid = new Map<number, string>();
  const errors = (body as { errors?: unknown } | null)?.errors;
  if (!Array.isArray(errors)) return invalid;
  for (const error of errors as { index?: unknown; reason?: unknown }[]) {
    if (typeof error.index === 'number') invalid.set(error.index, String(error.reason));
  }
  return invalid;
}

export class Publisher {
  private connected = false;
  /** Analytics never go over the WebSocket again (none in this browser, or the app refuses). */
  private httpOnly = false;
  private stopped = false;
  private disconnectedAt: number;
  private readonly inFlight = new Set<Batch>();
  private readonly batchOf = new Map<string, Batch>();
  private fresh = 0;
  /** Refusals (`retry: true`, failed requests, timeouts) since the last acknowledgement. */
  private failures = 0;
  /** Nothing is sent before this time: the backoff after a refusal. */
  private pausedUntil = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerDue = Infinity;

  constructor(
    private readonly outbox: Outbox,
    private readonly transport: Transport,
    private readonly options: PublishOptions,
    private readonly report: ErrorHandler,
    private readonly now: () => number = Date.now,
  ) {
    this.disconnectedAt = now();
  }

  /** Events were queued (or loaded): send within the batch delay, at once when a batch is full. */
  queued(count = 1): void {
    this.fresh += count;
    this.schedule(this.fresh >= this.options.batchSize ? 0 : this.options.batchDelayMs);
  }

  /**
   * The WebSocket is open (true) or gone (false). Either way batches sent over an earlier one
   * will get no answer: they are due again now.
   */
  connection(connected: boolean): void {
    for (const batch of [...this.inFlight]) {
      if (!batch.overWebSocket) continue;
      const ids = [...batch.ids];
      this.forget(ids);
      this.outbox.release(ids);
    }
    this.connected = connected && !this.httpOnly;
    if (!connected) this.disconnectedAt = this.now();
    this.schedule(0);
  }

  /**
   * Analytics cannot go over the WebSocket (the browser has none, or the gateway refuses them for
   * this app): `POST /v1/batch` from now on. `refused` are events the WebSocket gave back.
   */
  noWebSocket(refused: string[] = []): void {
    this.forget(refused);
    this.outbox.release(refused);
    this.httpOnly = true;
    this.connected = false;
    this.disconnectedAt = -Infinity;
    this.schedule(0);
  }

  /** `switchboard:ack`: these events are stored (or will be, exactly once). */
  ack(messageIds: string[]): void {
    this.forget(messageIds);
    this.outbox.remove(messageIds);
    this.failures = 0;
    this.schedule(0);
  }

  /**
   * `switchboard:nack`: refused for good (`retry` false: removed and reported) or for now (sent
   * again, with the same `messageId`, once the backoff is over: the gateway is short of its
   * broker or of patience, so nothing at all is sent until then). Refusals that arrive during a
   * backoff (the other batches that were in flight) do not lengthen it.
   */
  nack(messageIds: string[], reason: string, retry: boolean): void {
    this.forget(messageIds);
    if (retry) {
      this.outbox.release(messageIds);
      const now = this.now();
      if (now >= this.pausedUntil) {
        this.failures += 1;
        this.pausedUntil = now + backoff(this.failures);
      }
    } else if (messageIds.length > 0) {
      this.outbox.remove(messageIds);
      this.report({ kind: 'rejected', message: reason, messageIds });
    }
    this.schedule(0);
  }

  /** The page is going away: what is unacknowledged goes by `sendBeacon` (and stays queued). */
  pagehide(): void {
    const sentAt = new Date(this.now()).toISOString();
    let chunk: string[] = [];
    let bytes = 0;
    const send = (): boolean =>
      chunk.length === 0 ||
      this.transport.beacon(
        `{"writeKey":${JSON.stringify(this.options.writeKey)},"batch":[${chunk.join(',')}]}`,
      );
    for (const entry of this.outbox.all()) {
      const text = JSON.stringify({ ...entry.event, sentAt });
      const size = utf8Length(text) + 1;
      if (chunk.length > 0 && bytes + size > MAX_BEACON_BYTES) {
        if (!send()) return;
        chunk = [];
        bytes = 0;
      }
      chunk.push(text);
      bytes += size;
    }
    send();
  }

  /** Stops sending for good (the outbox keeps what it holds, for the next page). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timerDue = Infinity;
    for (const batch of this.inFlight) clearTimeout(batch.timer);
  }

  private flush(): void {
    this.timer = undefined;
    this.timerDue = Infinity;
    this.fresh = 0;
    const now = this.now();
    if (now < this.pausedUntil) {
      this.schedule(this.pausedUntil - now);
      return;
    }
    const { batchSize, maxBatchBytes, maxInFlight, answerTimeoutMs, httpFallbackMs } = this.options;
    const overHttp = !this.connected && now - this.disconnectedAt >= httpFallbackMs;
    while (this.inFlight.size < maxInFlight && (this.connected || overHttp)) {
      const entries = this.outbox.take(batchSize, maxBatchBytes);
      if (entries.length === 0) break;
      const sentAt = new Date(now).toISOString();
      const events = entries.map((entry) => ({ ...entry.event, sentAt }));
      const batch: Batch = {
        ids: new Set(events.map((event) => event.messageId)),
        overWebSocket: this.connected,
      };
      if (batch.overWebSocket && !this.transport.frame(events)) {
        // pusher-js's state change is on its way: it will call `connection`.
        this.outbox.release(batch.ids);
        return;
      }
      this.inFlight.add(batch);
      for (const id of batch.ids) this.batchOf.set(id, batch);
      if (batch.overWebSocket) {
        batch.timer = setTimeout(
          () => this.nack([...batch.ids], 'no answer in time', true),
          answerTimeoutMs,
        );
      } else {
        void this.post(events);
      }
    }
    if (!this.connected && !overHttp && this.outbox.hasWaiting()) {
      this.schedule(this.disconnectedAt + httpFallbackMs - now);
    }
  }

  private async post(events: SegmentEvent[]): Promise<void> {
    const body = JSON.stringify({ writeKey: this.options.writeKey, batch: events });
    const { status, body: answer } = await this.transport.post(body);
    const ids = events.map((event) => event.messageId);
    if (status >= 200 && status < 300) return this.ack(ids);
    const invalid = status === 400 ? invalidEvents(answer) : new Map<number, string>();
    if (invalid.size > 0) {
      // Nothing of the request was stored: refuse the invalid events, send the rest again.
      const byReason = new Map<string, string[]>();
      invalid.forEach((reason, index) => {
        const id = ids[index];
        if (id !== undefined) byReason.set(reason, [...(byReason.get(reason) ?? []), id]);
      });
      byReason.forEach((refused, reason) => this.nack(refused, reason, false));
      const rest = ids.filter((_, index) => !invalid.has(index));
      this.forget(rest);
      this.outbox.release(rest);
      this.schedule(0);
      return;
    }
    if (status >= 400 && status < 500 && status !== 429) {
      const error = (answer as { error?: unknown } | null)?.error;
      this.report({
        kind: 'http',
        message: `POST /v1/batch: HTTP ${status}${error ? `: ${String(error)}` : ''}`,
        messageIds: ids,
      });
    }
    this.nack(ids, `HTTP ${status}`, true);
  }

  /** These events are answered: they leave their batch, and a batch with none left is done. */
  private forget(messageIds: Iterable<string>): void {
    for (const id of messageIds) {
      const batch = this.batchOf.get(id);
      if (!batch) continue;
      this.batchOf.delete(id);
      batch.ids.delete(id);
      if (batch.ids.size === 0) {
        clearTimeout(batch.timer);
        this.inFlight.delete(batch);
      }
    }
  }

  private schedule(delayMs: number): void {
    const due = this.now() + Math.max(0, delayMs);
    if (this.stopped || due >= this.timerDue) return;
    clearTimeout(this.timer);
    this.timerDue = due;
    this.timer = setTimeout(() => this.flush(), Math.max(0, delayMs));
  }
}
