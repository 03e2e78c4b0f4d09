//! `webhook_deliveries` (migrations/0004_webhooks.sql): new batches, claims with a lease, and
//! the outcome of each attempt. Every time is the database's clock, so workers whose clocks
//! differ agree on what is due, leased or past its retry period.

use std::time::Duration;

use chrono::{DateTime, Utc};
use protocol::webhook::{Body, EventType, WebhookEvent};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// A batch made by the intake, to insert.
#[derive(Debug)]
pub(crate) struct NewBatch {
    pub id: Uuid,
    pub app_id: String,
    pub webhook: String,
    pub events: Vec<WebhookEvent>,
}

impl NewBatch {
    fn event_types(&self) -> Vec<&'static str> {
        let mut types: Vec<EventType> = self.events.iter().map(WebhookEvent::event_type).collect();
        types.sort();
        types.dedup();
        types.into_iter().map(EventType::as_str).collect()
    }
}

/// Inserts `batches` in one transaction; nothing of them exists unless it commits.
pub(crate) async fn insert(pool: &PgPool, batches: &[NewBatch]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for batch in batches {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, app_id, webhook, event_types, events) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(batch.id)
        .bind(&batch.app_id)
        .bind(&batch.webhook)
        .bind(batch.event_types())
        .bind(Json(&batch.events))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A row claimed for one attempt.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Claimed {
    pub id: Uuid,
    events: Json<Vec<WebhookEvent>>,
    created_at: DateTime<Utc>,
    /// Attempts made before this one.
    pub attempts: i32,
}

impl Claimed {
    /// The exact body sent, the same on every attempt.
    pub fn body(&self) -> Vec<u8> {
        Body {
            time_ms: self.created_at.timestamp_millis(),
            events: self.events.0.clone(),
        }
        .encode()
    }

    pub fn events(&self) -> usize {
        self.events.0.len()
    }
}

/// Claims up to `limit` due rows of one webhook for `lease`, under `token`. Rows another worker
/// holds (locked, or leased and the lease not over) are skipped.
pub(crate) async fn claim(
    pool: &PgPool,
    app_id: &str,
    webhook: &str,
    limit: i64,
    lease: Duration,
    token: Uuid,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS ( \
             SELECT id FROM webhook_deliveries \
             WHERE app_id = $1 AND webhook = $2 AND status = 'pending' \
               AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
             ORDER BY next_attempt_at LIMIT $3 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE webhook_deliveries d \
         SET lease_until = now() + make_interval(secs => $4), lease_token = $5 \
         FROM due WHERE d.id = due.id \
         RETURNING d.id, d.events, d.created_at, d.attempts",
    )
    .bind(app_id)
    .bind(webhook)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_all(pool)
    .await
}

/// How long until the webhook's next pending row is due (zero if one is due now); `None` when
/// it has none.
pub(crate) async fn next_due(
    pool: &PgPool,
    app_id: &str,
    webhook: &str,
) -> Result<Option<Duration>, sqlx::Error> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at))) - now())::float8 \
         FROM webhook_deliveries WHERE app_id = $1 AND webhook = $2 AND status = 'pending'",
    )
    .bind(app_id)
    .bind(webhook)
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// The attempt under `token` succeeded.
pub(crate) async fn delivered(pool: &PgPool, id: Uuid, token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries \
         SET status = 'delivered', attempts = attempts + 1, delivered_at = now(), \
             last_attempt_at = now(), lease_until = NULL, lease_token = NULL \
         WHERE id = $1 AND lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .execute(pool)
    .await?;
    Ok(())
}

/// The attempt under `token` failed with `error`: the row is due again after `delay` (never past
/// the end of its retry period, so the last attempt comes at that end), or `dead` when the retry
/// period is over. Returns whether it is dead.
pub(crate) async fn failed(
    pool: &PgPool,
    id: Uuid,
    token: Uuid,
    error: &str,
    delay: Duration,
    retry_period: Duration,
) -> Result<bool, sqlx::Error> {
    let dead: Option<bool> = sqlx::query_scalar(
        "UPDATE webhook_deliveries \
         SET attempts = attempts + 1, last_error = $3, last_attempt_at = now(), \
             status = CASE WHEN now() >= created_at + make_interval(secs => $5) \
                           THEN 'dead' ELSE 'pending' END, \
             next_attempt_at = least(now() + make_interval(secs => $4), \
                                     created_at + make_interval(secs => $5)), \
             lease_until = NULL, lease_token = NULL \
         WHERE id = $1 AND lease_token = $2 \
         RETURNING status = 'dead'",
    )
    .bind(id)
    .bind(token)
    .bind(error)
    .bind(delay.as_secs_f64())
    .bind(retry_period.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(dead.unwrap_or(false))
}

/// Gives up the claims under `token` (shutdown): the rows are due again at once, for any worker.
pub(crate) async fn release(pool: &PgPool, ids: &[Uuid], token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET lease_until = NULL, lease_token = NULL \
         WHERE id = ANY($1) AND lease_token = $2",
    )
    .bind(ids)
    .bind(token)
    .execute(pool)
    .await?;
    Ok(())
}

/// Pending rows, and the age in seconds of the oldest (0 when none).
pub(crate) async fn pending(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) \
         FROM webhook_deliveries WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await
}

/// Deletes delivered rows older than `delivered` and dead rows older than `dead`; returns how
/// many went.
pub(crate) async fn prune(
    pool: &PgPool,
    delivered: Duration,
    dead: Duration,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "DELETE FROM webhook_deliveries \
         WHERE (status = 'delivered' AND created_at < now() - make_interval(secs => $1)) \
            OR (status = 'dead' AND created_at < now() - make_interval(secs => $2))",
    )
    .bind(delivered.as_secs_f64())
    .bind(dead.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
