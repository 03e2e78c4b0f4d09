//! The publishing task: requests → bounded messages → confirms → answers.
//!
//! Every envelope of a request becomes one encoded part in the outbox; messages are cut from the
//! outbox in order, each at most `max_batch_envelopes` parts and `max_message_bytes` bytes, so a
//! request may span several messages and a message may carry several requests. A caller is
//! answered `Ok` when the last message carrying its parts is confirmed, and with the first
//! failure otherwise (all or nothing, from the caller's view).
//!
//! Group commit: a message that is not full goes out only while fewer than
//! `group_commit_in_flight` messages await their confirm. Requests that arrive meanwhile gather
//! in the outbox and share the next message, so concurrent small requests cost RabbitMQ one
//! message per confirm round trip instead of one each; an idle publisher still publishes at once,
//! and full messages go out up to `max_in_flight`.
//!
//! Linger (`linger`, 0 by default): a message that is not full also waits until its oldest
//! envelope has waited that long, so that requests spread out in time — too far apart for group
//! commit to gather them — share messages too, for up to that much latency.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::BasicProperties;
use protocol::envelope::{encode_envelope, join_encoded};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::connector::Link;
use super::{PublishError, PublisherConfig, Request};
use crate::{route_of, shard_key, EVENT_ROUTING_KEY, SHARD_HEADER};

/// How long handing one message's frames to the connection may take. Longer means the
/// connection is stuck: the message is in doubt and the link is replaced, so a dead link holds
/// up the publishing task once, briefly, and never for the whole confirm timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a message whose link broke waits for the next link (within its deadline) before
/// its callers are answered: a blip is bridged by publishing again, an outage answers 503
/// within about a second.
const RECONNECT_GRACE: Duration = Duration::from_secs(1);

