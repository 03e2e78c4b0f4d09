import assert from 'node:assert/strict';
import { beforeEach, afterEach, mock, test } from 'node:test';

import { Outbox } from '../dist/outbox.js';
import { backoff, Publisher } from '../dist/publish.js';
import { MemoryStorage, errorLog, trackEvent } from './support.mjs';

const OPTIONS = {
  writeKey: 'app-key',
  batchSize: 20,
  batchDelayMs: 100,
  maxBatchBytes: 60_000,
  maxInFlight: 8,
  answerTimeoutMs: 15_000,
  httpFallbackMs: 5_000,
};

beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
afterEach(() => mock.timers.reset());

/** A publisher over a transport that records what it was given; `post` answers as `answer` says. */
function setup({ options = {}, answer = () => ({ status: 200, body: { success: true } }) } = {}) {
  const { errors, report } = errorLog();
  const storage = new MemoryStorage();
  const outbox = new Outbox(storage, 'o:', 1000, report);
  const sent = { frames: [], posts: [], beacons: [] };
  const state = { open: true, beaconRoom: Infinity };
  const transport = {
    frame: (batch) => {
      if (!state.open) return false;
      sent.frames.push(structuredClone(batch));
      return true;
    },
    post: async (body) => {
      const parsed = JSON.parse(body);
      sent.posts.push(parsed);
      return answer(parsed);
    },
    beacon: (body) => {
      if (body.length > state.beaconRoom) return false;
      state.beaconRoom -= body.length;
      sent.beacons.push(JSON.parse(body));
      return true;
    },
  };
  const publisher = new Publisher(outbox, transport, { ...OPTIONS, ...options }, report, () =>
    Date.now(),
  );
  const add = (n) => {
    const events = Array.from({ length: n }, (_, i) => trackEvent({ i }));
    for (const event of events) {
      outbox.add(event);
      publisher.queued();
    }
    return events;
  };
  return { publisher, outbox, storage, sent, state, errors, add };
}

