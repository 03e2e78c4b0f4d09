// Shared setup for the end-to-end suites: configuration from the environment, real pusher-js
// clients, the official `pusher` server SDK signing channel and user auth as a backend's auth
// endpoint would, waiting and recording helpers, a psql query helper and extra server processes.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
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
  amqpUrl: process.env.SWITCHBOARD_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f',
  amqpPrefix: process.env.SWITCHBOARD_E2E_AMQP_PREFIX ?? 'e2e',
  serverBin: process.env.SWITCHBOARD_BIN ?? 'target/debug/switchboard',
  serverConfig: process.env.SWITCHBOARD_CONFIG ?? 'tests/e2e.toml',
  /** A certificate and key for 127.0.0.1 / localhost, signed by the CA scripts/e2e.sh made for
   * this run and passed to node as NODE_EXTRA_CA_CERTS. */
  tlsCert: process.env.SWITCHBOARD_E2E_TLS_CERT ?? '',
  tlsKey: process.env.SWITCHBOARD_E2E_TLS_KEY ?? '',
  /** The dashboard's password (`[admin] password` in tests/e2e.toml; HTTP Basic user `admin`). */
  dashboardPassword: process.env.SWITCHBOARD_DASHBOARD_PASSWORD ?? 'e2e-dashboard-password',
  /** Where the dashboard suite saves its screenshots. */
  screenshots: process.env.SWITCHBOARD_SCREENSHOTS ?? 'target/dashboard-screenshots',
};

function appFromEnv(name, id, key, secret) {
  const env = (field, fallback) => process.env[`SWITCHBOARD_${name}_APP_${field}`] ?? fallback;
  return { id: env('ID', id), key: env('KEY', key), secret: env('SECRET', secret) };
}

