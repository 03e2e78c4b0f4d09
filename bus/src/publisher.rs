//! The confirmed, batching publisher.
//!
//! Callers hand over the envelopes of one request and wait for the broker's verdict. Two tasks
//! share the work:
//! - the connector ([`connector`]) is the only one that opens its channel: a confirm-mode channel
//!   on the process's shared connection ([`Broker`]), every step under a timeout, replaced with
//!   backoff when it breaks;
//! - the publishing task ([`outbox`]) gathers every request already queued (natural batching:
//!   the busier the gateway, the larger the batches, with no added latency when idle) into
//!   messages bounded by envelope count and encoded bytes — one large request is split over
//!   several messages — publishes them with `mandatory` on the current link, and answers a
//!   caller once every message carrying its envelopes is confirmed. Confirms are awaited
//!   concurrently, so the next message is published while earlier ones are in flight; a message
//!   that is not full waits while `group_commit_in_flight` are (group commit: requests that
//!   arrive during a confirm share the next message).
//!
//! The publishing task never waits for a connection: while there is none, requests fail at once
//! ([`PublishError::Unavailable`], nothing was published). A message whose link broke before its
//! confirm is published again, byte for byte (the same envelope ids, which storage
//! deduplicates), on the next link if one comes within a second, and awaits its confirm until
//! its deadline (`confirm_timeout` after it was first published); otherwise its caller gets
//! [`PublishError::Timeout`].

mod connector;
mod fence;
mod outbox;
mod webhooks;

pub use fence::{FencePublisher, FENCE_MESSAGE_TYPE};
pub use webhooks::WebhookPublisher;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::Envelope;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use crate::{Broker, QueueType, Topology};

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The process's shared connection.
    pub broker: Broker,
    pub topology: Topology,
    pub persist_queue_type: QueueType,
    /// Most envelopes in one AMQP message.
    pub max_batch_envelopes: usize,
    /// Most encoded bytes in one AMQP message; an envelope larger than this travels alone.
    pub max_message_bytes: usize,
    /// Most AMQP messages awaiting their confirm at once.
    pub max_in_flight: usize,
    /// Group commit: a message that is not full is published only while fewer than this many
    /// await their confirm; requests arriving meanwhile share the next message.
    pub group_commit_in_flight: usize,
    /// Linger: a message that is not full waits until its oldest envelope has waited this long
    /// (0: publish at once), so that light, spread-out traffic shares messages. Adds up to this
    /// much to every answer; full messages never wait.
    pub linger: Duration,
    /// How long a message may wait for its confirm, republishing included, before its callers
    /// are answered 503.
    pub confirm_timeout: Duration,
}

/// Why envelopes were not confirmed. Every variant means "not accepted": the caller answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PublishError {
    /// Nothing of the request was handed to RabbitMQ: it is neither stored nor delivered.
    #[error("RabbitMQ is unavailable")]
    Unavailable,
    /// Handed to RabbitMQ (perhaps more than once, on a new connection) without a confirm
    /// within the deadline: the events may still be stored (once) and delivered.
    #[error("RabbitMQ did not confirm in time")]
    Timeout,
    /// RabbitMQ refused a message of the request; other messages of it may have been taken.
    #[error("RabbitMQ nacked the message")]
    Nacked,
    /// No queue is bound to the exchange; other messages of the request may have been taken.
    #[error("RabbitMQ returned the message: no queue is bound")]
    Returned,
    /// The queue to the publishing task was full (the gateway takes events faster than RabbitMQ
    /// confirms them): nothing of the request was handed over; retry later.
    #[error("the gateway's publish queue is full")]
    Busy,
}

impl PublishError {
    const ALL: [PublishError; 5] = [
        PublishError::Unavailable,
        PublishError::Timeout,
        PublishError::Nacked,
        PublishError::Returned,
        PublishError::Busy,
    ];

    /// Counts a failure in `switchboard_publish_failures_total{reason}`.
    fn count(self) {
        metrics::counter!("switchboard_publish_failures_total", "reason" => self.label())
            .increment(1);
    }

    fn label(self) -> &'static str {
        match self {
            PublishError::Unavailable => "unavailable",
            PublishError::Timeout => "timeout",
            PublishError::Nacked => "nacked",
            PublishError::Returned => "returned",
            PublishError::Busy => "busy",
        }
    }
}

struct Request {
    envelopes: Vec<Envelope>,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// Handle to the publishing task; cheap to clone. The tasks end when every handle is dropped,
/// after the messages in flight have been answered.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Request>,
    connected: Arc<AtomicBool>,
}

impl Publisher {
    /// Starts the connector and the publishing task on `tracker`. Until the first connection is
    /// up, publishes fail with `Unavailable`.
    pub fn spawn(config: PublisherConfig, tracker: &TaskTracker) -> Publisher {
        let (tx, rx) = mpsc::channel(config.max_batch_envelopes.max(64) * 4);
        let connected = Arc::new(AtomicBool::new(false));
        let (links, link) = watch::channel(None);
        tracker.spawn(connector::run(config.clone(), links, connected.clone()));
        tracker.spawn(outbox::run(config, rx, link));
        // Exposed at 0 from the start, so a rate over them is defined before the first one.
        for error in PublishError::ALL {
            metrics::counter!("switchboard_publish_failures_total", "reason" => error.label())
                .increment(0);
        }
        metrics::counter!("switchboard_publish_republished_total").increment(0);
        Publisher { tx, connected }
    }

    /// Publishes `envelopes` and resolves once RabbitMQ confirmed all of them.
    pub async fn publish(&self, envelopes: Vec<Envelope>) -> Result<(), PublishError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { envelopes, reply })
            .await
            .map_err(|_| PublishError::Unavailable)?;
        Pending(answer).confirmed().await
    }

    /// Queues `envelopes` now, without waiting: calls made one after the other are published in
    /// that order. Fails at once, with [`PublishError::Busy`] (counted), when the queue to the
    /// publishing task is full.
    pub fn enqueue(&self, envelopes: Vec<Envelope>) -> Result<Pending, PublishError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Request { envelopes, reply })
            .map_err(|error| {
                let refused = match error {
                    mpsc::error::TrySendError::Full(_) => PublishError::Busy,
                    mpsc::error::TrySendError::Closed(_) => PublishError::Unavailable,
                };
                refused.count();
                refused
            })?;
        Ok(Pending(answer))
    }

    /// Whether the connector currently holds an open channel to RabbitMQ.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The broker's answer to an [`Publisher::enqueue`], to await later.
pub struct Pending(oneshot::Receiver<Result<(), PublishError>>);

impl Pending {
    pub async fn confirmed(self) -> Result<(), PublishError> {
        self.0.await.unwrap_or(Err(PublishError::Unavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Vec<Envelope> {
        vec![Envelope::new(
            "app",
            protocol::Source::Api,
            "c",
            "e",
            "{}".into(),
        )]
    }

    #[test]
    fn a_full_queue_is_busy_and_a_gone_task_unavailable() {
        let (tx, rx) = mpsc::channel(1);
        let publisher = Publisher {
            tx,
            connected: Arc::default(),
        };
        assert!(publisher.enqueue(envelope()).is_ok());
        assert_eq!(
            publisher.enqueue(envelope()).err(),
            Some(PublishError::Busy)
        );
        drop(rx);
        assert_eq!(
            publisher.enqueue(envelope()).err(),
            Some(PublishError::Unavailable)
        );
    }
}
