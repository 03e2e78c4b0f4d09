//! Periodic maintenance: the partitions ahead, retention, pruning the dedup tables (hourly)
//! and the recorded storage fences (every minute).
//!
//! Retention never takes an ACCESS EXCLUSIVE lock on `events`: an expired partition is first
//! detached with `DETACH PARTITION … CONCURRENTLY` (SHARE UPDATE EXCLUSIVE on `events`, which
//! inserts and queries do not conflict with; it waits for the queries that use `events` to end),
//! and the standalone table is then dropped. Both run on a connection of their own, outside any
//! transaction block (which `CONCURRENTLY` requires), under `lock_timeout` and
//! `statement_timeout`: a long analyst query delays the drop to a later round, never the
//! inserts. A detach that was interrupted (pending) is completed with `FINALIZE`; a partition
//! that was detached but not dropped (marked by a comment before its detach, so that no other
//! table of that name is ever dropped) is dropped at the next round.

use std::time::Duration;

use chrono::NaiveDate;
use sqlx::{Executor, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::worker::WorkerConfig;
use crate::{fence, storage};

/// How long a retention step waits for a lock — including DETACH's wait for the queries that
/// use `events` — before it gives up until the next round.
const RETENTION_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one retention statement may run.
const RETENTION_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Put on a partition just before it is detached: a detached table is dropped only with it.
const DETACHED_COMMENT: &str = "switchboard: detached for retention, to be dropped";

/// Every `config.maintenance_interval` (and once at start): creates the partitions ahead, drops
/// those past retention, prunes the dedup tables. Failures are logged and tried again at the
/// next round.
pub(crate) async fn run(pool: PgPool, config: WorkerConfig, shutdown: CancellationToken) {
    let mut rounds = tokio::time::interval(config.maintenance_interval);
    // Recorded fences are of use for seconds: pruned far more often than the rest.
    let mut fence_rounds = tokio::time::interval(fence::FENCE_KEPT);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = fence_rounds.tick() => {
                match fence::prune(&pool).await {
                    Ok(pruned) => debug!(pruned, "pruned the recorded storage fences"),
                    Err(error) => warn!(%error, "cannot prune the recorded storage fences"),
                }
                continue;
            }
            _ = rounds.tick() => {}
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
            let round = drop_partitions_before(&pool, cutoff);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = round => {}
            }
        }
        match storage::prune_dedup(&pool, config.dedup_window).await {
            Ok(pruned) => debug!(pruned, "pruned the dedup tables"),
            Err(error) => warn!(%error, "cannot prune the dedup tables"),
        }
    }
}

/// The first day kept when keeping `days` days before `today`: a partition is dropped once
/// its day ended more than `days` days ago.
fn retention_cutoff(today: NaiveDate, days: u32) -> Option<NaiveDate> {
    today.checked_sub_days(chrono::Days::new(u64::from(days)))
}

/// What state an expired partition is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// A detach was interrupted: it is finished with `FINALIZE`.
    Pending,
    /// Still a partition of `events`.
    Attached,
    /// Detached by an earlier round but not dropped.
    Detached,
}

/// The expired partitions of `events` (days before `$1`), pending detaches first (only one
/// detach may be pending at a time), then the oldest. Detached tables count only with the
/// comment retention put on them.
const EXPIRED_PARTITIONS: &str = "\
SELECT c.oid::regclass::text AS name,
       CASE WHEN i.inhdetachpending THEN 'pending'
            WHEN i.inhrelid IS NOT NULL THEN 'attached'
            ELSE 'detached' END AS stage
FROM pg_class c
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'events'::regclass
WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
  AND c.relkind = 'r'
  AND c.relname ~ '^events_[0-9]{8}$'
  AND to_date(substring(c.relname FROM 8), 'YYYYMMDD') < $1
  AND (i.inhrelid IS NOT NULL
       OR (NOT c.relispartition AND obj_description(c.oid, 'pg_class') = $2))
ORDER BY i.inhdetachpending IS NOT TRUE, c.relname";

/// One retention round: detaches and drops the partitions of the days before `cutoff`, logging
/// each. Stops at the first failure (usually a lock timeout behind a long query), which the
/// next round takes up again.
async fn drop_partitions_before(pool: &PgPool, cutoff: NaiveDate) {
    match retention_round(pool, cutoff).await {
        Ok(0) => {}
        Ok(dropped) => info!(dropped, "retention round done"),
        Err(error) => {
            warn!(%error, "retention stopped; the next round takes it up again");
        }
    }
}

async fn retention_round(pool: &PgPool, cutoff: NaiveDate) -> Result<usize, sqlx::Error> {
    // A connection of its own (closed afterwards, so its timeouts never reach the pool).
    let mut connection = pool.acquire().await?.detach();
    let expired: Vec<(String, String)> = sqlx::query_as(EXPIRED_PARTITIONS)
        .bind(cutoff)
        .bind(DETACHED_COMMENT)
        .fetch_all(&mut connection)
        .await?;
    if expired.is_empty() {
        return Ok(0);
    }
    let timeouts = format!(
        "SET lock_timeout = {}; SET statement_timeout = {}",
        RETENTION_LOCK_TIMEOUT.as_millis(),
        RETENTION_STATEMENT_TIMEOUT.as_millis()
    );
    connection.execute(timeouts.as_str()).await?;
    let mut dropped = 0;
    for (partition, stage) in expired {
        let stage = match stage.as_str() {
            "pending" => Stage::Pending,
            "attached" => Stage::Attached,
            _ => Stage::Detached,
        };
        for statement in retirement(&partition, stage) {
            // A query without arguments goes as one simple query, outside any transaction
            // block, as CONCURRENTLY requires.
            connection.execute(statement.as_str()).await?;
        }
        info!(%partition, "dropped the events partition (retention)");
        dropped += 1;
    }
    Ok(dropped)
}

/// The statements that detach (or finish detaching) `partition` and drop it. `partition` is a
/// name Postgres quoted (`regclass::text`).
fn retirement(partition: &str, stage: Stage) -> Vec<String> {
    let mut statements = match stage {
        Stage::Pending => vec![format!(
            "ALTER TABLE events DETACH PARTITION {partition} FINALIZE"
        )],
        Stage::Attached => vec![
            format!("COMMENT ON TABLE {partition} IS '{DETACHED_COMMENT}'"),
            format!("ALTER TABLE events DETACH PARTITION {partition} CONCURRENTLY"),
        ],
        Stage::Detached => Vec::new(),
    };
    statements.push(format!("DROP TABLE {partition}"));
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_today_and_the_days_before() {
        let day = |m: u32, d: u32| NaiveDate::from_ymd_opt(2025, m, d).unwrap();
        assert_eq!(retention_cutoff(day(3, 10), 1), Some(day(3, 9)));
        assert_eq!(retention_cutoff(day(3, 1), 30), Some(day(1, 30)));
        assert_eq!(retention_cutoff(day(3, 1), 0), Some(day(3, 1)));
    }
}
