// @switchboard/client: Switchboard's web client on top of pusher-js. Analytics calls go over
// the open WebSocket with acknowledgements, from a durable outbox; subscriptions recover what
// was published while the connection was away.
import Pusher from 'pusher-js';
import type { Options as PusherOptions } from 'pusher-js';

import type { ErrorHandler, SwitchboardError } from './errors.js';
import { Identity, type Properties, type SegmentEvent } from './events.js';
import { Feed, type Callback, type Frame, type Gap, type HistoryAnswer } from './feed.js';
import { Outbox, type StorageLike } from './outbox.js';
import { Publisher } from './publish.js';

export { LIBRARY } from './events.js';
export type { Callback, Delivery, Gap } from './feed.js';
export type { SwitchboardError } from './errors.js';
export type { Properties, SegmentEvent } from './events.js';
export type { StorageLike } from './outbox.js';

/** What an auth endpoint answers for a private or presence channel (as for pusher-js). */
export interface ChannelAuth {
  auth: string;
  channel_data?: string;
}

export interface SwitchboardOptions {
  /** The app's key (also the write key of its analytics). */
  key: string;
  /** The gateway's host and port: WebSocket, history and `/v1/batch` alike. */
  host: string;
  port: number;
  /** `wss://` and `https://` (default false). */
  forceTLS?: boolean;
  /** Signs private and presence subscriptions: POSTed `socket_id` and `channel_name` as a form,
   * like pusher-js does (default `/pusher/auth`). */
  authEndpoint?: string;
  /** Headers for the auth endpoint's request. */
  authHeaders?: Record<string, string>;
  /** Signs subscriptions your own way instead of `authEndpoint`. */
  authorize?: (request: { socketId: string; channelName: string }) => Promise<ChannelAuth>;
  outbox?: {
    /** At most this many unacknowledged events (1,000); beyond, the oldest is dropped and reported. */
    maxEvents?: number;
    /** Where the outbox lives (default `localStorage`; null: memory only). */
    storage?: StorageLike | null;
  };
  /** Events per batch (20). */
  batchSize?: number;
  /** How long an event waits for others to share its batch (100 ms). */
  batchDelayMs?: number;
  /** Without a WebSocket for this long, events go by `POST /v1/batch` (5,000 ms). */
  httpFallbackMs?: number;
  /** Recovery asks from this long before the last event seen (5,000 ms). */
  recoverySlackMs?: number;
  /** A stretch of a channel that could not be recovered (default: `console.warn`). */
  onGap?: (gap: Gap) => void;
  /** Events refused or dropped, storage and HTTP trouble (default: `console.warn`). */
  onError?: ErrorHandler;
  /** Any other pusher-js option (they win over the ones this client sets). */
  pusher?: Partial<PusherOptions>;
}

interface Captured {
  socketId: string;
  auth: ChannelAuth;
}

/** Raw frames, before pusher-js drops the `id`. */
interface RawFrame {
  event?: string;
  channel?: string;
  data?: unknown;
  id?: unknown;
  user_id?: string;
}

const SAFE_NAME = /[^A-Za-z0-9_\-=@,.;]/g;

/** In the reason of the gateway's nack when the app takes no analytics over the WebSocket
 * (`limits.track_batches_per_second = 0`): the client then uses `/v1/batch`. */
const WEBSOCKET_TRACK_OFF = 'track_batches_per_second = 0';

