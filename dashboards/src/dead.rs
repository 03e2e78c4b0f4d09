//! The Dead letters view's endpoints: how many messages sit in the dead-letter queue and the
//! reasons of the first [`SAMPLE`], read without taking them (by the bus, through a closure
//! `src/lib.rs` hands in) — `GET /api/dead-letters`; and the failing webhook deliveries, read
//! from `webhook_deliveries` in a read-only transaction — `GET /api/webhook-failures`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// How many dead letters are read for their reasons.
pub const SAMPLE: usize = 100;

/// What the dead-letter queue holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterCounts {
    pub queue: String,
    pub depth: u64,
    pub sampled: usize,
    /// Each reason and how many of the sampled messages carry it, most frequent first.
    pub reasons: Vec<(String, u64)>,
}

/// The broker could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("the broker cannot be asked: {0}")]
pub struct Unavailable(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Reads the dead-letter queue (at most [`SAMPLE`] messages, taking none).
pub type DeadLetterSource = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<DeadLetterCounts, Unavailable>> + Send>>
        + Send
        + Sync,
>;

/// The answer of `GET /api/dead-letters`.
pub async fn answer(source: &DeadLetterSource) -> Response {
    match source().await {
        Ok(counts) => {
            let reasons: Vec<_> = counts
                .reasons
                .iter()
                .map(|(reason, count)| json!({ "reason": reason, "count": count }))
                .collect();
            warp::reply::json(&json!({
                "queue": counts.queue,
                "depth": counts.depth,
                "sampled": counts.sampled,
                "reasons": reasons,
            }))
            .into_response()
        }
        Err(unavailable) => {
            tracing::warn!(error = %unavailable, "dead letters unavailable");
            warp::reply::with_status(
                warp::reply::json(&json!({ "error": unavailable.to_string() })),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response()
        }
    }
}

/// Most (app, webhook, status) groups `GET /api/webhook-failures` answers with.
const MAX_WEBHOOK_GROUPS: i64 = 100;

/// Per app, webhook and status, the deliveries that failed at least once and are still
/// retried (`pending`) or were given up (`dead`), with the latest failure's reason.
const WEBHOOK_FAILURES: &str = "SELECT coalesce(json_agg(to_jsonb(t)), '[]'::json) FROM ( \
     SELECT app_id, webhook, status, count(*) AS deliveries, sum(attempts)::bigint AS attempts, \
            max(created_at) AS latest, \
            (array_agg(last_error ORDER BY created_at DESC))[1] AS last_error \
     FROM webhook_deliveries \
     WHERE status = 'dead' OR (status = 'pending' AND attempts > 0) \
     GROUP BY app_id, webhook, status \
     ORDER BY app_id, webhook, status \
     LIMIT $1) AS t";

/// The answer of `GET /api/webhook-failures`; `configured`: whether any app has a webhook.
pub async fn webhook_failures(pool: &PgPool, configured: bool) -> Response {
    let read = crate::read_only(
        pool,
        sqlx::query_scalar(WEBHOOK_FAILURES).bind(MAX_WEBHOOK_GROUPS),
    );
    match read.await {
        Ok(failures) => {
            warp::reply::json(&json!({ "configured": configured, "failures": failures }))
                .into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "webhook deliveries unavailable");
            warp::reply::with_status(
                warp::reply::json(&json!({ "error": "the webhook deliveries cannot be read" })),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response()
        }
    }
}
