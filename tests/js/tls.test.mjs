// End-to-end over TLS: a second `switchboard serve` with `[gateway.tls]` and `[admin.tls]` set to
// a certificate signed by the CA scripts/e2e.sh made for this run (node trusts it through
// NODE_EXTRA_CA_CERTS). pusher-js with `forceTLS: true` subscribes over wss://, the npm `pusher`
// SDK with `useTLS: true` triggers over https://, and the event arrives.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import {
  config,
  connectClient,
  disconnectAll,
  freePort,
  nextEvent,
  serverClient,
  subscribe,
  startServer,
  trigger,
  uniqueChannel,
} from './helpers.mjs';

after(disconnectAll);

test('pusher-js with forceTLS and the pusher SDK with useTLS against a TLS gateway', { timeout: 90_000 }, async (t) => {
  assert.ok(config.tlsCert && config.tlsKey, 'scripts/e2e.sh passes the test certificate');
  const port = await freePort();
  const adminPort = await freePort();
  const tls = (section) => ({
    [`SWITCHBOARD_${section}__TLS__CERT_PATH`]: config.tlsCert,
    [`SWITCHBOARD_${section}__TLS__KEY_PATH`]: config.tlsKey,
  });
  const server = await startServer(t, {
    port,
    adminPort,
    amqpPrefix: `${config.amqpPrefix}tls`,
    env: { ...tls('GATEWAY'), ...tls('ADMIN') },
    adminTls: true,
  });

  const client = await connectClient(t, { forceTLS: true, wssPort: port });
  const channelName = uniqueChannel('tls');
  const channel = await subscribe(client, channelName);
  const received = nextEvent(channel, 'secure');
  const sdk = serverClient({ port, useTLS: true });
  await trigger(sdk, channelName, 'secure', { over: 'tls' });
  assert.deepEqual(await received, { over: 'tls' });

  // The gateway's page says where the TLS endpoints are.
  const about = await (
    await fetch(`https://${config.host}:${port}/`, { headers: { accept: 'application/json' } })
  ).json();
  assert.equal(about.tls, true);
  assert.equal(about.admin.url, `https://${config.host}:${adminPort}`);

  client.disconnect();
  assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.log());
});
