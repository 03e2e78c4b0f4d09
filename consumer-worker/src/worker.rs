//! The consume loop: batches from the persist queue, one INSERT per batch, acks after commit.
//!
//! One task owns the AMQP link and the batch in hand. A batch is acked (one `multiple` ack on
//! its highest delivery tag) only after its rows are committed and its rejected envelopes are
//! confirmed in the dead-letter queue; until then a lost link or a crash means redelivery, which
//! the idempotent insert absorbs.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use bus::Backoff;
use chrono::{NaiveDate, SecondsFormat, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use protocol::envelope::{decode_batch, encode_batch};
use protocol::Envelope;
use sqlx::PgPool;
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::storage::{self, Disposition};

/// Header of a dead-lettered message: why it could not be persisted (short text).
pub const REASON_HEADER: &str = "x-switchboard-reason";
/// Header of a dead-lettered message: when it was dead-lettered (RFC 3339, UTC).
pub const FAILED_AT_HEADER: &str = "x-switchboard-failed-at";

/// Longest reason put into [`REASON_HEADER`], in bytes.
const MAX_REASON_BYTES: usize = 1024;
/// How long RabbitMQ may take to confirm a dead-lettered message before the link is reset.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing the link may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the partitions ahead are ensured, old partitions dropped and the dedup table
/// pruned (also once at start).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub topology: bus::Topology,
    pub persist_queue_type: bus::QueueType,
    /// AMQP prefetch: most deliveries unacked at once.
    pub prefetch: u16,
    /// Most envelopes in one INSERT (a single larger delivery is still written whole).
    pub max_batch: usize,
    /// How long to wait for more deliveries once one arrived.
    pub batch_linger: Duration,
    /// Daily partitions kept created ahead of today.
    pub partition_days_ahead: u32,
    /// How long a Segment `messageId` is remembered: a retry within it never makes a second
    /// row.
    pub dedup_window: Duration,
    /// Drop the events partitions of days that ended more than this many days ago; `None`
    /// keeps everything.
    pub retention_days: Option<u32>,
}

impl fmt::Debug for WorkerConfig {
    /// Shows the AMQP URL without its credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("amqp_url", &bus::redacted_endpoint(&self.amqp_url))
            .field("topology", &self.topology)
            .field("persist_queue_type", &self.persist_queue_type)
            .field("prefetch", &self.prefetch)
            .field("max_batch", &self.max_batch)
            .field("batch_linger", &self.batch_linger)
            .field("partition_days_ahead", &self.partition_days_ahead)
            .field("dedup_window", &self.dedup_window)
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

/// Runs until `shutdown` is cancelled; on shutdown finishes (commits and acks) the batch in
/// hand, then returns. While Postgres is failing, shutdown gives up the batch instead (it stays
/// unacked and is redelivered).
pub async fn run(config: WorkerConfig, pool: PgPool, shutdown: CancellationToken) {
    let maintenance = maintain(pool.clone(), config.clone(), shutdown.clone());
    let mut worker = Worker {
        config,
        pool,
        shutdown,
        partitions: HashSet::new(),
    };
    tokio::join!(worker.consume_until_shutdown(), maintenance);
}

/// Every hour: creates the partitions ahead, drops those past retention, prunes the dedup
/// table. Failures are logged and tried again at the next round.
async fn maintain(pool: PgPool, config: WorkerConfig, shutdown: CancellationToken) {
    let mut every_hour = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = every_hour.tick() => {}
        }
        let today = storage::today();
        let days = storage::days_ahead(today, config.partition_days_ahead);
        if let Err(error) = storage::ensure_partitions(&pool, &days).await {
            warn!(%error, "cannot create the events partitions ahead; batches create theirs");
        }
        if let Some(cutoff) = config
            .retention_days
            .and_then(|days| retention_cutoff(today, days))
        {
            match storage::drop_partitions_before(&pool, cutoff).await {
                Ok(dropped) => {
                    for partition in dropped {
                        info!(%partition, "dropped the events partition (retention)");
                    }
                }
                Err(error) => warn!(%error, "cannot drop the events partitions past retention"),
            }
        }
        match storage::prune_dedup(&pool, config.dedup_window).await {
            Ok(pruned) => debug!(pruned, "pruned the Segment dedup table"),
            Err(error) => warn!(%error, "cannot prune the Segment dedup table"),
        }
    }
}

