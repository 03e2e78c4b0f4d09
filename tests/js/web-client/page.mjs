// The test page: the built client (dist/switchboard.min.js) as an app would use it, configured by
// the `config` query parameter (JSON of Switchboard options), with what it reports kept in
// `window.log` for the test to read.
import { Switchboard } from '/switchboard.min.js';

const config = JSON.parse(new URLSearchParams(location.search).get('config'));
const log = { errors: [], gaps: [], nacks: [], received: {} };
window.log = log;

const sb = new Switchboard({
  ...config,
  authEndpoint: '/pusher/auth',
  onError: (error) => log.errors.push(error),
  onGap: (gap) => log.gaps.push(gap),
});
sb.pusher.connection.bind('message', (message) => {
  if (message.event === 'switchboard:nack') log.nacks.push(message.data);
});

/** Subscribes to `event` on `channel`, gathering each delivery in `log.received[channel]`. */
window.collect = (channel, event) => {
  const list = (log.received[channel] ??= []);
  sb.subscribe(channel, event, (data, delivery) =>
    list.push({ data, id: delivery.id, replayed: delivery.replayed }),
  );
};
window.sb = sb;
