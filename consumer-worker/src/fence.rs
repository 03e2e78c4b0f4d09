//! The worker's side of the storage fence (ARCHITECTURE.md, "Decisions (history)"): a fence
//! taken from the persist queue is recorded in `persist_fences`, under the id of the consumer
//! that took it, once everything that consumer took before it is committed; the gateway that
//! published it waits until every consumer of the queue has recorded a copy.

use std::time::Duration;

use lapin::message::Delivery;
use sqlx::PgPool;
use uuid::Uuid;

/// How long a recorded fence is kept: a gateway waits for one at most 2 s.
pub(crate) const FENCE_KEPT: Duration = Duration::from_secs(60);

/// What a fence delivery says, or `None` when the delivery is not a fence.
pub(crate) fn token(delivery: &Delivery) -> Option<Result<Uuid, String>> {
    let kind = delivery.properties.kind().as_ref()?;
    if kind.as_str() != bus::FENCE_MESSAGE_TYPE {
        return None;
    }
    Some(
        std::str::from_utf8(&delivery.data)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| "a fence whose body is not a UUID".to_owned()),
    )
}

/// Records that `consumer` took the fences `tokens` after committing everything it took before.
pub(crate) async fn record(
    pool: &PgPool,
    tokens: &[Uuid],
    consumer: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO persist_fences (token, consumer) SELECT unnest($1::uuid[]), $2 \
         ON CONFLICT DO NOTHING",
    )
    .bind(tokens)
    .bind(consumer)
    .execute(pool)
    .await
    .map(drop)
}

/// Deletes the fences recorded more than [`FENCE_KEPT`] ago; returns how many.
pub(crate) async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM persist_fences WHERE recorded_at < now() - make_interval(secs => $1)",
    )
    .bind(FENCE_KEPT.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
