//! The confirmed, batching publisher.
//!
//! Callers hand over the envelopes of one request and wait for the broker's verdict. One task
//! owns the AMQP channel: it gathers every request already queued (natural batching: the busier
//! the gateway, the larger the batches, with no added latency when idle), publishes them as one
//! message with `mandatory`, and answers every caller when the confirm arrives. Confirms are
//! awaited concurrently, so the next batch is published while earlier ones are in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use protocol::envelope::encode_batch;
use protocol::Envelope;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{connect, declare_durable, Backoff, QueueType, Topology, EVENT_ROUTING_KEY};

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub url: String,
    pub topology: Topology,
    pub persist_queue_type: QueueType,
    /// Most envelopes in one AMQP message.
    pub max_batch_envelopes: usize,
    /// Most AMQP messages awaiting their confirm at once.
    pub max_in_flight: usize,
    /// How long to wait for a confirm (a blocked broker) before answering 503.
    pub confirm_timeout: Duration,
}

/// Why envelopes were not confirmed. Every variant means "not accepted": the caller answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("RabbitMQ is unavailable")]
    Unavailable,
    #[error("RabbitMQ did not confirm in time")]
    Timeout,
    #[error("RabbitMQ nacked the message")]
    Nacked,
    #[error("RabbitMQ returned the message: no queue is bound")]
    Returned,
}

impl PublishError {
    fn label(self) -> &'static str {
        match self {
            PublishError::Unavailable => "unavailable",
            PublishError::Timeout => "timeout",
            PublishError::Nacked => "nacked",
            PublishError::Returned => "returned",
        }
    }
}

struct Request {
    envelopes: Vec<Envelope>,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// Handle to the publishing task; cheap to clone. The task ends when every handle is dropped,
/// after the confirms in flight have been answered.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Request>,
    connected: Arc<AtomicBool>,
}

impl Publisher {
    /// Starts the publishing task on `tracker`. It connects in the background and keeps
    /// reconnecting with backoff; until connected, publishes fail with `Unavailable`.
    pub fn spawn(config: PublisherConfig, tracker: &TaskTracker) -> Publisher {
        let (tx, rx) = mpsc::channel(config.max_batch_envelopes.max(64) * 4);
        let connected = Arc::new(AtomicBool::new(false));
        tracker.spawn(run(config, rx, connected.clone(), tracker.clone()));
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
    /// that order. Fails at once when the queue to the publishing task is full.
    pub fn enqueue(&self, envelopes: Vec<Envelope>) -> Result<Pending, PublishError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Request { envelopes, reply })
            .map_err(|_| PublishError::Unavailable)?;
        Ok(Pending(answer))
    }

    /// Whether the task currently holds an open channel to RabbitMQ.
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

struct Link {
    connection: Connection,
    channel: Channel,
}

async fn open(config: &PublisherConfig) -> Result<Link, crate::BusError> {
    let connection = connect(&config.url, "switchboard-publisher").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(crate::BusError::Declare)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(crate::BusError::Declare)?;
    declare_durable(&channel, &config.topology, config.persist_queue_type).await?;
    Ok(Link {
        connection,
        channel,
    })
}

const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);

async fn run(
    config: PublisherConfig,
    mut rx: mpsc::Receiver<Request>,
    connected: Arc<AtomicBool>,
    tracker: TaskTracker,
) {
    let exchange = config.topology.events_exchange();
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let mut link: Option<Link> = None;
    let mut retry = Retry {
        backoff: Backoff::default(),
        at: Instant::now(),
    };
    let mut tick = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    loop {
        let first = tokio::select! {
            request = rx.recv() => match request {
                Some(request) => request,
                None => break,
            },
            _ = tick.tick() => {
                maintain(&config, &mut link, &mut retry, &connected).await;
                continue;
            }
        };
        let mut envelopes = first.envelopes;
        let mut replies = vec![first.reply];
        while envelopes.len() < config.max_batch_envelopes {
            match rx.try_recv() {
                Ok(request) => {
                    envelopes.extend(request.envelopes);
                    replies.push(request.reply);
                }
                Err(_) => break,
            }
        }
        maintain(&config, &mut link, &mut retry, &connected).await;
        let Some(current) = &link else {
            answer(replies, Err(PublishError::Unavailable));
            continue;
        };
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let body = encode_batch(&envelopes);
        metrics::histogram!("switchboard_publish_batch_envelopes").record(envelopes.len() as f64);
        let started = Instant::now();
        let published = current
            .channel
            .basic_publish(
                &exchange,
                EVENT_ROUTING_KEY,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await;
        match published {
            Ok(confirm) => {
                let timeout = config.confirm_timeout;
                tracker.spawn(async move {
                    let outcome = match tokio::time::timeout(timeout, confirm).await {
                        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Returned),
                        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
                        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable),
                        Ok(Err(_)) => Err(PublishError::Unavailable),
                        Err(_) => Err(PublishError::Timeout),
                    };
                    metrics::histogram!("switchboard_publish_confirm_seconds")
                        .record(started.elapsed().as_secs_f64());
                    answer(replies, outcome);
                    drop(permit);
                });
            }
            Err(error) => {
                warn!(%error, "publish failed; reconnecting");
                link = None;
                connected.store(false, Ordering::Relaxed);
                answer(replies, Err(PublishError::Unavailable));
            }
        }
    }
    if let Some(link) = link {
        // Every confirm in flight is answered before the connection goes.
        let _ = in_flight.acquire_many(config.max_in_flight as u32).await;
        let _ = link.connection.close(200, "shutting down").await;
    }
}

fn answer(
    replies: Vec<oneshot::Sender<Result<(), PublishError>>>,
    outcome: Result<(), PublishError>,
) {
    if let Err(error) = outcome {
        metrics::counter!("switchboard_publish_failures_total", "reason" => error.label())
            .increment(replies.len() as u64);
    }
    for reply in replies {
        let _ = reply.send(outcome);
    }
}

/// When the next connection attempt may be made.
struct Retry {
    backoff: Backoff,
    at: Instant,
}

/// Drops a broken link and, when the backoff allows, opens a new one.
async fn maintain(
    config: &PublisherConfig,
    link: &mut Option<Link>,
    retry: &mut Retry,
    connected: &AtomicBool,
) {
    if link
        .as_ref()
        .is_some_and(|l| !l.channel.status().connected())
    {
        warn!("lost the RabbitMQ publishing channel; reconnecting");
        *link = None;
    }
    if link.is_none() && Instant::now() >= retry.at {
        match open(config).await {
            Ok(opened) => {
                info!(endpoint = %crate::redacted_endpoint(&config.url), "publisher connected");
                retry.backoff.reset();
                *link = Some(opened);
            }
            Err(error) => {
                warn!(%error, "publisher cannot connect");
                retry.at = Instant::now() + retry.backoff.next_delay();
            }
        }
    }
    connected.store(link.is_some(), Ordering::Relaxed);
}
