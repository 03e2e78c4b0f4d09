// Segment-shaped event objects, as `POST /v1/batch` and `switchboard:track` take them.
import { randomId } from './ids.js';
import type { StorageLike } from './outbox.js';

/** This library, as `context.library` names it (the package's version; a test keeps them equal). */
export const LIBRARY = { name: '@switchboard/client', version: '0.1.0' } as const;

/** The server's limit on one event's JSON text (Segment's 32 KB). */
export const MAX_EVENT_BYTES = 32 * 1024;

export type Properties = Record<string, unknown>;

export interface SegmentEvent {
  type: 'track' | 'page' | 'identify';
  messageId: string;
  anonymousId: string;
  userId?: string;
  /** When the call was made (ISO 8601, the browser's clock). */
  timestamp: string;
  /** When this copy was sent (set on each attempt, so the server can correct the clock skew). */
  sentAt?: string;
  event?: string;
  name?: string;
  properties?: Properties;
  traits?: Properties;
  context: Properties;
}

/** `location` and `document` as Segment's `context.page` and `page` properties name them. */
function currentPage(): Properties {
  if (typeof location === 'undefined') return {};
  return {
    path: location.pathname,
    referrer: typeof document === 'undefined' ? '' : document.referrer,
    search: location.search,
    title: typeof document === 'undefined' ? '' : document.title,
    url: location.href,
  };
}

/**
 * Who the events are about: an `anonymousId` made once and kept in `storage`, and the `userId`
 * of the last `identify` (kept there too). Without storage both last as long as the page.
 */
export class Identity {
  readonly anonymousId: string;
  private user: string | null;

  constructor(
    private readonly storage: StorageLike | null,
    private readonly prefix: string,
  ) {
    this.anonymousId = this.read('anonymousId') ?? randomId();
    this.write('anonymousId', this.anonymousId);
    this.user = this.read('userId');
  }

  get userId(): string | null {
    return this.user;
  }

  set userId(userId: string) {
    this.user = userId;
    this.write('userId', userId);
  }

  /** A new event of `type` with `fields`, a fresh `messageId` and the current time and page. */
  event(type: SegmentEvent['type'], fields: Partial<SegmentEvent>): SegmentEvent {
    const event: SegmentEvent = {
      type,
      messageId: randomId(),
      anonymousId: this.anonymousId,
      timestamp: new Date().toISOString(),
      context: { library: { ...LIBRARY }, page: currentPage() },
      ...fields,
    };
    if (this.user !== null) event.userId = this.user;
    return event;
  }

  /** `page` properties: the current page's, overridden by the caller's. */
  pageProperties(properties: Properties): Properties {
    return { ...currentPage(), ...properties };
  }

  private read(name: string): string | null {
    try {
      return this.storage?.getItem(this.prefix + name) ?? null;
    } catch {
      return null;
    }
  }

  private write(name: string, value: string): void {
    try {
      this.storage?.setItem(this.prefix + name, value);
    } catch {
      // Storage full or refused: the value lasts as long as the page.
    }
  }
}
