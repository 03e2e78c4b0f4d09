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
use chrono::NaiveDate;
use lapin::message::Delivery;
use lapin::types::DeliveryTag;
use protocol::envelope::{decode_batch, encode_batch};
use protocol::Envelope;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::fence;
use crate::link::{Link, LinkConfig, LinkError, Reconnect};
use crate::maintenance;
use crate::storage::{self, Disposition};

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
    /// How long a Segment `messageId` or an idempotency key is remembered: a retry within it
    /// never makes a second row.
    pub dedup_window: Duration,
    /// Drop the events partitions of days that ended more than this many days ago; `None`
    /// keeps everything.
    pub retention_days: Option<u32>,
    /// Attempts at writing a batch that fails (other than for its data, or because Postgres is
    /// unreachable) before it is split, and an envelope alone dead-lettered.
    pub max_attempts: u32,
    /// How often maintenance runs (partitions ahead, retention, dedup pruning); also at start.
    pub maintenance_interval: Duration,
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
            .field("max_attempts", &self.max_attempts)
            .field("maintenance_interval", &self.maintenance_interval)
            .finish()
    }
}

/// Runs until `shutdown` is cancelled; on shutdown finishes (commits and acks) the batch in
/// hand, then returns. While Postgres is failing, shutdown gives up the batch instead (it stays
/// unacked and is redelivered).
pub async fn run(config: WorkerConfig, pool: PgPool, shutdown: CancellationToken) {
    let maintenance = maintenance::run(pool.clone(), config.clone(), shutdown.clone());
    let mut worker = Worker {
        config,
        pool,
        shutdown,
        partitions: HashSet::new(),
    };
    tokio::join!(worker.consume_until_shutdown(), maintenance);
}

/// One decoded delivery: a batch of envelopes, or a storage fence.
struct Decoded {
    tag: DeliveryTag,
    envelopes: Vec<Envelope>,
    fence: Option<Uuid>,
}

/// Deliveries taken together and written with one statement. A fence ends the batch: it is
/// recorded once the envelopes before it are committed.
#[derive(Default)]
struct Batch {
    deliveries: usize,
    last_tag: DeliveryTag,
    envelopes: Vec<Envelope>,
    fences: Vec<Uuid>,
}

impl Batch {
    fn push(&mut self, decoded: Decoded) {
        self.deliveries += 1;
        self.last_tag = self.last_tag.max(decoded.tag);
        self.envelopes.extend(decoded.envelopes);
        self.fences.extend(decoded.fence);
    }

    /// Whether to take no more deliveries into it.
    fn ends(&self, max_envelopes: usize) -> bool {
        !self.fences.is_empty() || self.envelopes.len() >= max_envelopes
    }
}

/// Why a write did not go through.
enum WriteFailure {
    /// Retrying the same envelopes together cannot succeed.
    Refused(Refusal),
    /// Shutdown came while waiting to retry.
    Abandoned,
}

/// Why Postgres would not take some envelopes.
struct Refusal {
    error: sqlx::Error,
    /// Attempts made: 1 when Postgres refused the data itself.
    attempts: u32,
}

impl Refusal {
    /// The dead-letter reason: SQLSTATE, message and detail, and the attempts when more than
    /// one was made.
    fn reason(&self) -> String {
        let reason = storage::rejection_reason(&self.error);
        match self.attempts {
            1 => reason,
            attempts => format!("{reason} (failed {attempts} attempts)"),
        }
    }

