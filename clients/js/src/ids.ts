// Event ids are UUIDv7s made by the gateway: their first 48 bits are the Unix time in
// milliseconds, so ids compare (as lower-case strings) in the order of their time.

/** The Unix time in milliseconds a UUIDv7 was made at. */
export function idTime(id: string): number {
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}

/** The smallest UUIDv7 of millisecond `ms`: every id made in or after it sorts above. */
export function lowerBound(ms: number): string {
  const hex = Math.max(0, Math.floor(ms)).toString(16).padStart(12, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-7000-8000-000000000000`;
}

/**
 * The ids seen most recently, at most `max` of them. An id is new when it is neither remembered
 * nor at or below the highest id forgotten so far (so an old id cannot come back as new once its
 * entry was dropped to keep the bound).
 */
export class RecentIds {
  private readonly ids = new Set<string>();
  private floor = '';

  constructor(private readonly max: number) {}

  /** Remembers `id`; true when it was new. */
  add(id: string): boolean {
    if (id <= this.floor || this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.max) {
      const oldest = this.ids.values().next().value as string;
      this.ids.delete(oldest);
      if (oldest > this.floor) this.floor = oldest;
    }
    return true;
  }
}

/** A random UUID: `crypto.randomUUID` where the page is a secure context, else built from `getRandomValues`. */
export function randomId(): string {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
