//! Switchboard's side of an `ingest` run: waiting until every accepted event is in Postgres,
//! then checking that each is stored exactly once and reading how the server batched them.

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::time::Instant;

use super::Mode;
use crate::procfs;
use crate::stats::SeqSet;
use crate::Target;

/// The worker's count of stored events (after each commit).
const PERSISTED_METRIC: &str = "switchboard_persisted_events_total";

/// Switchboard's side of a run, read before the load: its database and its metrics.
pub(super) struct Durable<'a> {
    pub(super) database_url: &'a str,
    pub(super) pool: PgPool,
    pub(super) metrics_before: String,
}

/// When the last accepted event was in Postgres.
#[derive(Clone, Copy)]
pub(super) struct Persisted {
    /// Rows found (all accepted ones unless the wait timed out).
    pub(super) stored: i64,
    /// From the first request.
    pub(super) seconds: f64,
}

/// What Switchboard stored (each accepted event exactly once?) and how it batched.
pub(super) struct Audit {
    pub(super) persisted: Persisted,
    pub(super) present: u64,
    pub(super) duplicates: u64,
    pub(super) unexpected: u64,
    /// Mean envelopes per AMQP message.
    pub(super) publish_batch: f64,
    /// Mean envelopes per INSERT.
    pub(super) persist_batch: f64,
}

impl Durable<'_> {
    /// Until the last accepted event is in Postgres (at most `timeout`): the server's count of
    /// stored events says when (cheap to poll); the table is counted once a second, in case the
    /// counter cannot.
    pub(super) async fn wait_persisted(
        &self,
        target: &Target,
        name: &str,
        accepted: u64,
        timeout: Duration,
        started: Instant,
    ) -> anyhow::Result<Persisted> {
        let count_query = "SELECT count(*) FROM events WHERE app_id = $1 AND name = $2";
        let persisted_before =
            procfs::metric(&self.metrics_before, PERSISTED_METRIC).unwrap_or(0.0);
        let mut stored: i64 = 0;
        let deadline = Instant::now() + timeout;
        for poll in 1u64.. {
            if (stored as u64) >= accepted || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let counted = target.metric(PERSISTED_METRIC).await? - persisted_before;
            if counted >= accepted as f64 || poll % 50 == 0 {
                stored = sqlx::query_scalar(count_query)
                    .bind(&target.app_id)
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
            }
        }
        Ok(Persisted {
            stored,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Exactly once: every accepted sequence number in exactly one row, nothing else; then the
    /// server's mean batch sizes during the run.
    pub(super) async fn audit(
        &self,
        target: &Target,
        mode: Mode,
        name: &str,
        accepted: &SeqSet,
        persisted: Persisted,
    ) -> anyhow::Result<Audit> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT {}, count(*) FROM events WHERE app_id = $1 AND name = $2 GROUP BY 1",
            mode.stored_seq()
        ))
        .bind(&target.app_id)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let (mut duplicates, mut unexpected, mut present) = (0u64, 0u64, 0u64);
        for &(seq, count) in &rows {
            duplicates += (count as u64).saturating_sub(1);
            if accepted.contains(seq as u64) {
                present += 1;
            } else {
                unexpected += 1;
            }
        }
        let metrics_after = target.metrics().await?;
        let mean = |name: &str| {
            let delta = |suffix: &str| {
                let metric = format!("{name}_{suffix}");
                procfs::metric(&metrics_after, &metric).unwrap_or(0.0)
                    - procfs::metric(&self.metrics_before, &metric).unwrap_or(0.0)
            };
            delta("sum") / delta("count").max(1.0)
        };
        Ok(Audit {
            persisted,
            present,
            duplicates,
            unexpected,
            publish_batch: mean("switchboard_publish_batch_envelopes"),
            persist_batch: mean("switchboard_persist_batch_envelopes"),
        })
    }
}
