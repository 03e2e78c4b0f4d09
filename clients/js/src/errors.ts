/**
 * What the client tells the app through `onError`:
 * - `rejected`: the server refused these events for good (a nack with `retry: false`, or an
 *   HTTP 400 naming them); they were removed from the outbox.
 * - `dropped`: the client gave these events up: the outbox was full (the oldest go first), or an
 *   event was over the server's 32 KB limit (never queued).
 * - `storage`: the outbox could not write to storage (quota); the events stay in memory only.
 * - `http`: `POST /v1/batch` failed in a way that a retry will not fix by itself (a 4xx
 *   other than 400/429, e.g. an unknown key); the events stay queued and are tried again.
 */
export interface SwitchboardError {
  kind: 'rejected' | 'dropped' | 'storage' | 'http';
  message: string;
  messageIds: string[];
}

export type ErrorHandler = (error: SwitchboardError) => void;