    /// The `reason` label of `switchboard_dead_lettered_total`.
    fn label(&self) -> &'static str {
        match self.attempts {
            1 => "rejected",
            _ => "failed",
        }
    }
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
        let (amqp_url, topology) = (self.config.amqp_url.clone(), self.config.topology.clone());
        let link_config = LinkConfig {
            amqp_url: &amqp_url,
            topology: &topology,
            queue_type: self.config.persist_queue_type,
            queue: topology.persist_queue(),
            prefetch: self.config.prefetch,
        };
        let mut reconnect = Reconnect::new(&link_config, "worker", self.shutdown.clone());
        while let Some(mut link) = reconnect.open().await {
            let outcome = self.consume(&mut link).await;
            link.close().await;
            match outcome {
                Ok(()) => break,
                Err(error) => reconnect.lost(error).await,
            }
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

    /// Processes batches until shutdown (`Ok`) or until the link fails. The link is one
    /// consumer of the persist queue, named in the fences it records by an id of its own.
    async fn consume(&mut self, link: &mut Link) -> Result<(), LinkError> {
        let consumer = Uuid::new_v4();
        let mut carried = None;
        while let Some(batch) = self.collect(link, &mut carried).await? {
            self.complete(link, batch, consumer).await?;
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
        while !batch.ends(self.config.max_batch) {
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
        let decoded = match fence::token(&delivery) {
            Some(token) => token.map(|token| (Vec::new(), Some(token))),
            None => decode_batch(&delivery.data)
                .map(|envelopes| (envelopes, None))
                .map_err(|error| error.to_string()),
        };
        match decoded {
            Ok((envelopes, fence)) => Ok(Some(Decoded {
                tag: delivery.delivery_tag,
                envelopes,
                fence,
            })),
            Err(error) => {
                link.dead_letter(&delivery.data, &error).await?;
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

    /// Writes the batch, dead-letters what Postgres refused, records its fences, then acks
    /// every delivery of it.
    async fn complete(
        &mut self,
        link: &Link,
        batch: Batch,
        consumer: Uuid,
    ) -> Result<(), LinkError> {
        let span = info_span!(
            "persist_batch",
            deliveries = batch.deliveries,
            envelopes = batch.envelopes.len(),
            fences = batch.fences.len(),
            last_tag = batch.last_tag,
        );
        async {
            if !batch.envelopes.is_empty() && !self.store(link, &batch.envelopes).await? {
                info!("shutdown while Postgres is failing: the batch is left unacked");
                return Ok(());
            }
            if !batch.fences.is_empty() {
                // A fence not recorded is published again by its gateway until one is.
                if let Err(error) = fence::record(&self.pool, &batch.fences, consumer).await {
                    warn!(%error, "cannot record a storage fence");
                }
            }
            link.ack(batch.last_tag, true).await?;
            debug!("batch persisted");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Writes `envelopes` and dead-letters what Postgres refused; false when shutdown came
    /// while Postgres was failing (nothing is to be acked then).
    async fn store(&mut self, link: &Link, envelopes: &[Envelope]) -> Result<bool, LinkError> {
        metrics::histogram!("switchboard_persist_batch_envelopes").record(envelopes.len() as f64);
        let started = Instant::now();
        let Some(rejected) = self.persist(envelopes).await else {
            return Ok(false);
        };
        metrics::histogram!("switchboard_persist_seconds").record(started.elapsed().as_secs_f64());
        for (envelope, refusal) in rejected {
            let body = encode_batch(std::slice::from_ref(envelope));
            link.dead_letter(&body, &refusal.reason()).await?;
            metrics::counter!("switchboard_dead_lettered_total", "reason" => refusal.label())
                .increment(1);
            warn!(
                envelope_id = %envelope.id,
                app_id = %envelope.app_id,
                sqlstate = refusal.error.as_database_error().and_then(|e| e.code()).as_deref(),
                attempts = refusal.attempts,
                "Postgres refused an envelope; dead-lettered"
            );
        }
        Ok(true)
    }

    /// Writes `envelopes`, retrying while Postgres is unreachable. What Postgres refuses — at
    /// once for its data, or after `max_attempts` failures for another reason — is bisected
    /// until each refused envelope stands alone; the others are written. Returns the refused
    /// envelopes with the reason, or `None` if shutdown interrupted.
    async fn persist<'a>(
        &mut self,
        envelopes: &'a [Envelope],
    ) -> Option<Vec<(&'a Envelope, Refusal)>> {
        let mut rejected = Vec::new();
        let mut pending = vec![envelopes];
        while let Some(part) = pending.pop() {
            match self.write_with_retry(part).await {
                Ok(()) => {}
                Err(WriteFailure::Abandoned) => return None,
                Err(WriteFailure::Refused(refusal)) => match part {
                    [envelope] => rejected.push((envelope, refusal)),
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

    /// Writes `envelopes`: an outage is retried without limit; another failure `max_attempts`
    /// times, after which the same statement without any rows tells whether these envelopes
    /// are to blame (it succeeds: they are refused) or Postgres as a whole is (it fails too:
    /// retried like an outage, nothing is dead-lettered for it).
    async fn write_with_retry(&mut self, envelopes: &[Envelope]) -> Result<(), WriteFailure> {
        let mut backoff = Backoff::default();
        let mut failures = 0;
        loop {
            let error = match self.write(envelopes).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let disposition = storage::disposition(&error);
            if disposition == Disposition::Reject {
                return Err(WriteFailure::Refused(Refusal { error, attempts: 1 }));
            }
            if disposition == Disposition::Failed {
                failures += 1;
                if failures >= self.config.max_attempts {
                    if self.database_works().await {
                        return Err(WriteFailure::Refused(Refusal {
                            error,
                            attempts: failures,
                        }));
                    }
                    failures = 0;
                }
            }
            let delay = backoff.next_delay();
            metrics::counter!("switchboard_persist_retries_total").increment(1);
            warn!(%error, retry_in_ms = delay.as_millis() as u64, envelopes = envelopes.len(), "cannot write to Postgres; retrying");
            self.pause(delay).await;
            if self.shutdown.is_cancelled() {
                return Err(WriteFailure::Abandoned);
            }
        }
    }

    /// Whether the insert statement works without any rows (see [`storage::probe`]).
    async fn database_works(&self) -> bool {
        match storage::probe(&self.pool).await {
            Ok(()) => true,
            Err(error) => {
                warn!(%error, "Postgres fails without any rows too: not the envelopes' fault");
                false
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
            max_attempts: 3,
            maintenance_interval: Duration::from_secs(3600),
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("amqp://127.0.0.1:5672/%2f"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn batch_acks_up_to_its_highest_tag() {
        let decoded = |tag, n| Decoded {
            tag,
            envelopes: (0..n)
                .map(|_| Envelope::new("1", protocol::Source::Api, "c", "e", String::new()))
                .collect(),
            fence: None,
        };
        let mut batch = Batch::default();
        batch.push(decoded(3, 2));
        batch.push(decoded(5, 0));
        batch.push(decoded(4, 1));
        assert_eq!(
            (batch.deliveries, batch.last_tag, batch.envelopes.len()),
            (3, 5, 3)
        );
        assert!(!batch.ends(4));
        assert!(batch.ends(3));
        batch.push(Decoded {
            fence: Some(Uuid::new_v4()),
            ..decoded(6, 0)
        });
        assert!(batch.ends(1000), "a fence ends the batch");
        assert_eq!((batch.deliveries, batch.last_tag), (4, 6));
    }
}