function localStorageOrNull(): StorageLike | null {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

function dataObject(data: unknown): Record<string, unknown> {
  try {
    return (typeof data === 'string' ? JSON.parse(data) : data) ?? {};
  } catch {
    return {};
  }
}

function strings(value: unknown): string[] {
  return Array.isArray(value)
    ? value.filter((item): item is string => typeof item === 'string')
    : [];
}

export class Switchboard {
  /** The pusher-js client underneath (presence members, sign-in, other channels). */
  readonly pusher: Pusher;
  private readonly identity: Identity;
  private readonly outbox: Outbox;
  private readonly publisher: Publisher;
  private readonly feeds = new Map<string, Feed>();
  private readonly auths = new Map<string, Captured>();
  private readonly base: string;
  private readonly report: ErrorHandler;
  private connected = false;

  constructor(private readonly options: SwitchboardOptions) {
    const { key, host, port, forceTLS = false } = options;
    this.base = `${forceTLS ? 'https' : 'http'}://${host}:${port}`;
    this.report =
      options.onError ?? ((error: SwitchboardError) => console.warn('switchboard:', error));
    const storage =
      options.outbox?.storage === undefined ? localStorageOrNull() : options.outbox.storage;
    this.identity = new Identity(storage, `switchboard:${key}:`);
    this.outbox = new Outbox(
      storage,
      `switchboard:${key}:outbox:`,
      options.outbox?.maxEvents ?? 1000,
      this.report,
    );
    this.publisher = new Publisher(
      this.outbox,
      {
        frame: (batch) => this.pusher.send_event('switchboard:track', { batch }),
        post: (body) => this.post(body),
        beacon: (body) =>
          typeof navigator !== 'undefined' &&
          typeof navigator.sendBeacon === 'function' &&
          navigator.sendBeacon(`${this.base}/v1/batch`, body),
      },
      {
        writeKey: key,
        batchSize: options.batchSize ?? 20,
        batchDelayMs: options.batchDelayMs ?? 100,
        maxBatchBytes: 60_000,
        maxInFlight: 8,
        answerTimeoutMs: 15_000,
        httpFallbackMs: options.httpFallbackMs ?? 5_000,
      },
      this.report,
    );
    this.pusher = new Pusher(key, {
      cluster: 'switchboard',
      wsHost: host,
      wsPort: port,
      wssPort: port,
      forceTLS,
      wsPath: '/switchboard',
      enabledTransports: ['ws', 'wss'],
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, callback) => {
          this.authorize({ socketId, channelName }).then(
            (auth) => {
              this.auths.set(channelName, { socketId, auth });
              callback(null, auth);
            },
            (error: unknown) =>
              callback(error instanceof Error ? error : new Error(String(error)), null),
          );
        },
      },
      ...options.pusher,
    });
    this.pusher.connection.bind('state_change', ({ current }: { current: string }) =>
      this.stateChanged(current),
    );
    // Without any WebSocket pusher-js failed already, inside its constructor.
    this.stateChanged(this.pusher.connection.state);
    this.outbox.load();
    if (this.outbox.size > 0) this.publisher.queued(this.outbox.size);
    globalThis.addEventListener?.('pagehide', this.pagehide);
  }

  /** Events not yet acknowledged by the server (in the outbox). */
  get pending(): number {
    return this.outbox.size;
  }

  /** Records `event` with `properties`; returns its `messageId`. */
  track(event: string, properties: Properties = {}): string {
    return this.enqueue(this.identity.event('track', { event, properties }));
  }

  /** Records a page view (the current page's path, URL, title, referrer and search by default). */
  page(name?: string, properties: Properties = {}): string {
    const fields: Partial<SegmentEvent> = { properties: this.identity.pageProperties(properties) };
    if (name !== undefined) fields.name = name;
    return this.enqueue(this.identity.event('page', fields));
  }

  /** Names the user (kept for later events, also across reloads) with `traits`. */
  identify(userId: string, traits: Properties = {}): string {
    this.identity.userId = userId;
    return this.enqueue(this.identity.event('identify', { traits }));
  }

  /**
   * Calls `callback` for every `event` on `channel`, in order and once each, including those
   * published while the connection was away (fetched when it is back). Returns a function that
   * removes the callback (the channel is unsubscribed with its last callback).
   */
  subscribe(channel: string, event: string, callback: Callback): () => void {
    let feed = this.feeds.get(channel);
    if (!feed) {
      feed = new Feed(channel, {
        history: (name, after) => this.history(name, after),
        onGap: this.options.onGap ?? ((gap: Gap) => console.warn('switchboard: gap', gap)),
        slackMs: this.options.recoverySlackMs ?? 5_000,
        recentIds: 10_000,
        maxBuffered: 10_000,
        maxAttempts: 5,
        now: Date.now,
        sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
      });
      this.feeds.set(channel, feed);
      this.pusher.subscribe(channel);
    }
    feed.on(event, callback);
    const subscribed = feed;
    return () => {
      if (subscribed.off(event, callback) && this.feeds.get(channel) === subscribed) {
        this.feeds.delete(channel);
        this.auths.delete(channel);
        this.pusher.unsubscribe(channel);
      }
    };
  }

  /** Closes the connection and stops sending; the outbox keeps what is unacknowledged. */
  disconnect(): void {
    globalThis.removeEventListener?.('pagehide', this.pagehide);
    this.publisher.stop();
    this.pusher.disconnect();
  }

  private enqueue(event: SegmentEvent): string {
    if (this.outbox.add(event)) this.publisher.queued();
    return event.messageId;
  }

  private readonly pagehide = (): void => this.publisher.pagehide();

  private stateChanged(state: string): void {
    if (state === 'connected') {
      // pusher-js drops a frame's `id` when it decodes it: read the frames as they arrive.
      this.pusher.connection.connection.transport.bind('message', (message: MessageEvent) =>
        this.frame(message),
      );
      this.connected = true;
      this.publisher.connection(true);
    } else if (state === 'failed') {
      this.connected = false;
      this.publisher.noWebSocket();
    } else if (this.connected) {
      this.connected = false;
      this.publisher.connection(false);
    }
  }

  private frame(message: MessageEvent): void {
    let frame: RawFrame;
    try {
      frame = JSON.parse(String(message.data)) as RawFrame;
    } catch {
      return;
    }
    const { event, channel } = frame;
    if (event === 'switchboard:ack') {
      this.publisher.ack(strings(dataObject(frame.data).messageIds));
    } else if (event === 'switchboard:nack') {
      const { messageIds, reason, retry } = dataObject(frame.data);
      if (String(reason).includes(WEBSOCKET_TRACK_OFF)) {
        this.publisher.noWebSocket(strings(messageIds));
      } else {
        this.publisher.nack(strings(messageIds), String(reason), retry === true);
      }
    } else if (event === 'pusher_internal:subscription_succeeded' && channel) {
      void this.feeds.get(channel)?.subscribed();
    } else if (channel && event && typeof frame.id === 'string' && !event.startsWith('pusher')) {
      const data = typeof frame.data === 'string' ? frame.data : JSON.stringify(frame.data);
      const live: Frame = { id: frame.id, event, data };
      if (frame.user_id !== undefined) live.user_id = frame.user_id;
      this.feeds.get(channel)?.live(live);
    }
  }

  private async authorize(request: {
    socketId: string;
    channelName: string;
  }): Promise<ChannelAuth> {
    if (this.options.authorize) return this.options.authorize(request);
    const endpoint = this.options.authEndpoint ?? '/pusher/auth';
    const response = await fetch(endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...this.options.authHeaders },
      body: new URLSearchParams({ socket_id: request.socketId, channel_name: request.channelName }),
    });
    if (!response.ok) throw new Error(`${endpoint} answered HTTP ${response.status}`);
    return (await response.json()) as ChannelAuth;
  }

  /** One page of the history route; private and presence channels with this socket's auth. */
  private async history(channel: string, after: string): Promise<HistoryAnswer> {
    const query = new URLSearchParams({ after, limit: '1000' });
    const captured = this.auths.get(channel);
    if (captured && captured.socketId === this.pusher.connection.socket_id) {
      query.set('socket_id', captured.socketId);
      query.set('auth', captured.auth.auth);
      if (captured.auth.channel_data !== undefined)
        query.set('channel_data', captured.auth.channel_data);
    }
    const name = channel.replace(SAFE_NAME, encodeURIComponent);
    const url = `${this.base}/app/${encodeURIComponent(this.options.key)}/channels/${name}/events?${query}`;
    try {
      const response = await fetch(url);
      const body = (await response.json().catch(() => null)) as {
        events?: Frame[];
        next?: string | null;
        error?: string;
      } | null;
      if (response.ok && Array.isArray(body?.events)) {
        return { ok: true, events: body.events, next: body.next ?? null };
      }
      return { ok: false, status: response.status, error: body?.error ?? response.statusText };
    } catch (error) {
      return { ok: false, status: 0, error: String(error) };
    }
  }

  private async post(body: string): Promise<{ status: number; body: unknown }> {
    try {
      // text/plain: a simple request, no CORS preflight (the server reads any type as JSON).
      const response = await fetch(`${this.base}/v1/batch`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body,
      });
      return { status: response.status, body: await response.json().catch(() => null) };
    } catch {
      return { status: 0, body: null };
    }
  }
}

export default Switchboard;
