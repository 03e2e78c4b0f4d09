//! The worker's AMQP link: on the process's shared connection, a channel that consumes and acks
//! and a confirm-mode channel for dead letters.

use std::time::Duration;

use bus::{setup_step, within};
use chrono::{SecondsFormat, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What a [`Link`] connects to and consumes.
pub(crate) struct LinkConfig<'a> {
    /// The process's shared connection.
    pub broker: &'a bus::Broker,
    pub topology: &'a bus::Topology,
    pub queue_type: bus::QueueType,
    /// The queue consumed.
    pub queue: String,
    pub prefetch: u16,
}

/// A consumer's way back to RabbitMQ: opens links (on the shared connection, waiting for one)
/// with backoff (reset once one opens) and logs each loss, until shutdown. The consumer's loop is
/// `while let Some(link) = reconnect.open(..).await { ..consume..; reconnect.lost(error).await }`.
pub(crate) struct Reconnect<'a> {
    config: &'a LinkConfig<'a>,
    /// Names the consumer in the logs.
    role: &'static str,
    shutdown: CancellationToken,
    broker: bus::Broker,
    backoff: bus::Backoff,
}

impl<'a> Reconnect<'a> {
    pub fn new(
        config: &'a LinkConfig<'a>,
        role: &'static str,
        shutdown: CancellationToken,
    ) -> Self {
        Reconnect {
            broker: config.broker.clone(),
            config,
            role,
            shutdown,
            backoff: bus::Backoff::default(),
        }
    }

    /// The next link, or `None` once shutdown comes.
    pub async fn open(&mut self) -> Option<Link> {
        while !self.shutdown.is_cancelled() {
            let connected = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                connected = self.broker.connected() => connected?,
            };
            match Link::open(self.config, &connected).await {
                Ok(link) => {
                    let (endpoint, queue, role) =
                        (&connected.endpoint, &self.config.queue, self.role);
                    info!(%endpoint, %queue, role, "consuming");
                    self.backoff.reset();
                    return Some(link);
                }
                Err(error) => self.lost(error).await,
            }
        }
        None
    }

    /// Logs why the link is gone and waits the backoff's delay (less if shutdown comes).
    pub async fn lost(&mut self, error: LinkError) {
        let delay = self.backoff.next_delay();
        let (endpoints, role) = (self.broker.endpoints(), self.role);
        warn!(%error, %endpoints, role, retry_in_ms = delay.as_millis() as u64, "lost RabbitMQ; reconnecting");
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Header of a dead-lettered message: why it could not be persisted (short text).
pub const REASON_HEADER: &str = "x-switchboard-reason";
/// Header of a dead-lettered message: when it was dead-lettered (RFC 3339, UTC).
pub const FAILED_AT_HEADER: &str = "x-switchboard-failed-at";

/// Longest reason put into [`REASON_HEADER`], in bytes.
const MAX_REASON_BYTES: usize = 1024;
/// How long RabbitMQ may take to confirm a dead-lettered message before the link is reset.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing the link's channels may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub(crate) enum LinkError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("RabbitMQ channel failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ cancelled the consumer")]
    ConsumerCancelled,
    #[error("RabbitMQ nacked a dead-lettered message")]
    DeadLetterNacked,
    #[error("RabbitMQ returned a dead-lettered message: the dead-letter queue is missing")]
    DeadLetterReturned,
    #[error("RabbitMQ did not confirm a dead-lettered message in time")]
    DeadLetterTimeout,
}

/// A channel that consumes and acks, and a confirm-mode channel for dead letters.
pub(crate) struct Link {
    channel: Channel,
    dead_letters: Channel,
    consumer: Consumer,
    dead_letter_queue: String,
}

impl Link {
    /// Opens both channels on `connected` and starts consuming; every step is bounded, and
    /// what was opened of a link whose setup failed is closed.
    pub(crate) async fn open(
        config: &LinkConfig<'_>,
        connected: &bus::Connected,
    ) -> Result<Link, LinkError> {
        let connection = &connected.connection;
        let channel = setup_step("opening a channel", connection.create_channel()).await?;
        let mut opened = vec![channel.clone()];
        let setup = Self::set_up(config, connection, channel, &mut opened).await;
        if setup.is_err() {
            for channel in opened {
                // Best effort: the channel is of no use, whether or not it closes cleanly.
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "setup failed")).await;
            }
        }
        setup
    }

    /// Declares, opens the dead-letter channel (added to `opened`) and starts consuming.
    async fn set_up(
        config: &LinkConfig<'_>,
        connection: &lapin::Connection,
        channel: Channel,
        opened: &mut Vec<Channel>,
    ) -> Result<Link, LinkError> {
        within(
            "declaring the topology",
            bus::declare_durable(&channel, config.topology, config.queue_type),
        )
        .await?;
        setup_step(
            "setting the prefetch",
            channel.basic_qos(config.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let dead_letters = setup_step(
            "opening the dead-letter channel",
            connection.create_channel(),
        )
        .await?;
        opened.push(dead_letters.clone());
        setup_step(
            "enabling publisher confirms",
            dead_letters.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let consumer = setup_step(
            "starting to consume",
            channel.basic_consume(
                &config.queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(Link {
            channel,
            dead_letters,
            consumer,
            dead_letter_queue: config.topology.dead_letter_queue(),
        })
    }

    /// The next delivery; `None` from the consumer means RabbitMQ cancelled it.
    pub(crate) async fn next_delivery(&mut self) -> Result<Delivery, LinkError> {
        match self.consumer.next().await {
            Some(delivery) => Ok(delivery?),
            None => Err(LinkError::ConsumerCancelled),
        }
    }

    /// Publishes `body` to the dead-letter queue with `reason` and waits for the confirm.
    pub(crate) async fn dead_letter(&self, body: &[u8], reason: &str) -> Result<(), LinkError> {
        let mut headers = FieldTable::default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(truncated(reason, MAX_REASON_BYTES).into()),
        );
        headers.insert(
            FAILED_AT_HEADER.into(),
            AMQPValue::LongString(
                Utc::now()
                    .to_rfc3339_opts(SecondsFormat::Millis, true)
                    .into(),
            ),
        );
        let confirm = self
            .dead_letters
            .basic_publish(
                "",
                &self.dead_letter_queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(LinkError::DeadLetterReturned),
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
                Err(LinkError::DeadLetterNacked)
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(LinkError::DeadLetterTimeout),
        }
    }

    pub(crate) async fn ack(&self, tag: DeliveryTag, multiple: bool) -> Result<(), LinkError> {
        Ok(self
            .channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await?)
    }

    /// Cancels the consumer and closes both channels (the shared connection stays). Deliveries
    /// still unacked go back to the queue. Best effort: a broken link fails these steps, with the
    /// same result.
    pub(crate) async fn close(self) {
        let closing = async {
            let tag = self.consumer.tag();
            if let Err(error) = self
                .channel
                .basic_cancel(tag.as_str(), BasicCancelOptions::default())
                .await
            {
                debug!(%error, "cannot cancel the consumer");
            }
            if let Err(error) = self.channel.close(200, "worker stopping").await {
                debug!(%error, "cannot close the channel");
            }
            if let Err(error) = self.dead_letters.close(200, "worker stopping").await {
                debug!(%error, "cannot close the dead-letter channel");
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            debug!("timed out closing the RabbitMQ channels");
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("exactly", 7), "exactly");
        assert_eq!(truncated("abcdef", 3), "abc");
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("😀😀", 5), "😀");
        assert_eq!(truncated("", 3), "");
    }
}