/** The apps of tests/e2e.toml (scripts/e2e.sh exports their credentials). */
export const apps = {
  /** The development app, client events on. */
  dev: { id: config.appId, key: config.key, secret: config.secret },
  /** `subscription_count = true`. */
  subscriptionCount: appFromEnv('SUBCOUNT', 'subcount-id', 'subcount-key', 'subcount-secret'),
  /** Client events off. */
  quiet: appFromEnv('QUIET', 'quiet-id', 'quiet-key', 'quiet-secret'),
  /** `enabled = false`. */
  disabled: appFromEnv('DISABLED', 'disabled-id', 'disabled-key', 'disabled-secret'),
  /** The dashboard suite's own app (`max_connections = 50`). */
  dashboard: appFromEnv('DASHBOARD', 'dashboard-id', 'dashboard-key', 'dashboard-secret'),
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

/** The pusher-js options that point a client at Switchboard. */
export function clientOptions(options = {}) {
  return {
    cluster: 'local', // required by pusher-js, ignored by Switchboard
    wsHost: config.host,
    wsPort: config.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    ...options,
  };
}

/**
 * Registers a pusher-js client (one this module did not create, e.g. Laravel Echo's) to be
 * disconnected when the test `t` ends, or by `disconnectAll`.
 */
export function trackClient(t, client) {
  openClients.add(client);
  t?.after(() => disconnect(client));
  return client;
}

/**
 * Creates a pusher-js client (the Node build) for `app` (default: the development app) without
 * waiting for it to connect. When a test context is given, the client is disconnected when that
 * test ends, pass or fail.
 */
export function createClient(t, { app = apps.dev, ...options } = {}) {
  return trackClient(t, new PusherClient(app.key, clientOptions(options)));
}

/**
 * Opens a pusher-js client (the Node build) and resolves once it is `connected`. When a test
 * context is given, the client is disconnected when that test ends, pass or fail. `options` are
 * pusher-js options, plus `app` (default: the development app).
 */
export async function connectClient(t, options = {}) {
  const client = createClient(t, options);
  await waitConnected(client);
  return client;
}

/** Resolves once `client` is `connected`; rejects (and disconnects it) when it fails to. */
export async function waitConnected(client) {
  if (client.connection.state === 'connected') return client;
  const connected = new Promise((resolve, reject) => {
    client.connection.bind('connected', resolve);
    client.connection.bind('failed', () => reject(new Error('pusher-js connection failed')));
    client.connection.bind('unavailable', () =>
      reject(
        new Error(`server unavailable at ws://${client.config.wsHost}:${client.config.wsPort}`),
      ),
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

/**
 * Signs private and presence subscriptions locally with the server SDK `sdk`, as a backend's
 * auth endpoint would (`channelAuthorization` option of pusher-js). `user` (`{user_id,
 * user_info}`) is the presence identity. An SDK built with the wrong secret signs badly.
 */
export function channelAuthorization(sdk = serverClient(), { user } = {}) {
  return {
    customHandler: ({ socketId, channelName }, callback) => {
      let response;
      try {
        const presence = channelName.startsWith('presence-') ? user : undefined;
        response = sdk.authorizeChannel(socketId, channelName, presence);
      } catch (error) {
        callback(error, null);
        return;
      }
      callback(null, response);
    },
  };
}

/** Signs `pusher.signin()` locally with the server SDK (`userAuthentication` option). */
export function userAuthentication(sdk, userData) {
  return {
    customHandler: ({ socketId }, callback) => {
      let response;
      try {
        response = sdk.authenticateUser(socketId, userData);
      } catch (error) {
        callback(error, null);
        return;
      }
      callback(null, response);
    },
  };
}

/**
 * `client.signin()`, resolving once the server confirmed it (`pusher:signin_success`) and
 * pusher-js's automatic `#server-to-user-{id}` subscription succeeded.
 */
export async function signIn(client) {
  client.signin();
  await waitUntil(
    () => client.user.user_data && client.user.serverToUserChannel?.subscribed,
    10_000,
    () =>
      `sign-in not complete: user_data ${JSON.stringify(client.user.user_data)}, ` +
      `#server-to-user subscribed: ${client.user.serverToUserChannel?.subscribed}`,
  );
  return client.user.user_data;
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
 * Connects a pusher-js client as presence user `user` (`{user_id, user_info}`) and subscribes it
 * to `channelName`; resolves with `{client, channel}`.
 */
export async function joinPresence(t, channelName, user, sdk = serverClient()) {
  const client = await connectClient(t, {
    channelAuthorization: channelAuthorization(sdk, { user }),
  });
  return { client, channel: await subscribe(client, channelName) };
}

/**
 * Subscribes `client` to `channelName` and resolves with the `pusher:subscription_error` data
 * pusher-js emits; rejects if the subscription succeeds instead.
 */
export async function subscriptionError(client, channelName) {
  const channel = client.subscribe(channelName);
  const failed = new Promise((resolve, reject) => {
    channel.bind('pusher:subscription_error', resolve);
    channel.bind('pusher:subscription_succeeded', () =>
      reject(new Error(`subscription to ${channelName} succeeded, expected an error`)),
    );
  });
  return withTimeout(failed, 10_000, `no pusher:subscription_error for ${channelName}`);
}

/**
 * Resolves with `{data, metadata}` of the next `eventName` that `emitter` (a pusher-js channel,
 * `client.user` or `client.user.watchlist`) emits. Call it before the event is triggered.
 */
export function nextEmit(emitter, eventName, ms = 5_000) {
  let handler;
  const received = new Promise((resolve) => {
    handler = (data, metadata) => resolve({ data, metadata });
    emitter.bind(eventName, handler);
  });
  const where = emitter.name ?? emitter.constructor?.name ?? 'the emitter';
  return withTimeout(received, ms, `${eventName} not received on ${where}`).finally(() =>
    emitter.unbind(eventName, handler),
  );
}

/**
 * Resolves with the data of the next `eventName` the channel receives. Call it before the event
 * is triggered.
 */
export async function nextEvent(channel, eventName, ms = 5_000) {
  return (await nextEmit(channel, eventName, ms)).data;
}

/** Collects the data of every `eventName` the channel receives, in arrival order. */
export function collectEvents(channel, eventName) {
  const events = [];
  channel.bind(eventName, (data) => events.push(data));
  return events;
}

/**
 * Records every frame the client's connection receives for `channelName` (by default without the
 * `pusher:*` / `pusher_internal:*` ones), whether or not pusher-js still has the channel
 * subscribed: what the server sent, not what the library chose to pass on.
 */
export function recordFrames(client, channelName, { internal = false } = {}) {
  const frames = [];
  client.connection.bind('message', (message) => {
    if (message.channel === channelName && (internal || !message.event.startsWith('pusher'))) {
      frames.push(message);
    }
  });
  return frames;
}

/**
 * Records the errors pusher-js's connection emits: `pusher:error` frames and close codes (see
 * `errorCodes`).
 */
export function recordErrors(client) {
  const errors = [];
  client.connection.bind('error', (error) => errors.push(error));
  return errors;
}

/**
 * The Pusher codes in recorded connection errors: `{type: 'PusherError', data: {code}}` for a
 * `pusher:error` frame or a close code, wrapped in `{type: 'WebSocketError', error}` when it
 * ends the connection or the handshake.
 */
export function errorCodes(errors) {
  return errors
    .map((error) => error?.data?.code ?? error?.error?.data?.code)
    .filter((code) => code !== undefined && code !== null);
}

/** Records the client's connection states as they change. */
export function recordStates(client) {
  const states = [];
  client.connection.bind('state_change', ({ current }) => states.push(current));
  return states;
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

/**
 * The official Node server SDK pointed at Switchboard; `app` (default: the development app) and
 * any SDK option can be overridden.
 */
export function serverClient({ app = apps.dev, ...overrides } = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
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

/** Reads the response body of a `pusher` SDK call as JSON, asserting HTTP 200 first. */
export async function jsonBody(responsePromise) {
  let response;
  try {
    response = await responsePromise;
  } catch (error) {
    throw new Error(`request failed: ${describeRequestError(error)}`, { cause: error });
  }
  const text = await response.text();
  if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${text}`);
  return JSON.parse(text);
}

/** A TCP port on the loopback interface that was free a moment ago. */
export async function freePort() {
  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Starts another `switchboard serve` (the binary and apps scripts/e2e.sh uses) on `port` /
 * `adminPort` with the same database and RabbitMQ vhost but its own AMQP prefix, and resolves
 * once `/ready` answers 200. The returned handle's `stop()` sends SIGTERM and resolves with the
 * exit `{code, signal}`; when a test context is given, a server still running when the test ends
 * is killed. `env` adds configuration variables; `adminTls` makes `/ready` be asked over https
 * (trusted through NODE_EXTRA_CA_CERTS); `configFile` replaces tests/e2e.toml.
 */
export async function startServer(
  t,
  { port, adminPort, amqpPrefix, env: extra = {}, adminTls = false, configFile = config.serverConfig },
) {
  // `switchboard` reads every SWITCHBOARD_* variable as config: pass on none of the tests' own.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('SWITCHBOARD_')),
  );
  Object.assign(env, {
    DATABASE_URL: config.databaseUrl,
    AMQP_URL: config.amqpUrl,
    SWITCHBOARD_BIND: `${config.host}:${port}`,
    SWITCHBOARD_ADMIN_BIND: `${config.host}:${adminPort}`,
    SWITCHBOARD_AMQP_PREFIX: amqpPrefix,
    RUST_LOG: 'info',
    ...extra,
  });
  const child = spawn(config.serverBin, ['serve', '--config', configFile], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = [];
  const keep = (chunk) => {
    output.push(chunk.toString());
    if (output.length > 400) output.splice(0, output.length - 400);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', (error) => resolve({ code: null, signal: null, error }));
  });
  const log = () => output.join('').split('\n').slice(-60).join('\n');
  const server = {
    port,
    adminPort,
    child,
    exited,
    log,
    running: () => child.exitCode === null && child.signalCode === null,
    async stop() {
      if (server.running()) child.kill('SIGTERM');
      return withTimeout(exited, 15_000, `switchboard on port ${port} did not exit on SIGTERM`);
    },
  };
  t?.after(async () => {
    if (server.running()) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  await waitUntil(
    async () => {
      if (!server.running()) throw new Error(`switchboard exited before it was ready:\n${log()}`);
      try {
        const scheme = adminTls ? 'https' : 'http';
        const response = await fetch(`${scheme}://${config.host}:${adminPort}/ready`);
        return response.ok;
      } catch {
        return false;
      }
    },
    60_000,
    () => `switchboard on port ${port} not ready:\n${log()}`,
    100,
  );
  return server;
}
