// The web client's browser tests' harness: a site (a Node HTTP server of the test) serving the
// test page, the built client (clients/js/dist) and pusher-js from the client's node_modules,
// plus an auth endpoint that signs subscriptions with the app's secret; a server of the test's
// own (its own database, its RabbitMQ connection through a proxy the test controls); and pages
// in Debian's headless Chromium.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';

import { apps, config, freePort, serverClient, startServer, waitUntil } from '../helpers.mjs';
import { startProxy } from '../proxy.mjs';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const CLIENT = here('../../../clients/js/');

/** Cleanups fail (and say so) rather than hang the suite. */
const CLEANUP = { timeout: 30_000 };

const FILES = {
  '/': ['page.html', 'text/html'],
  '/page.mjs': ['page.mjs', 'text/javascript'],
  '/switchboard.min.js': [`${CLIENT}dist/switchboard.min.js`, 'text/javascript'],
  '/pusher.js': [`${CLIENT}node_modules/pusher-js/dist/web/pusher.js`, 'text/javascript'],
};

/** Runs `sql` with psql against `databaseUrl`; returns the unaligned rows. */
export function query(databaseUrl, sql) {
  return execFileSync('psql', ['-w', databaseUrl, '-v', 'ON_ERROR_STOP=1', '-tAc', sql], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 20_000,
  })
    .split('\n')
    .filter((line) => line !== '');
}

/**
 * Serves the test page and the auth endpoint on a free loopback port. `authCalls` counts the
 * auth endpoint's answers per channel. Closed when the test ends.
 */
export async function startSite(t, { app = apps.dev } = {}) {
  for (const [file] of Object.values(FILES)) {
    const path = file.startsWith('/') ? file : here(file);
    assert.ok(existsSync(path), `${path} is missing: run scripts/client-js.sh first`);
  }
  const sdk = serverClient({ app });
  const authCalls = new Map();
  const server = createServer((request, response) => {
    const url = new URL(request.url, 'http://site');
    if (request.method === 'POST' && url.pathname === '/pusher/auth') {
      let body = '';
      request.on('data', (chunk) => (body += chunk));
      request.on('end', () => {
        const form = new URLSearchParams(body);
        const channel = form.get('channel_name');
        const user = { user_id: 'web-client-user', user_info: { name: 'Test' } };
        const signed = sdk.authorizeChannel(
          form.get('socket_id'),
          channel,
          channel.startsWith('presence-') ? user : undefined,
        );
        authCalls.set(channel, (authCalls.get(channel) ?? 0) + 1);
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify(signed));
      });
      return;
    }
    if (url.pathname === '/pusher-js.mjs') {
      response.writeHead(200, { 'content-type': 'text/javascript' });
      response.end('export default globalThis.Pusher;\n');
      return;
    }
    const served = FILES[url.pathname];
    if (!served) {
      response.writeHead(404).end();
      return;
    }
    const [file, type] = served;
    response.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
    response.end(readFileSync(file.startsWith('/') ? file : here(file)));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections(); // the browser's keep-alive connections
      }),
    CLEANUP,
  );
  return { origin: `http://127.0.0.1:${server.address().port}`, authCalls };
}

/**
 * Opens the test page in a new browser context, with a client made from `options` (Switchboard
 * options: `port` at least; key and host default to the development app's and 127.0.0.1), and
 * waits until it is loaded. `withoutWebSocket` removes the browser's WebSocket first. Uncaught
 * page errors fail the test when it ends.
 */
export async function openPage(t, browser, site, options, { withoutWebSocket = false } = {}) {
  const context = await browser.newContext();
  t.after(() => context.close(), CLEANUP);
  const page = await context.newPage();
  if (withoutWebSocket) await page.addInitScript(() => delete window.WebSocket);
  const uncaught = [];
  page.on('pageerror', (error) => uncaught.push(error.message));
  t.after(() => assert.deepEqual(uncaught, [], 'no uncaught error in the page'));
  const clientOptions = { key: apps.dev.key, host: config.host, ...options };
  await load(page, `${site.origin}/?config=${encodeURIComponent(JSON.stringify(clientOptions))}`);
  return page;
}

/** Loads the test page (by default: again) and waits for its client. */
export async function load(page, url = page.url()) {
  await page.goto(url);
  await page.waitForFunction(() => window.sb !== undefined, null, { timeout: 10_000 });
}

/** Waits until the page's pusher-js connection is in `state`. */
export async function waitState(page, state, ms = 20_000) {
  await page.waitForFunction((wanted) => window.sb.pusher.connection.state === wanted, state, {
    timeout: ms,
  });
}

/** What the page's client delivered on `channel`: `[{data, id, replayed}]` in order. */
export function received(page, channel) {
  return page.evaluate((name) => window.log.received[name] ?? [], channel);
}

/** Waits until the page delivered at least `count` events on `channel`; returns them. */
export async function waitReceived(page, channel, count, ms = 30_000) {
  let got = [];
  await waitUntil(
    async () => {
      got = await received(page, channel);
      return got.length >= count;
    },
    ms,
    () => `${got.length} of ${count} events delivered on ${channel}`,
    100,
  );
  return got;
}

/**
 * Starts a `switchboard serve` of the test's own: a database of its own (the server creates it;
 * its rows are the test's alone), its own AMQP prefix, and its RabbitMQ connection through a
 * proxy (`amqp`) the test can cut. `env` adds configuration, `apps` TOML after tests/e2e.toml's.
 * When the test ends the server is stopped (killed if SIGTERM does not stop it), then the proxy
 * closed (a server without its broker cannot shut down cleanly) and the database dropped.
 * Resolves with `{server, amqp, databaseUrl, port}`.
 */
export async function startOwnServer(t, { env = {}, apps: moreApps = '' } = {}) {
  const directory = mkdtempSync(join(tmpdir(), 'switchboard-web-client-'));
  const configFile = join(directory, 'switchboard.toml');
  writeFileSync(configFile, `${readFileSync(config.serverConfig, 'utf8')}\n${moreApps}`);
  t.after(() => rmSync(directory, { recursive: true, force: true }), CLEANUP);
  const broker = new URL(config.amqpUrl);
  const amqp = await startProxy(null, { host: broker.hostname, port: Number(broker.port || 5672) });
  const viaProxy = new URL(config.amqpUrl);
  viaProxy.port = String(amqp.port);
  const name = `switchboard_webclient_${randomBytes(6).toString('hex')}`;
  const database = new URL(config.databaseUrl);
  database.pathname = `/${name}`;
  const admin = new URL(config.databaseUrl);
  admin.pathname = '/postgres';
  const port = await freePort();
  let server;
  t.after(async () => {
    amqp.restore();
    if (server?.running()) {
      try {
        await server.stop();
      } catch {
        server.child.kill('SIGKILL');
        await server.exited;
      }
    }
    await amqp.close();
    query(admin.href, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  }, CLEANUP);
  server = await startServer(null, {
    port,
    adminPort: await freePort(),
    amqpPrefix: `${config.amqpPrefix}wc${randomBytes(3).toString('hex')}`,
    env: { AMQP_URL: viaProxy.href, DATABASE_URL: database.href, ...env },
    configFile,
  });
  return { server, amqp, databaseUrl: database.href, port };
}