/// The first day kept when keeping `days` days before `today`: a partition is dropped once
/// its day ended more than `days` days ago.
fn retention_cutoff(today: NaiveDate, days: u32) -> Option<NaiveDate> {
    today.checked_sub_days(chrono::Days::new(u64::from(days)))
}

#[derive(Debug, Error)]
enum LinkError {
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

/// One connection: a channel that consumes and acks, and a confirm-mode channel for dead letters.
struct Link {
    connection: Connection,
    channel: Channel,
    dead_letters: Channel,
    consumer: Consumer,
    dead_letter_queue: String,
}

impl Link {
    async fn open(config: &WorkerConfig) -> Result<Link, LinkError> {
        let connection = bus::connect(&config.amqp_url, "switchboard-worker").await?;
        match Self::open_channels(config, &connection).await {
            Ok((channel, dead_letters, consumer)) => Ok(Link {
                connection,
                channel,
                dead_letters,
                consumer,
                dead_letter_queue: config.topology.dead_letter_queue(),
            }),
            Err(error) => {
                // Best effort: the connection is of no use, whether or not it closes cleanly.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "setup failed"))
                    .await;
                Err(error)
            }
        }
    }

    async fn open_channels(
        config: &WorkerConfig,
        connection: &Connection,
    ) -> Result<(Channel, Channel, Consumer), LinkError> {
        let channel = connection.create_channel().await?;
        bus::declare_durable(&channel, &config.topology, config.persist_queue_type).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                &config.topology.persist_queue(),
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, dead_letters, consumer))
    }

    /// The next delivery; `None` from the consumer means RabbitMQ cancelled it.
    async fn next_delivery(&mut self) -> Result<Delivery, LinkError> {
        match self.consumer.next().await {
            Some(delivery) => Ok(delivery?),
            None => Err(LinkError::ConsumerCancelled),
        }
    }

    /// Publishes `body` to the dead-letter queue with `reason` and waits for the confirm.
    async fn dead_letter(&self, body: &[u8], reason: &str) -> Result<(), LinkError> {
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

    async fn ack(&self, tag: DeliveryTag, multiple: bool) -> Result<(), LinkError> {
        Ok(self
            .channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await?)
    }

    /// Cancels the consumer and closes the channel and connection. Deliveries still unacked go
    /// back to the queue. Best effort: a broken link fails these steps, with the same result.
    async fn close(self) {
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
            if let Err(error) = self.connection.close(200, "worker stopping").await {
                debug!(%error, "cannot close the connection");
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            debug!("timed out closing the RabbitMQ connection");
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

/// One decoded delivery.
struct Decoded {
    tag: DeliveryTag,
    envelopes: Vec<Envelope>,
}

/// Deliveries taken together and written with one statement.
#[derive(Default)]
struct Batch {
    deliveries: usize,
    last_tag: DeliveryTag,
    envelopes: Vec<Envelope>,
}

impl Batch {
    fn push(&mut self, decoded: Decoded) {
        self.deliveries += 1;
        self.last_tag = self.last_tag.max(decoded.tag);
        self.envelopes.extend(decoded.envelopes);
    }
}

/// Why a write did not go through.
enum WriteFailure {
    /// Postgres refused the data.
    Rejected(sqlx::Error),
    /// Shutdown came while waiting to retry.
    Abandoned,
}

struct Worker {
    config: WorkerConfig,
    pool: PgPool,
    shutdown: CancellationToken,
    /// Days whose partition is known to exist.
    partitions: HashSet<NaiveDate>,
}

impl Worker {
    async fn consume_until_shutdown(&mut self) {
        let endpoint = bus::redacted_endpoint(&self.config.amqp_url);
        let mut backoff = Backoff::default();
        while !self.shutdown.is_cancelled() {
            let error = match Link::open(&self.config).await {
                Ok(mut link) => {
                    info!(%endpoint, queue = %self.config.topology.persist_queue(), "worker consuming");
                    backoff = Backoff::default();
                    let outcome = self.consume(&mut link).await;
                    link.close().await;
                    match outcome {
                        Ok(()) => break,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            warn!(%error, %endpoint, retry_in_ms = delay.as_millis() as u64, "worker lost RabbitMQ; reconnecting");
            self.pause(delay).await;
        }
        info!("worker stopped");
    }

    /// Sleeps for `delay`, or less if shutdown comes.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    /// Processes batches until shutdown (`Ok`) or until the link fails.
    async fn consume(&mut self, link: &mut Link) -> Result<(), LinkError> {
        let mut carried = None;
        while let Some(batch) = self.collect(link, &mut carried).await? {
            self.complete(link, batch).await?;
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        Ok(())
    }

    /// Waits for a delivery, then takes what arrives within the linger, up to `max_batch`
    /// envelopes; a delivery that would overflow the batch is carried to the next one. Returns
    /// `None` when shutdown comes before any delivery.
    async fn collect(
        &mut self,
        link: &mut Link,
        carried: &mut Option<Decoded>,
    ) -> Result<Option<Batch>, LinkError> {
        let mut batch = Batch::default();
        if let Some(decoded) = carried.take() {
            batch.push(decoded);
        }
        while batch.deliveries == 0 {
            let delivery = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(None),
                delivery = link.next_delivery() => delivery?,
            };
            if let Some(decoded) = self.decode(link, delivery).await? {
                batch.push(decoded);
            }
        }
        let deadline = Instant::now() + self.config.batch_linger;
        while batch.envelopes.len() < self.config.max_batch {
            let delivery = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                delivery = link.next_delivery() => delivery?,
            };
            if let Some(decoded) = self.decode(link, delivery).await? {
                if batch.envelopes.len() + decoded.envelopes.len() > self.config.max_batch {
                    *carried = Some(decoded);
                    break;
                }
                batch.push(decoded);
            }
        }
        Ok(Some(batch))
    }

    /// Decodes a delivery; one that cannot be decoded is dead-lettered and acked at once.
    async fn decode(&self, link: &Link, delivery: Delivery) -> Result<Option<Decoded>, LinkError> {
        match decode_batch(&delivery.data) {
            Ok(envelopes) => Ok(Some(Decoded {
                tag: delivery.delivery_tag,
                envelopes,
            })),
            Err(error) => {
                link.dead_letter(&delivery.data, &error.to_string()).await?;
                link.ack(delivery.delivery_tag, false).await?;
                metrics::counter!("switchboard_dead_lettered_total", "reason" => "decode")
                    .increment(1);
                // The decode error may quote the body: it is in the dead letter's header only.
                warn!(
                    delivery_tag = delivery.delivery_tag,
                    bytes = delivery.data.len(),
                    "undecodable message dead-lettered"
                );
                Ok(None)
            }
        }
    }

    /// Writes the batch, dead-letters what Postgres refused, then acks every delivery of it.
    async fn complete(&mut self, link: &Link, batch: Batch) -> Result<(), LinkError> {
        let span = info_span!(
            "persist_batch",
            deliveries = batch.deliveries,
            envelopes = batch.envelopes.len(),
            last_tag = batch.last_tag,
        );
        async {
            metrics::histogram!("switchboard_persist_batch_envelopes")
                .record(batch.envelopes.len() as f64);
            let started = Instant::now();
            let Some(rejected) = self.persist(&batch.envelopes).await else {
                info!("shutdown while Postgres is failing: the batch is left unacked");
                return Ok(());
            };
            metrics::histogram!("switchboard_persist_seconds")
                .record(started.elapsed().as_secs_f64());
            for (envelope, error) in rejected {
                let body = encode_batch(std::slice::from_ref(envelope));
                link.dead_letter(&body, &storage::rejection_reason(&error))
                    .await?;
                metrics::counter!("switchboard_dead_lettered_total", "reason" => "rejected")
                    .increment(1);
                warn!(
                    envelope_id = %envelope.id,
                    app_id = %envelope.app_id,
                    sqlstate = error.as_database_error().and_then(|e| e.code()).as_deref(),
                    "Postgres rejected an envelope; dead-lettered"
                );
            }
            link.ack(batch.last_tag, true).await?;
            debug!("batch persisted");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Writes `envelopes`, retrying transient failures. When Postgres refuses the data, the
    /// envelopes are bisected until each refused one stands alone; the others are written.
    /// Returns the refused envelopes with their error, or `None` if shutdown interrupted.
    async fn persist<'a>(
        &mut self,
        envelopes: &'a [Envelope],
    ) -> Option<Vec<(&'a Envelope, sqlx::Error)>> {
        let mut rejected = Vec::new();
        let mut pending = vec![envelopes];
        while let Some(part) = pending.pop() {
            match self.write_with_retry(part).await {
                Ok(()) => {}
                Err(WriteFailure::Abandoned) => return None,
                Err(WriteFailure::Rejected(error)) => match part {
                    [envelope] => rejected.push((envelope, error)),
                    _ => {
                        let (left, right) = part.split_at(part.len() / 2);
                        pending.push(right);
                        pending.push(left);
                    }
                },
            }
        }
        Some(rejected)
    }

    async fn write_with_retry(&mut self, envelopes: &[Envelope]) -> Result<(), WriteFailure> {
        let mut backoff = Backoff::default();
        loop {
            let error = match self.write(envelopes).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if storage::disposition(&error) == Disposition::Reject {
                return Err(WriteFailure::Rejected(error));
            }
            let delay = backoff.next_delay();
            metrics::counter!("switchboard_persist_retries_total").increment(1);
            warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot write to Postgres; retrying");
            self.pause(delay).await;
            if self.shutdown.is_cancelled() {
                return Err(WriteFailure::Abandoned);
            }
        }
    }

    /// One attempt: ensures the partitions of the envelopes' days, then inserts them.
    async fn write(&mut self, envelopes: &[Envelope]) -> Result<(), sqlx::Error> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let missing = storage::missing_days(envelopes, &self.partitions);
        if !missing.is_empty() {
            storage::ensure_partitions(&self.pool, &missing).await?;
            self.partitions.extend(missing);
        }
        let inserted = storage::insert_events(&self.pool, envelopes).await?;
        let duplicates = envelopes.len() as u64 - inserted;
        metrics::counter!("switchboard_persisted_events_total").increment(inserted);
        metrics::counter!("switchboard_persist_duplicates_total").increment(duplicates);
        if duplicates > 0 {
            debug!(duplicates, "skipped envelopes already persisted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_credentials() {
        let config = WorkerConfig {
            amqp_url: "amqp://guest:secret@127.0.0.1:5672/%2f".into(),
            topology: bus::Topology::new("switchboard"),
            persist_queue_type: bus::QueueType::Quorum,
            prefetch: 2000,
            max_batch: 5000,
            batch_linger: Duration::from_millis(5),
            partition_days_ahead: 3,
            dedup_window: Duration::from_secs(48 * 3600),
            retention_days: None,
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("amqp://127.0.0.1:5672/%2f"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn retention_keeps_today_and_the_days_before() {
        let day = |m: u32, d: u32| NaiveDate::from_ymd_opt(2025, m, d).unwrap();
        assert_eq!(retention_cutoff(day(3, 10), 1), Some(day(3, 9)));
        assert_eq!(retention_cutoff(day(3, 1), 30), Some(day(1, 30)));
        assert_eq!(retention_cutoff(day(3, 1), 0), Some(day(3, 1)));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("exactly", 7), "exactly");
        assert_eq!(truncated("abcdef", 3), "abc");
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("😀😀", 5), "😀");
        assert_eq!(truncated("", 3), "");
    }

    #[test]
    fn batch_acks_up_to_its_highest_tag() {
        let decoded = |tag, n| Decoded {
            tag,
            envelopes: (0..n)
                .map(|_| Envelope::new("1", protocol::Source::Api, "c", "e", String::new()))
                .collect(),
        };
        let mut batch = Batch::default();
        batch.push(decoded(3, 2));
        batch.push(decoded(5, 0));
        batch.push(decoded(4, 1));
        assert_eq!(
            (batch.deliveries, batch.last_tag, batch.envelopes.len()),
            (3, 5, 3)
        );
    }
}
