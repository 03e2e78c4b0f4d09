//! The webhook publisher: the gateway's webhook events → `<prefix>.webhooks`, confirmed.
//!
//! A bounded buffer sits in front ([`WebhookPublisher::send`] never waits): when it is full the
//! newest event is dropped and counted (`switchboard_webhook_events_dropped_total{reason=
//! "buffer_full"}`), so a broker outage costs the gateway memory up to the bound and nothing
//! else. The task takes what is buffered into one message (a JSON array of
//! [`protocol::webhook::Queued`]) and publishes it with `mandatory`, on a channel of its own on
//! the process's shared connection, until RabbitMQ confirms it:
//! while the broker is unreachable, nacks or returns it, the same bytes are published again
//! with backoff, so no buffered event is lost silently. Only once shutdown has begun does it give
//! up (at its next failed attempt), counting what it drops with `reason="shutdown"`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use protocol::envelope::join_encoded;
use protocol::webhook::Queued;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::connector::{self, Link};
use super::PublisherConfig;
use crate::Backoff;

/// Most events in one message.
const MAX_MESSAGE_EVENTS: usize = 1000;

/// Handle to the webhook publishing task; cheap to clone. The task ends when every handle is
/// gone and what they sent is published (at shutdown, when publishing fails, at once).
#[derive(Clone)]
pub struct WebhookPublisher {
    tx: mpsc::Sender<Queued>,
    /// Set while the buffer refuses events, so that the first drop is logged once.
    full: Arc<AtomicBool>,
}

impl WebhookPublisher {
    /// Starts a connector (a channel of its own) and the publishing task on `tracker`, with a buffer of
    /// `buffer` events.
    pub fn spawn(
        config: PublisherConfig,
        buffer: usize,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> WebhookPublisher {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let full = Arc::new(AtomicBool::new(false));
        let (links, link) = watch::channel(None);
        tracker.spawn(connector::run(
            config.clone(),
            links,
            Arc::new(AtomicBool::new(false)),
        ));
        tracker.spawn(run(config, rx, link, full.clone(), shutdown));
        // Exposed at 0 from the start, so a rate over them is defined before the first one.
        for reason in ["buffer_full", "shutdown"] {
            metrics::counter!("switchboard_webhook_events_dropped_total", "reason" => reason)
                .increment(0);
        }
        metrics::counter!("switchboard_webhook_publish_retries_total").increment(0);
        WebhookPublisher { tx, full }
    }

    /// Buffers `event` for publishing, or drops and counts it when the buffer is full.
    pub fn send(&self, event: Queued) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("switchboard_webhook_events_dropped_total", "reason" => "buffer_full")
                    .increment(1);
                if !self.full.swap(true, Ordering::Relaxed) {
                    warn!("webhook buffer full (RabbitMQ slow or unreachable): new webhook events are dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!("switchboard_webhook_events_dropped_total", "reason" => "shutdown")
                    .increment(1);
            }
        }
    }
}

async fn run(
    config: PublisherConfig,
    mut events: mpsc::Receiver<Queued>,
    mut links: watch::Receiver<Option<Arc<Link>>>,
    full: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let queue = config.topology.webhook_queue();
    loop {
        let Some(first) = events.recv().await else {
            return;
        };
        let mut parts = vec![first.encode()];
        let mut bytes = parts[0].len();
        while parts.len() < MAX_MESSAGE_EVENTS && bytes < config.max_message_bytes {
            match events.try_recv() {
                Ok(event) => {
                    let part = event.encode();
                    bytes += part.len() + 1;
                    parts.push(part);
                }
                Err(_) => break,
            }
        }
        if full.swap(false, Ordering::Relaxed) {
            info!("webhook buffer has room again");
        }
        let body = join_encoded(parts.iter().map(Vec::as_slice));
        let confirmed =
            publish_until_confirmed(&queue, &body, config.confirm_timeout, &mut links, &shutdown)
                .await;
        if !confirmed {
            events.close();
            let mut dropped = parts.len() as u64;
            while events.try_recv().is_ok() {
                dropped += 1;
            }
            metrics::counter!("switchboard_webhook_events_dropped_total", "reason" => "shutdown")
                .increment(dropped);
            warn!(
                dropped,
                "shutdown while RabbitMQ is unavailable: buffered webhook events dropped"
            );
            return;
        }
        debug!(events = parts.len(), "webhook events confirmed");
    }
}

/// Publishes `body` until RabbitMQ confirms it; false once shutdown has come and an attempt
/// failed (or no link was there to try).
async fn publish_until_confirmed(
    queue: &str,
    body: &[u8],
    confirm_timeout: Duration,
    links: &mut watch::Receiver<Option<Arc<Link>>>,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    let mut warned = false;
    loop {
        let link = links.borrow_and_update().clone();
        let failure = match link {
            Some(link) => match publish(&link, queue, body, confirm_timeout).await {
                Ok(()) => {
                    if warned {
                        info!("webhook events confirmed again");
                    }
                    return true;
                }
                Err(failure) => {
                    // A write or confirm that never completes may be a stuck connection; a
                    // refusal is the broker's answer on a working one (a new channel declares
                    // the webhook queue again).
                    if failure == PUBLISH_FAILED || failure == NO_CONFIRM_IN_TIME {
                        link.mark_broken();
                    } else {
                        link.reopen();
                    }
                    failure
                }
            },
            None => "no connection to RabbitMQ",
        };
        if shutdown.is_cancelled() {
            return false;
        }
        metrics::counter!("switchboard_webhook_publish_retries_total").increment(1);
        let delay = backoff.next_delay();
        if !warned {
            warn!(
                failure,
                retry_in_ms = delay.as_millis() as u64,
                "webhook events not confirmed; publishing them again until they are"
            );
            warned = true;
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            _ = links.changed() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

const PUBLISH_FAILED: &str = "publishing failed";
const NO_CONFIRM_IN_TIME: &str = "no confirm in time";

/// One attempt: publish and wait for the confirm.
async fn publish(
    link: &Link,
    queue: &str,
    body: &[u8],
    confirm_timeout: Duration,
) -> Result<(), &'static str> {
    let attempt = async {
        let confirm = link
            .channel
            .basic_publish(
                "",
                queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .map_err(|_| PUBLISH_FAILED)?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err("returned: the webhook queue is missing"),
            Ok(Confirmation::Nack(_)) => Err("nacked"),
            Ok(Confirmation::NotRequested) => Err("no confirm"),
            Err(_) => Err("the channel failed before the confirm"),
        }
    };
    tokio::time::timeout(confirm_timeout, attempt)
        .await
        .unwrap_or(Err(NO_CONFIRM_IN_TIME))
}