pub(super) async fn run(
    config: PublisherConfig,
    mut requests: mpsc::Receiver<Request>,
    mut links: watch::Receiver<Option<Arc<Link>>>,
) {
    let mut outbox = Outbox::new(config);
    let mut open = true;
    let mut connector_alive = true;
    loop {
        outbox.publish_ready().await;
        if !open && outbox.is_idle() {
            break;
        }
        let can_take = open && outbox.can_take();
        let lingers = outbox.lingers_until();
        tokio::select! {
            biased;
            Some((seq, attempt, outcome)) = outbox.waits.next(), if !outbox.waits.is_empty() => {
                outbox.settle(seq, attempt, outcome).await;
            }
            changed = links.changed(), if connector_alive => {
                connector_alive = changed.is_ok();
                let link = links.borrow_and_update().clone();
                outbox.switch_link(link).await;
            }
            // Without a linger the branch is disabled and its sleep never polled.
            () = tokio::time::sleep_until(lingers.unwrap_or_else(Instant::now)), if lingers.is_some() => {}
            request = requests.recv(), if can_take => match request {
                Some(request) => {
                    outbox.take(request);
                    while outbox.wants_more() {
                        match requests.try_recv() {
                            Ok(request) => outbox.take(request),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
        }
    }
}

/// The `BCC` header of a message carrying `parts`: each distinct shard key once.
fn shard_header(parts: &[Part]) -> FieldTable {
    let mut shards: Vec<u16> = parts.iter().map(|part| part.shard).collect();
    shards.sort_unstable();
    shards.dedup();
    let keys = shards
        .into_iter()
        .map(|shard| AMQPValue::LongString(shard_key(shard).into()))
        .collect::<Vec<_>>();
    let mut headers = FieldTable::default();
    headers.insert(
        SHARD_HEADER.into(),
        AMQPValue::FieldArray(FieldArray::from(keys)),
    );
    headers
}

/// One caller waiting for its envelopes to be confirmed.
struct Caller {
    reply: oneshot::Sender<Result<(), PublishError>>,
    /// Envelopes not confirmed yet.
    remaining: usize,
    /// Whether a message with some of its envelopes was handed to RabbitMQ.
    published: bool,
}

/// One encoded envelope waiting to go into a message.
struct Part {
    caller: u64,
    json: Vec<u8>,
    /// Where the envelope's channel is routed (its shard, or every node for a cache channel),
    /// for the message's `BCC` header.
    shard: u16,
    /// When its request was taken, for the linger.
    taken: Instant,
}

/// One AMQP message until its confirm.
struct Message {
    body: Vec<u8>,
    /// The `BCC` header: the keys of the shards of its envelopes, so that only the live queues
    /// of the nodes with subscribers in them receive it.
    headers: FieldTable,
    /// The callers whose envelopes it carries, and how many of each.
    callers: Vec<(u64, usize)>,
    /// Publish attempts so far; outcomes of earlier attempts are stale.
    attempt: u32,
    /// The link of the latest attempt, None while waiting for a link to publish it again.
    generation: Option<u64>,
    first_published: Instant,
    deadline: Instant,
}

enum Outcome {
    Confirmed(Result<Confirmation, lapin::Error>),
    Expired,
}

type Wait = Pin<Box<dyn Future<Output = (u64, u32, Outcome)> + Send>>;

struct Outbox {
    config: PublisherConfig,
    exchange: String,
    link: Option<Arc<Link>>,
    callers: HashMap<u64, Caller>,
    next_caller: u64,
    parts: VecDeque<Part>,
    part_bytes: usize,
    in_flight: BTreeMap<u64, Message>,
    next_seq: u64,
    /// A confirm (or the deadline) for every message in flight.
    waits: FuturesUnordered<Wait>,
}

impl Outbox {
    fn new(config: PublisherConfig) -> Outbox {
        Outbox {
            exchange: config.topology.events_exchange(),
            config,
            link: None,
            callers: HashMap::new(),
            next_caller: 0,
            parts: VecDeque::new(),
            part_bytes: 0,
            in_flight: BTreeMap::new(),
            next_seq: 0,
            waits: FuturesUnordered::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.parts.is_empty() && self.in_flight.is_empty()
    }

    /// Whether to take another request: while the next message has room and may go.
    fn can_take(&self) -> bool {
        self.wants_more() && self.in_flight.len() < self.config.max_in_flight
    }

    /// Whether the outbox holds a full message's worth of parts.
    fn has_full_message(&self) -> bool {
        !self.wants_more()
    }

    /// Whether to gather more of the requests already queued into the coming message.
    fn wants_more(&self) -> bool {
        self.parts.len() < self.config.max_batch_envelopes
            && self.part_bytes < self.config.max_message_bytes
    }

    fn take(&mut self, request: Request) {
        if request.envelopes.is_empty() {
            let _ = request.reply.send(Ok(()));
            return;
        }
        let caller = self.next_caller;
        self.next_caller += 1;
        self.callers.insert(
            caller,
            Caller {
                reply: request.reply,
                remaining: request.envelopes.len(),
                published: false,
            },
        );
        let taken = Instant::now();
        for envelope in &request.envelopes {
            let json = encode_envelope(envelope);
            self.part_bytes += json.len();
            let shard = route_of(&envelope.app_id, &envelope.channel);
            self.parts.push_back(Part {
                caller,
                json,
                shard,
                taken,
            });
        }
    }

    /// Until when the next message, not full, lingers: its oldest part's time plus `linger`,
    /// while that is still to come; None when nothing lingers.
    fn lingers_until(&self) -> Option<Instant> {
        if self.config.linger.is_zero() || self.has_full_message() {
            return None;
        }
        let until = self.parts.front()?.taken + self.config.linger;
        (until > Instant::now()).then_some(until)
    }

    /// Publishes messages cut from the outbox while a link and in-flight room allow (a message
    /// that would not be full waits while `group_commit_in_flight` are in flight, and while it
    /// lingers); without a link, every waiting part fails at once.
    async fn publish_ready(&mut self) {
        while !self.parts.is_empty() {
            let Some(link) = self.link.clone() else {
                while let Some(part) = self.parts.pop_front() {
                    self.fail_caller(part.caller, PublishError::Unavailable);
                }
                self.part_bytes = 0;
                return;
            };
            if self.in_flight.len() >= self.config.max_in_flight
                || (self.in_flight.len() >= self.config.group_commit_in_flight
                    && !self.has_full_message())
                || self.lingers_until().is_some()
            {
                return;
            }
            if let Some(seq) = self.cut_message() {
                self.send(seq, &link).await;
            }
        }
    }

    /// Moves the next message's parts from the outbox into a new message in flight (parts of
    /// callers already answered are dropped); None when only such parts were left.
    fn cut_message(&mut self) -> Option<u64> {
        let (max_parts, max_bytes) = (
            self.config.max_batch_envelopes,
            self.config.max_message_bytes,
        );
        let mut parts: Vec<Part> = Vec::new();
        let mut size = 2; // the brackets
        while let Some(part) = self.parts.front() {
            let len = part.json.len();
            if !self.callers.contains_key(&part.caller) {
                self.part_bytes -= len;
                self.parts.pop_front();
                continue;
            }
            let added = if parts.is_empty() { len } else { len + 1 };
            if !parts.is_empty() && (parts.len() >= max_parts || size + added > max_bytes) {
                break;
            }
            size += added;
            self.part_bytes -= len;
            parts.extend(self.parts.pop_front());
        }
        if parts.is_empty() {
            return None;
        }
        let mut callers: Vec<(u64, usize)> = Vec::new();
        for part in &parts {
            match callers.last_mut() {
                Some((caller, count)) if *caller == part.caller => *count += 1,
                _ => callers.push((part.caller, 1)),
            }
        }
        metrics::histogram!("switchboard_publish_batch_envelopes").record(parts.len() as f64);
        let now = Instant::now();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(
            seq,
            Message {
                body: join_encoded(parts.iter().map(|part| part.json.as_slice())),
                headers: shard_header(&parts),
                callers,
                attempt: 0,
                generation: None,
                first_published: now,
                deadline: now + self.config.confirm_timeout,
            },
        );
        Some(seq)
    }

    /// Publishes message `seq` on `link` (again, if it was published before).
    async fn send(&mut self, seq: u64, link: &Arc<Link>) {
        let Some(message) = self.in_flight.get_mut(&seq) else {
            return;
        };
        if message.deadline <= Instant::now() {
            // Too late to publish again: a write bounded by a past deadline would fail and
            // wrongly condemn a healthy link.
            self.fail(seq, PublishError::Timeout);
            return;
        }
        let first = message.attempt == 0;
        message.attempt += 1;
        message.generation = Some(link.generation);
        let (attempt, deadline) = (message.attempt, message.deadline);
        if !first {
            metrics::counter!("switchboard_publish_republished_total").increment(1);
        }
        let write_deadline = deadline.min(Instant::now() + WRITE_TIMEOUT);
        let published = tokio::time::timeout_at(
            write_deadline,
            link.channel.basic_publish(
                &self.exchange,
                EVENT_ROUTING_KEY,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_headers(message.headers.clone()),
            ),
        )
        .await;
        match published {
            Ok(Ok(confirm)) => {
                self.mark_published(seq);
                self.waits.push(Box::pin(async move {
                    let outcome = match tokio::time::timeout_at(deadline, confirm).await {
                        Ok(confirmed) => Outcome::Confirmed(confirmed),
                        Err(_) => Outcome::Expired,
                    };
                    (seq, attempt, outcome)
                }));
            }
            // lapin checks the channel before sending anything: nothing went out.
            Ok(Err(lapin::Error::InvalidChannelState(_))) if first => {
                self.lose_link(link);
                self.fail(seq, PublishError::Unavailable);
            }
            // Some frames may have gone out: the message is in doubt until a new link confirms it.
            Ok(Err(_)) | Err(_) => {
                self.mark_published(seq);
                self.lose_link(link);
                self.await_link(seq, attempt);
            }
        }
    }

    fn mark_published(&mut self, seq: u64) {
        if let Some(message) = self.in_flight.get(&seq) {
            for (caller, _) in &message.callers {
                if let Some(caller) = self.callers.get_mut(caller) {
                    caller.published = true;
                }
            }
        }
    }

    /// Stops using `link` and tells the connector to replace it.
    fn lose_link(&mut self, link: &Arc<Link>) {
        link.mark_broken();
        if self
            .link
            .as_ref()
            .is_some_and(|current| current.generation == link.generation)
        {
            self.link = None;
        }
    }

    /// Leaves message `seq` waiting for the next link, for [`RECONNECT_GRACE`] at most and
    /// never past its deadline.
    fn await_link(&mut self, seq: u64, attempt: u32) {
        let Some(message) = self.in_flight.get_mut(&seq) else {
            return;
        };
        message.generation = None;
        let expiry = message.deadline.min(Instant::now() + RECONNECT_GRACE);
        self.waits.push(Box::pin(async move {
            tokio::time::sleep_until(expiry).await;
            (seq, attempt, Outcome::Expired)
        }));
    }

    /// Applies the outcome of attempt `attempt` of message `seq`.
    async fn settle(&mut self, seq: u64, attempt: u32, outcome: Outcome) {
        let Some(message) = self.in_flight.get(&seq) else {
            return;
        };
        if message.attempt != attempt {
            return;
        }
        let published_on = message.generation;
        match outcome {
            Outcome::Confirmed(Ok(Confirmation::Ack(None))) => self.succeed(seq),
            Outcome::Confirmed(Ok(Confirmation::Ack(Some(_)))) => {
                self.fail(seq, PublishError::Returned)
            }
            Outcome::Confirmed(Ok(Confirmation::Nack(_))) => {
                // A channel opened while a quorum queue's leader was being elected can keep
                // nacking every message (RabbitMQ 3.10): the next ones go on a fresh channel.
                if let Some(current) = &self.link {
                    if Some(current.generation) == published_on {
                        current.reopen();
                    }
                }
                self.fail(seq, PublishError::Nacked)
            }
            Outcome::Confirmed(Ok(Confirmation::NotRequested)) | Outcome::Expired => {
                self.fail(seq, PublishError::Timeout)
            }
            // The channel or connection failed before the confirm came.
            Outcome::Confirmed(Err(_)) => {
                if let Some(current) = self.link.clone() {
                    if Some(current.generation) == published_on {
                        self.lose_link(&current);
                    }
                }
                self.await_link(seq, attempt);
                if let Some(current) = self.link.clone() {
                    self.send(seq, &current).await;
                }
            }
        }
    }

    /// A new link (or none): every message not confirmed is published again on it, in order.
    async fn switch_link(&mut self, link: Option<Arc<Link>>) {
        self.link = link.clone();
        let Some(link) = link else {
            return;
        };
        let stale: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, message)| message.generation != Some(link.generation))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in stale {
            if self.link.is_none() {
                // The new link failed already; the rest wait for the next one.
                break;
            }
            self.send(seq, &link).await;
        }
    }

    fn succeed(&mut self, seq: u64) {
        let Some(message) = self.in_flight.remove(&seq) else {
            return;
        };
        metrics::histogram!("switchboard_publish_confirm_seconds")
            .record(message.first_published.elapsed().as_secs_f64());
        for (id, count) in message.callers {
            let Some(caller) = self.callers.get_mut(&id) else {
                continue;
            };
            caller.remaining -= count;
            if caller.remaining == 0 {
                if let Some(caller) = self.callers.remove(&id) {
                    let _ = caller.reply.send(Ok(()));
                }
            }
        }
    }

    fn fail(&mut self, seq: u64, error: PublishError) {
        if let Some(message) = self.in_flight.remove(&seq) {
            for (caller, _) in message.callers {
                self.fail_caller(caller, error);
            }
        }
    }

    /// Answers a caller with `error`, unless it was answered already. A caller some of whose
    /// envelopes went out is never told `Unavailable` ("nothing was published").
    fn fail_caller(&mut self, id: u64, error: PublishError) {
        let Some(caller) = self.callers.remove(&id) else {
            return;
        };
        let error = match error {
            PublishError::Unavailable if caller.published => PublishError::Timeout,
            error => error,
        };
        error.count();
        let _ = caller.reply.send(Err(error));
    }
}
