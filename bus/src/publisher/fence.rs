//! The storage fence's way to the persist queue: copies of a fence, published to that queue
//! only (the default exchange, the queue's name as the routing key: no live queue sees them),
//! confirmed, on a channel of its own on the process's shared connection; and the queue's
//! consumer count.
//!
//! A worker that takes a fence from the queue records it once everything delivered to it
//! before is committed. RabbitMQ delivers a queue's messages in order, so once every consumer of
//! the queue has recorded a copy, every message confirmed before the first copy was published
//! is in Postgres — unless a consumer lost its connection meanwhile (its unacked messages are
//! delivered again, perhaps after the copies). ARCHITECTURE.md, "Decisions (history)".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::connector::{self, Link};
use super::{PublishError, PublisherConfig};

/// The AMQP `type` of a fence message; its body is the fence's token (a UUID, as text).
pub const FENCE_MESSAGE_TYPE: &str = "switchboard.fence";

/// Handle to the fence's channel; cheap to clone. The channel closes when every handle is gone.
#[derive(Clone)]
pub struct FencePublisher {
    links: watch::Receiver<Option<Arc<Link>>>,
    connected: Arc<AtomicBool>,
    queue: String,
    config: Arc<PublisherConfig>,
}

impl FencePublisher {
    /// Starts a connector of its own (a channel on `config.broker`'s connection) on `tracker`.
    pub fn spawn(config: PublisherConfig, tracker: &TaskTracker) -> FencePublisher {
        let (links, link) = watch::channel(None);
        let connected = Arc::new(AtomicBool::new(false));
        tracker.spawn(connector::run(config.clone(), links, connected.clone()));
        FencePublisher {
            links: link,
            connected,
            queue: config.topology.persist_queue(),
            config: Arc::new(config),
        }
    }

    /// Whether the connector currently holds an open channel to RabbitMQ.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn link(&self) -> Result<Arc<Link>, PublishError> {
        self.links.borrow().clone().ok_or(PublishError::Unavailable)
    }

    /// Publishes one copy of fence `token` to the persist queue and waits for its confirm
    /// (at most `confirm_timeout`).
    pub async fn publish(&self, token: Uuid) -> Result<(), PublishError> {
        let link = self.link()?;
        let body = token.to_string();
        let attempt = async {
            let confirm = link
                .channel
                .basic_publish(
                    "",
                    &self.queue,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body.as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_type(FENCE_MESSAGE_TYPE.into()),
                )
                .await
                .map_err(|_| PublishError::Unavailable)?;
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Returned),
                Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
                Ok(Confirmation::NotRequested) | Err(_) => Err(PublishError::Timeout),
            }
        };
        let outcome = tokio::time::timeout(self.config.confirm_timeout, attempt)
            .await
            .unwrap_or(Err(PublishError::Timeout));
        match outcome {
            Ok(()) => {}
            // A write or confirm that never completes may be a stuck connection.
            Err(PublishError::Unavailable | PublishError::Timeout) => link.mark_broken(),
            // The broker's answer on a working connection: a new channel declares again.
            Err(PublishError::Nacked | PublishError::Returned) => link.reopen(),
            // Only `Publisher::enqueue` is refused for a full queue; the link is not at fault.
            Err(PublishError::Busy) => {}
        }
        outcome
    }

    /// How many consumers the persist queue has now (a passive declare).
    pub async fn consumers(&self) -> Result<u32, PublishError> {
        let link = self.link()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            self.config.confirm_timeout,
            link.channel
                .queue_declare(&self.queue, passive, FieldTable::default()),
        )
        .await;
        match declared {
            Ok(Ok(queue)) => Ok(queue.consumer_count()),
            // The broker closed the channel (the queue is missing): a new one declares it.
            Ok(Err(_)) => {
                link.reopen();
                Err(PublishError::Unavailable)
            }
            Err(_) => {
                link.mark_broken();
                Err(PublishError::Unavailable)
            }
        }
    }
}
