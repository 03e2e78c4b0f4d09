// A small Pusher protocol 7 client of our own (the console's): it connects, answers the
// server's pings, subscribes with an `authorize(socketId, channel)` callback and hands each
// event to `onEvent`; it reconnects as Pusher clients do (4000–4099: never, 4100–4199: after
// a back-off, anything else: soon).

const MAX_DELAY_MS = 10_000;

export class PusherConnection {
  constructor({ url, channel, authorize, onState, onEvent }) {
    Object.assign(this, { url, channel, authorize, onState, onEvent });
    this.delay = 500;
    this.closed = false;
    this.socket = null;
  }

  connect() {
    this.onState('connecting');
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener('message', (message) => this.receive(message.data));
    socket.addEventListener('close', (event) => this.closedWith(socket, event.code));
  }

  close() {
    this.closed = true;
    this.socket?.close(1000);
  }

  send(event, data, channel) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(channel ? { event, data, channel } : { event, data }));
    }
  }

  async receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const data = typeof frame.data === 'string' ? parse(frame.data) : frame.data;
    switch (frame.event) {
      case 'pusher:connection_established':
        this.delay = 500;
        await this.subscribe(data.socket_id);
        break;
      case 'pusher:ping':
        this.send('pusher:pong', {});
        break;
      case 'pusher_internal:subscription_succeeded':
        this.onState('subscribed');
        break;
      case 'pusher:subscription_error':
        this.onState('refused', data?.error ?? 'the subscription was refused');
        break;
      case 'pusher:error':
        this.onState('error', data?.message ?? 'the server reported an error');
        break;
      default:
        if (frame.channel === this.channel) this.onEvent(frame.event, data);
    }
  }

  async subscribe(socketId) {
    try {
      const auth = await this.authorize(socketId, this.channel);
      this.send('pusher:subscribe', { channel: this.channel, auth });
    } catch (error) {
      this.onState('refused', error.message);
    }
  }

  closedWith(socket, code) {
    if (socket !== this.socket || this.closed) return;
    if (code >= 4000 && code < 4100) {
      this.onState('refused', `closed by the server (${code})`);
      return;
    }
    const wait = code >= 4100 && code < 4200 ? this.delay : 200;
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this.onState('reconnecting');
    setTimeout(() => {
      if (!this.closed) this.connect();
    }, wait);
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