const ids = (batch) => batch.map((event) => event.messageId);
/** Lets the microtasks of resolved `post`s run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test('a batch goes within the batch delay, at once when full, each copy with sentAt', () => {
  const { publisher, sent, add } = setup();
  publisher.connection(true);
  mock.timers.tick(0);
  add(3);
  mock.timers.tick(99);
  assert.equal(sent.frames.length, 0);
  mock.timers.tick(1);
  assert.equal(sent.frames.length, 1);
  assert.equal(sent.frames[0].length, 3);
  assert.equal(sent.frames[0][0].sentAt, new Date(1_000_100).toISOString());

  // A full batch goes at once, with what else is queued by then.
  add(45);
  mock.timers.tick(0);
  assert.deepEqual(
    sent.frames.slice(1).map((frame) => frame.length),
    [20, 20, 5],
  );
});

test('acked events leave the outbox; refused ones are reported and leave; retry:true ones go again with the same messageId after a backoff in which nothing is sent', () => {
  const { publisher, outbox, storage, sent, errors, add } = setup();
  publisher.connection(true);
  const events = add(4);
  mock.timers.tick(100);
  const [batch] = sent.frames;
  publisher.ack(ids(batch.slice(0, 2)));
  publisher.nack([events[2].messageId], 'event name is too long', false);
  publisher.nack([events[3].messageId], 'RabbitMQ is unavailable', true);
  assert.deepEqual(
    outbox.all().map((entry) => entry.event.messageId),
    [events[3].messageId],
  );
  assert.equal(storage.length, 1);
  assert.deepEqual(errors, [
    { kind: 'rejected', message: 'event name is too long', messageIds: [events[2].messageId] },
  ]);
  const later = add(1);
  mock.timers.tick(240);
  assert.equal(sent.frames.length, 1, 'nothing before the backoff (0.25 to 0.5 s)');
  mock.timers.tick(300);
  assert.equal(sent.frames.length, 2);
  assert.deepEqual(
    ids(sent.frames[1]),
    [events[3].messageId, later[0].messageId],
    'together, in order',
  );
  assert.equal(sent.frames[1][0].timestamp, events[3].timestamp, 'the same event, sent again');
});

test('the batches in flight refused together count as one refusal', () => {
  const { publisher, sent, add } = setup({ options: { batchSize: 2 } });
  publisher.connection(true);
  add(16);
  mock.timers.tick(0);
  assert.equal(sent.frames.length, 8);
  for (const frame of sent.frames) publisher.nack(ids(frame), 'RabbitMQ is unavailable', true);
  mock.timers.tick(500);
  assert.equal(sent.frames.length, 16, 'all sent again after one backoff of 0.25 to 0.5 s');
});

test('refusals in a row double the backoff; an ack resets it', () => {
  const { publisher, sent, add } = setup();
  publisher.connection(true);
  add(1);
  mock.timers.tick(100);
  const refuse = () => publisher.nack(ids(sent.frames.at(-1)), 'Track rate limit reached', true);
  refuse();
  mock.timers.tick(500);
  assert.equal(sent.frames.length, 2);
  refuse();
  mock.timers.tick(499);
  assert.equal(sent.frames.length, 2, 'the second backoff is 0.5 to 1 s');
  mock.timers.tick(501);
  assert.equal(sent.frames.length, 3);
  publisher.ack(ids(sent.frames.at(-1)));
  add(1);
  mock.timers.tick(100);
  assert.equal(sent.frames.length, 4);
  refuse();
  mock.timers.tick(500);
  assert.equal(sent.frames.length, 5, 'back to 0.25 to 0.5 s after the ack');
});

test('at most maxInFlight batches await their answer; an answer lets the next go', () => {
  const { publisher, sent, add } = setup({ options: { maxInFlight: 2, batchSize: 5 } });
  publisher.connection(true);
  add(20);
  mock.timers.tick(100);
  assert.equal(sent.frames.length, 2);
  publisher.ack(ids(sent.frames[0]));
  assert.equal(sent.frames.length, 2, 'sent from a timer, not inside the ack');
  mock.timers.tick(0);
  assert.equal(sent.frames.length, 3);
});

test('a batch without an answer is sent again after the answer timeout', () => {
  const { publisher, sent, add } = setup();
  publisher.connection(true);
  add(2);
  mock.timers.tick(100);
  mock.timers.tick(15_000);
  assert.equal(sent.frames.length, 1);
  mock.timers.tick(500);
  assert.equal(sent.frames.length, 2);
  assert.deepEqual(ids(sent.frames[1]), ids(sent.frames[0]));
});

test('a lost connection: unanswered batches go again, once, on the next one', () => {
  const { publisher, sent, state, add } = setup();
  publisher.connection(true);
  add(5);
  mock.timers.tick(100);
  state.open = false;
  publisher.connection(false);
  add(2);
  mock.timers.tick(1_000);
  assert.equal(sent.frames.length, 1);
  state.open = true;
  publisher.connection(true);
  mock.timers.tick(0);
  assert.equal(sent.frames.length, 2);
  assert.deepEqual(ids(sent.frames[1]).slice(0, 5), ids(sent.frames[0]));
  assert.equal(sent.frames[1].length, 7);
});

test('no WebSocket for httpFallbackMs: batches go by POST /v1/batch with the write key', async () => {
  const { publisher, outbox, sent, add } = setup();
  add(3);
  mock.timers.tick(4_999);
  assert.equal(sent.posts.length, 0);
  mock.timers.tick(1);
  assert.equal(sent.posts.length, 1);
  assert.equal(sent.posts[0].writeKey, 'app-key');
  assert.equal(sent.posts[0].batch.length, 3);
  assert.ok(sent.posts[0].batch.every((event) => event.sentAt));
  await settle();
  assert.equal(outbox.size, 0);
  assert.equal(sent.frames.length, 0);
  void publisher;
});

test('the WebSocket refusing analytics for good: HTTP at once and from then on, also after a reconnect', async () => {
  const { publisher, outbox, sent, add } = setup();
  publisher.connection(true);
  add(3);
  mock.timers.tick(100);
  publisher.noWebSocket(ids(sent.frames[0]));
  mock.timers.tick(0);
  assert.equal(sent.posts.length, 1);
  assert.deepEqual(ids(sent.posts[0].batch), ids(sent.frames[0]));
  await settle();
  assert.equal(outbox.size, 0);
  publisher.connection(true);
  add(1);
  mock.timers.tick(100);
  assert.equal(sent.frames.length, 1, 'no frame after the refusal');
  assert.equal(sent.posts.length, 2);
});

test('HTTP 400 naming events: those are refused, the rest sent again; 503 and network errors are retried', async () => {
  let calls = 0;
  const { publisher, outbox, sent, errors, add } = setup({
    answer: () => {
      calls += 1;
      if (calls === 1)
        return {
          status: 400,
          body: {
            error: 'invalid',
            errors: [{ index: 1, reason: 'userId or anonymousId is required' }],
          },
        };
      if (calls === 2) return { status: 503, body: { error: 'RabbitMQ is unavailable' } };
      if (calls === 3) return { status: 0, body: null };
      return { status: 200, body: { success: true } };
    },
  });
  publisher.noWebSocket();
  const events = add(3);
  mock.timers.tick(100);
  await settle();
  assert.deepEqual(errors, [
    {
      kind: 'rejected',
      message: 'userId or anonymousId is required',
      messageIds: [events[1].messageId],
    },
  ]);
  mock.timers.tick(0);
  assert.deepEqual(ids(sent.posts[1].batch), [events[0].messageId, events[2].messageId]);
  await settle();
  mock.timers.tick(500);
  await settle();
  assert.equal(sent.posts.length, 3);
  mock.timers.tick(1_000);
  await settle();
  assert.equal(sent.posts.length, 4);
  assert.equal(outbox.size, 0);
  assert.equal(errors.length, 1, '503 and network errors are not reported');
});

test('HTTP 401 (unknown key) is reported and the events are kept', async () => {
  const { publisher, outbox, errors, add } = setup({
    answer: () => ({ status: 401, body: { error: 'unknown write key' } }),
  });
  publisher.noWebSocket();
  add(1);
  mock.timers.tick(100);
  await settle();
  assert.equal(outbox.size, 1);
  assert.equal(errors[0].kind, 'http');
  assert.match(errors[0].message, /HTTP 401: unknown write key/);
});

test('pagehide: everything unacknowledged goes by sendBeacon in chunks of at most 60 KB, and stays queued', () => {
  const { publisher, outbox, sent, add } = setup();
  publisher.connection(true);
  add(3);
  mock.timers.tick(100);
  const big = 'x'.repeat(20_000);
  for (let i = 0; i < 4; i++) {
    outbox.add(trackEvent({ big }));
  }
  publisher.pagehide();
  assert.deepEqual(
    sent.beacons.map((body) => body.batch.length),
    [5, 2],
  );
  assert.ok(sent.beacons.every((body) => body.writeKey === 'app-key'));
  assert.ok(sent.beacons.every((body) => JSON.stringify(body).length <= 60_100));
  assert.ok(sent.beacons.flatMap((body) => body.batch).every((event) => event.sentAt));
  assert.equal(outbox.size, 7);
});

test('pagehide stops at the first beacon the browser refuses', () => {
  const { publisher, sent, state, add } = setup();
  add(3);
  publisher.connection(true);
  state.beaconRoom = 10;
  publisher.pagehide();
  assert.equal(sent.beacons.length, 0);
});

test('backoff doubles from 0.5 s to 30 s, with jitter', () => {
  for (let i = 0; i < 50; i++) {
    const first = backoff(1);
    assert.ok(first >= 250 && first <= 500, `${first}`);
    const fourth = backoff(4);
    assert.ok(fourth >= 2_000 && fourth <= 4_000, `${fourth}`);
    const late = backoff(30);
    assert.ok(late >= 15_000 && late <= 30_000, `${late}`);
  }
});

test('stopped: nothing is sent any more, whatever happens next; the outbox keeps the events', () => {
  const { publisher, outbox, sent, add } = setup();
  publisher.connection(true);
  add(2);
  publisher.stop();
  publisher.connection(false);
  add(1);
  publisher.queued();
  mock.timers.tick(60_000);
  assert.equal(sent.frames.length + sent.posts.length, 0);
  assert.equal(outbox.size, 3);
});
