//! The history queries: a channel's events in id order after a cursor, read through the
//! partitioned index `events (app_id, channel, id) INCLUDE (received_at)`. Every query bounds
//! `received_at` from below, so that only the partitions that can hold an answer are read.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// One stored event as history answers it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Row {
    pub id: Uuid,
    pub name: String,
    pub data: Json<Value>,
    pub user_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Up to `limit` events of the channel after `after` (and received at `since` or later), in id
/// order.
pub(super) async fn page(
    pool: &PgPool,
    app_id: &str,
    channel: &str,
    after: Uuid,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, data, user_id, received_at FROM events \
         WHERE app_id = $1 AND channel = $2 AND id > $3 AND received_at >= $4 \
         ORDER BY id LIMIT $5",
    )
    .bind(app_id)
    .bind(channel)
    .bind(after)
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many events of the channel follow `after` (received at `since` or later), counted up to
/// `at_most`.
pub(super) async fn count_after(
    pool: &PgPool,
    app_id: &str,
    channel: &str,
    after: Uuid,
    since: DateTime<Utc>,
    at_most: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT FROM events \
         WHERE app_id = $1 AND channel = $2 AND id > $3 AND received_at >= $4 LIMIT $5) AS after",
    )
    .bind(app_id)
    .bind(channel)
    .bind(after)
    .bind(since)
    .bind(at_most)
    .fetch_one(pool)
    .await
}

/// The id just before the channel's newest `newest` events received at `since` or later; `None`
/// when there are no more than that.
pub(super) async fn before_newest(
    pool: &PgPool,
    app_id: &str,
    channel: &str,
    since: DateTime<Utc>,
    newest: i64,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM events WHERE app_id = $1 AND channel = $2 AND received_at >= $3 \
         ORDER BY id DESC OFFSET $4 LIMIT 1",
    )
    .bind(app_id)
    .bind(channel)
    .bind(since)
    .bind(newest)
    .fetch_optional(pool)
    .await
}
