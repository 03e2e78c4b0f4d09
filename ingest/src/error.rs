//! HTTP API errors and the one place that maps them to a status and a JSON body.

use bus::PublishError;
use protocol::segment::{BodyError, InvalidEvents};
use protocol::signature::{HttpAuthError, QueryError};
use protocol::ChannelError;
use thiserror::Error;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::body;
use crate::channel_auth::ChannelAuthError;
use crate::history::HistoryError;

/// Seconds a client is told to wait when the broker cannot take events.
pub const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("unknown app id")]
    UnknownApp,
    #[error("app is disabled")]
    AppDisabled,
    #[error(transparent)]
    Unauthorized(#[from] HttpAuthError),
    #[error("query string is not valid: {0}")]
    BadQuery(#[source] QueryError),
    #[error("body is not a valid trigger: {0}")]
    BadBody(#[source] serde_json::Error),
    #[error("invalid channel {name:?}: {source}")]
    InvalidChannel {
        name: String,
        #[source]
        source: ChannelError,
    },
    #[error("{0:?} is reserved for the dashboard's debug console")]
    ReservedChannel(String),
    #[error("give `channel` or `channels` (at least one)")]
    NoChannels,
    #[error("{count} channels given; at most {max} per trigger")]
    TooManyChannels { count: usize, max: usize },
    #[error("event name must be 1 to {max} characters")]
    InvalidEventName { max: usize },
    #[error("socket_id {0:?} is not of the form 123.456")]
    InvalidSocketId(String),
    #[error("event data is {size} bytes; the limit is {max}")]
    DataTooLarge { size: usize, max: usize },
    #[error("request body is larger than {max} bytes")]
    BodyTooLarge { max: u64 },
    #[error("a trigger to several channels cannot include the encrypted channel {0:?}")]
    EncryptedMultiChannel(String),
    #[error("{count} events in the batch; at most {max}")]
    BatchTooLarge { count: usize, max: usize },
    #[error("info attribute {attribute:?} {reason}")]
    InvalidInfo {
        attribute: String,
        reason: &'static str,
    },
    #[error("{0:?} is not a presence channel")]
    NotPresence(String),
    #[error("user id must be 1 to 128 characters")]
    InvalidUserId,
    #[error("X-Idempotency-Key must be one header of 1 to {max} visible ASCII characters")]
    InvalidIdempotencyKey { max: usize },
    #[error("events could not be accepted: {0}; retry later")]
    Unavailable(#[source] PublishError),
    #[error("no write key: send it as the Basic username or as `writeKey` in the body")]
    MissingWriteKey,
    #[error("unknown write key")]
    UnknownWriteKey,
    #[error("Authorization must be Basic with the write key as the username")]
    BadAuthorization,
    #[error("Content-Encoding must be gzip or identity")]
    UnsupportedEncoding,
    #[error("body is not valid gzip: {0}")]
    BadGzip(#[source] std::io::Error),
    #[error("decompressed body is larger than {max} bytes")]
    DecompressedTooLarge { max: usize },
    #[error(transparent)]
    SegmentBody(#[from] BodyError),
    #[error(transparent)]
    InvalidEvents(#[from] InvalidEvents),
    #[error("unknown app key")]
    UnknownAppKey,
    #[error("channel name is not percent-encoded UTF-8")]
    InvalidChannelEncoding,
    #[error(transparent)]
    ChannelAuth(#[from] ChannelAuthError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownApp | ApiError::UnknownAppKey => StatusCode::NOT_FOUND,
            ApiError::AppDisabled => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadQuery(_)
            | ApiError::BadBody(_)
            | ApiError::InvalidChannel { .. }
            | ApiError::ReservedChannel(_)
            | ApiError::NoChannels
            | ApiError::TooManyChannels { .. }
            | ApiError::InvalidEventName { .. }
            | ApiError::InvalidSocketId(_)
            | ApiError::EncryptedMultiChannel(_)
            | ApiError::BatchTooLarge { .. }
            | ApiError::InvalidInfo { .. }
            | ApiError::NotPresence(_)
            | ApiError::InvalidUserId
            | ApiError::InvalidIdempotencyKey { .. }
            | ApiError::InvalidChannelEncoding
            | ApiError::BadGzip(_) => StatusCode::BAD_REQUEST,
            ApiError::SegmentBody(body) if body.too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SegmentBody(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidEvents(invalid) if invalid.too_large() => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::InvalidEvents(_) => StatusCode::BAD_REQUEST,
            ApiError::DataTooLarge { .. }
            | ApiError::BodyTooLarge { .. }
            | ApiError::DecompressedTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MissingWriteKey | ApiError::UnknownWriteKey | ApiError::BadAuthorization => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ChannelAuth(_) => StatusCode::UNAUTHORIZED,
            ApiError::History(error) => error.status(),
        }
    }
}

/// Renders any error as `{"error": "..."}` with its status (and `Retry-After` for 503).
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = warp::reply::json(&serde_json::json!({ "error": message }));
    let mut response = warp::reply::with_status(body, status).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", RETRY_AFTER_SECS.into());
    }
    response
}

impl Reply for ApiError {
    /// `{"error": …}`; invalid Segment events also get `"errors": [{"index", "reason"}, …]`.
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::InvalidEvents(InvalidEvents(invalid)) => {
                let errors: Vec<serde_json::Value> = invalid
                    .iter()
                    .map(|(index, reason)| {
                        serde_json::json!({ "index": index, "reason": reason.to_string() })
                    })
                    .collect();
                let body = serde_json::json!({ "error": self.to_string(), "errors": errors });
                warp::reply::with_status(warp::reply::json(&body), status).into_response()
            }
            _ => error_response(status, &self.to_string()),
        }
    }
}

/// Renders warp's own rejections (unknown route, wrong method, body limits) in the same shape.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_owned())
    } else if rejection.find::<body::TooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is too large".to_owned(),
        )
    } else if let Some(body::Unreadable(error)) = rejection.find() {
        (
            StatusCode::BAD_REQUEST,
            format!("request body could not be read: {error}"),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else {
        (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
    };
    Ok(error_response(status, &message))
}

/// Displays an error with its chain of sources, each cause once: a source whose text the
/// message already holds (an error that prints its source and also returns it) is skipped.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    enum Outer {
        #[error("cannot listen on 127.0.0.1:1: {0}")]
        Repeats(#[source] std::io::Error),
        #[error("cannot listen on 127.0.0.1:1")]
        Adds(#[source] std::io::Error),
    }

    #[test]
    fn chain_prints_each_cause_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let expected = format!("cannot listen on 127.0.0.1:1: {}", io());
        assert_eq!(Chain(&Outer::Repeats(io())).to_string(), expected);
        assert_eq!(Chain(&Outer::Adds(io())).to_string(), expected);
    }
}
