// Shared setup for the end-to-end suites: configuration from the environment, real pusher-js
// clients, the official `pusher` server SDK, waiting helpers and a psql query helper.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

export { sleep };

export const config = {
  host: process.env.SWITCHBOARD_HOST ?? '127.0.0.1',
  port: Number(process.env.SWITCHBOARD_PORT ?? 6001),
  adminPort: Number(process.env.SWITCHBOARD_ADMIN_PORT ?? 9601),
  databaseUrl: process.env.SWITCHBOARD_DATABASE_URL ?? '',
  appId: process.env.SWITCHBOARD_APP_ID ?? 'app-id',
  key: process.env.SWITCHBOARD_APP_KEY ?? 'app-key',
  secret: process.env.SWITCHBOARD_APP_SECRET ?? 'app-secret',
};

const CHANNEL_NAME = /^[A-Za-z0-9_\-=@,.;]+$/;

/** A channel name unique to this run and call, so tests never see each other's events. */
export function uniqueChannel(prefix = 'e2e') {
  return `${prefix}-${Date.now()}-${randomBytes(6).toString('hex')}`;
}

/** Runs `promise` but rejects with `message` if it has not settled within `ms`. */
export async function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} (after ${ms} ms)`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` until it returns a truthy value (which is returned) or `ms` elapse; `message`
 * (a string, or a function called at the time of failure) describes the failure.
 */
export async function waitUntil(check, ms, message, intervalMs = 100) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() >= deadline) {
      const text = typeof message === 'function' ? message() : message;
      throw new Error(`${text} (after ${ms} ms)`);
    }
    await sleep(intervalMs);
  }
}

const openClients = new Set();

/** Disconnects every pusher-js client this module created that is still open. */
export function disconnectAll() {
  for (const client of openClients) client.disconnect();
  openClients.clear();
}

function disconnect(client) {
  client.disconnect();
  openClients.delete(client);
}

/**
 * Opens a pusher-js client (the Node build) and resolves once it is `connected`. When a test
 * context is given, the client is disconnected when that test ends, pass or fail.
 */
export async function connectClient(t, options = {}) {
  const client = new PusherClient(config.key, {
    cluster: 'local',
    wsHost: config.host,
    wsPort: config.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    ...options,
  });
  openClients.add(client);
  t?.after(() => disconnect(client));
  const connected = new Promise((resolve, reject) => {
    client.connection.bind('connected', resolve);
    client.connection.bind('failed', () => reject(new Error('pusher-js connection failed')));
    client.connection.bind('unavailable', () =>
      reject(new Error(`server unavailable at ws://${config.host}:${config.port}`)),
    );
    client.connection.bind('error', (error) =>
      reject(new Error(`pusher-js connection error: ${JSON.stringify(error)}`)),
    );
  });
  try {
    await withTimeout(connected, 10_000, 'pusher-js did not connect');
  } catch (error) {
    disconnect(client);
    throw error;
  }
  return client;
}

/** Subscribes `client` to `channelName` and resolves with the channel once the server confirmed. */
export async function subscribe(client, channelName) {
  const channel = client.subscribe(channelName);
  const succeeded = new Promise((resolve, reject) => {
    channel.bind('pusher:subscription_succeeded', () => resolve(channel));
    channel.bind('pusher:subscription_error', (error) =>
      reject(new Error(`subscription to ${channelName} failed: ${JSON.stringify(error)}`)),
    );
  });
  return withTimeout(succeeded, 10_000, `no pusher:subscription_succeeded for ${channelName}`);
}

/**
 * Resolves with the data of the next `eventName` the channel receives. Call it before the event
 * is triggered.
 */
export function nextEvent(channel, eventName, ms = 5_000) {
  let handler;
  const received = new Promise((resolve) => {
    handler = resolve;
    channel.bind(eventName, handler);
  });
  return withTimeout(received, ms, `${eventName} not received on ${channel.name}`).finally(() =>
    channel.unbind(eventName, handler),
  );
}

/** Collects the data of every `eventName` the channel receives, in arrival order. */
export function collectEvents(channel, eventName) {
  const events = [];
  channel.bind(eventName, (data) => events.push(data));
  return events;
}

/**
 * Records every non-protocol frame the client's connection receives for `channelName`, whether
 * or not pusher-js still has the channel subscribed: what the server sent, not what the library
 * chose to pass on.
 */
export function recordFrames(client, channelName) {
  const frames = [];
  client.connection.bind('message', (message) => {
    if (message.channel === channelName && !message.event.startsWith('pusher')) {
      frames.push(message);
    }
  });
  return frames;
}

/**
 * A `pusher:ping` / `pusher:pong` round trip on the client's socket. The server handles one
 * socket's frames in order, so once the pong is back every frame sent before it was processed.
 */
export async function roundTrip(client) {
  const pong = new Promise((resolve) => {
    const handler = (message) => {
      if (message.event === 'pusher:pong') {
        client.connection.unbind('message', handler);
        resolve();
      }
    };
    client.connection.bind('message', handler);
  });
  client.send_event('pusher:ping', {});
  await withTimeout(pong, 5_000, 'no pusher:pong for pusher:ping');
}

/** The official Node server SDK pointed at Switchboard. */
export function serverClient(overrides = {}) {
  return new PusherServer({
    appId: config.appId,
    key: config.key,
    secret: config.secret,
    host: config.host,
    port: config.port,
    useTLS: false,
    timeout: 10_000,
    ...overrides,
  });
}

/** A readable message for a `pusher` SDK RequestError: status and body, or the network cause. */
export function describeRequestError(error) {
  if (error?.name !== 'PusherRequestError') return String(error?.stack ?? error);
  if (error.status !== undefined) {
    return `${error.message}: HTTP ${error.status}, body ${JSON.stringify(error.body)}`;
  }
  return `${error.message}: ${error.error?.message ?? error.error}`;
}

/** `sdk.trigger(...)`, failing with the response status and body when the SDK rejects. */
export async function trigger(sdk, ...args) {
  try {
    return await sdk.trigger(...args);
  } catch (error) {
    throw new Error(`trigger failed: ${describeRequestError(error)}`, { cause: error });
  }
}

/** Quotes a channel name for SQL; names are restricted to a safe alphabet, checked here. */
export function sqlChannel(channelName) {
  if (!CHANNEL_NAME.test(channelName)) throw new Error(`unsafe channel name ${channelName}`);
  return `'${channelName}'`;
}

/** Runs one SQL statement with psql against the server's database; returns the unaligned rows. */
export function psql(sql) {
  if (!config.databaseUrl) throw new Error('SWITCHBOARD_DATABASE_URL is not set');
  return execFileSync('psql', [config.databaseUrl, '-v', 'ON_ERROR_STOP=1', '-tAc', sql], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  })
    .split('\n')
    .filter((line) => line !== '');
}
