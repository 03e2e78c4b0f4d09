// A TCP proxy on the loopback interface that a test controls, for fault injection: `cut()`
// breaks every connection through it and refuses new ones (accepted, then reset at once) until
// `restore()`. The Node counterpart of the Rust tests' `faults::Proxy`.
import { createServer, connect } from 'node:net';

/**
 * Starts a proxy to `host:port`; resolves with `{port, cut, restore, close, connections}` once it
 * listens. When a test context is given, the proxy is closed when the test ends.
 */
export async function startProxy(t, { host = '127.0.0.1', port }) {
  const pairs = new Set();
  let refusing = false;
  let accepted = 0;
  const server = createServer((client) => {
    if (refusing) {
      client.resetAndDestroy();
      return;
    }
    accepted += 1;
    const upstream = connect({ host, port });
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const proxy = {
    port: server.address().port,
    /** Connections accepted (not refused) so far. */
    get accepted() {
      return accepted;
    },
    /** Connections open through the proxy now. */
    get open() {
      return pairs.size;
    },
    /** Resets every connection through the proxy and refuses new ones until `restore()`. */
    cut() {
      refusing = true;
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      pairs.clear();
    },
    restore() {
      refusing = false;
    },
    async close() {
      proxy.cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  t?.after(() => proxy.close(), { timeout: 30_000 });
  return proxy;
}
