//! The Dead letters view's endpoint (`GET /api/dead-letters`): how many messages sit in the
//! dead-letter queue and the reasons of the first [`SAMPLE`], read without taking them (by the
//! bus, through a closure `src/lib.rs` hands in); webhooks' failing deliveries will join it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::json;
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
                "webhooks": null,
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
