//! History (README, "History"): a channel's events from Postgres in id order, for a backend
//! (`GET /apps/{app_id}/channels/{channel}/events`, signed, answered through `http_api`) and for
//! a browser recovering after a reconnect (`GET /app/{key}/channels/{channel}/events`,
//! authorized like a subscription, with CORS).
//!
//! Before it reads, a request passes the storage fence ([`fence`]): every event confirmed before
//! it arrived is in Postgres, or it is answered 503 — never an incomplete page presented as
//! complete. The recovery window (`[history]`: hours, and events per channel) bounds what a
//! request may ask for: beyond it, 410.

mod fence;
mod store;

use std::sync::Arc;
use std::time::Duration;

use bus::FencePublisher;
use chrono::{DateTime, SecondsFormat, Utc};
use protocol::envelope::id_time;
use protocol::{Channel, ChannelKind};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::channel_auth::{self, ChannelAuthError};
use crate::error::{self, ApiError};
use crate::{Apps, Gateway};

use fence::StorageFence;
pub use fence::{FenceError, FENCE_TIMEOUT};

/// Most events in one page.
pub const MAX_LIMIT: u32 = 1000;
/// Events in a page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// Database connections the history queries (and the fence) use at once.
const CONNECTIONS: u32 = 4;
/// How long one history query may run.
const STATEMENT_TIMEOUT: &str = "5s";
/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How much earlier than its id's millisecond an event may have been received: none since ids
/// are made from `received_at`; a minute for rows written before (a Segment request's events
/// took the request's arrival, their ids were made later), so those are found too.
const RECEIVED_BEFORE_ID: chrono::Duration = chrono::Duration::minutes(1);

/// The recovery window.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// How far back `after` may be.
    pub window: Duration,
    /// Most events of a channel after `after`.
    pub max_events: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            window: Duration::from_secs(24 * 3600),
            max_events: 10_000,
        }
    }
}

/// Why a history request was refused.
#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("after must be an event id (a UUIDv7)")]
    BadCursor,
    #[error("limit must be an integer from 1 to {MAX_LIMIT}")]
    BadLimit,
    #[error("query string is not valid")]
    BadQuery,
    #[error("after is beyond the recovery window: its event is older than {hours} hours")]
    TooOld { hours: u64 },
    #[error(
        "after is beyond the recovery window: more than {max} events of the channel follow it"
    )]
    TooMany { max: u32 },
    #[error("#server-to-user channels have no history on this route: ask your backend")]
    ServerToUser,
    #[error("history is not available: {0}; retry later")]
    Fence(#[from] FenceError),
    #[error("history is not available: the database did not answer; retry later")]
    Database(#[source] sqlx::Error),
}

impl HistoryError {
    pub fn status(&self) -> StatusCode {
        match self {
            HistoryError::BadCursor | HistoryError::BadLimit | HistoryError::BadQuery => {
                StatusCode::BAD_REQUEST
            }
            HistoryError::TooOld { .. } | HistoryError::TooMany { .. } => StatusCode::GONE,
            HistoryError::ServerToUser => StatusCode::FORBIDDEN,
            HistoryError::Fence(_) | HistoryError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What a request asks for: events after `after` (from the start of the window when absent),
/// `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    after: Option<Uuid>,
    limit: u32,
}

impl HistoryQuery {
    pub fn parse(after: Option<&str>, limit: Option<&str>) -> Result<Self, HistoryError> {
        let after = after
            .map(|text| {
                text.parse::<Uuid>()
                    .ok()
                    .filter(|id| id_time(id).is_some())
                    .ok_or(HistoryError::BadCursor)
            })
            .transpose()?;
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or(HistoryError::BadLimit)?,
        };
        Ok(HistoryQuery { after, limit })
    }
}

/// The history of this gateway: its read-only pool, the recovery window and the fence.
pub struct History {
    config: HistoryConfig,
    pool: PgPool,
    fence: StorageFence,
}

impl History {
    /// A lazy pool of a few read-only connections to `database_url` (nothing connects until a
    /// request comes), and the fence task on `tracker`.
    pub fn new(
        database_url: &str,
        config: HistoryConfig,
        fences: FencePublisher,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<History, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(FENCE_TIMEOUT)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection
                        .execute("SET default_transaction_read_only = on")
                        .await?;
                    connection
                        .execute(format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'").as_str())
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy(database_url)?;
        let fence = StorageFence::spawn(fences, pool.clone(), tracker, shutdown);
        Ok(History {
            config,
            pool,
            fence,
        })
    }

    /// The page `query` asks for of `channel` (already authorized), once the storage fence is
    /// passed: `{"events": [{id, event, data, user_id, received_at}], "next": id | null}`.
    pub async fn answer(
        &self,
        app_id: &str,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<Value, HistoryError> {
        // Beyond the window by age: refused before waiting for the fence.
        query.since(&self.config, Utc::now())?;
        self.fence.wait().await?;
        read(&self.pool, &self.config, app_id, channel, query).await
    }
}

impl HistoryQuery {
    /// The earliest `received_at` an answer can have: the window's start, or (a minute before)
    /// the time of `after` — which is refused when it is older than the window.
    fn since(
        &self,
        config: &HistoryConfig,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, HistoryError> {
        let window_start = chrono::Duration::from_std(config.window)
            .ok()
            .and_then(|window| now.checked_sub_signed(window))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        match self.after.map(|after| id_time(&after)) {
            Some(Some(time)) if time < window_start => Err(HistoryError::TooOld {
                hours: config.window.as_secs() / 3600,
            }),
            Some(Some(time)) => Ok(time - RECEIVED_BEFORE_ID),
            Some(None) => Err(HistoryError::BadCursor),
            None => Ok(window_start),
        }
    }
}

/// Reads the page `query` asks for of `channel` from `pool`, as [`History::answer`] does once
/// the storage fence is passed (and as `switchboard-bench history-query` times it).
pub async fn read(
    pool: &PgPool,
    config: &HistoryConfig,
    app_id: &str,
    channel: &str,
    query: HistoryQuery,
) -> Result<Value, HistoryError> {
    let since = query.since(config, Utc::now())?;
    let max_events = i64::from(config.max_events);
    let after = match query.after {
        Some(after) => after,
        // From the start of the window: its time, or its newest `max_events` events.
        None => store::before_newest(pool, app_id, channel, since, max_events)
            .await
            .map_err(HistoryError::Database)?
            .unwrap_or(Uuid::nil()),
    };
    let limit = i64::from(query.limit);
    let rows = store::page(pool, app_id, channel, after, since, limit)
        .await
        .map_err(HistoryError::Database)?;
    let full = rows.len() as i64 == limit;
    if query.after.is_some() && (full || rows.len() as i64 > max_events) {
        let following = store::count_after(pool, app_id, channel, after, since, max_events + 1)
            .await
            .map_err(HistoryError::Database)?;
        if following > max_events {
            return Err(HistoryError::TooMany {
                max: config.max_events,
            });
        }
    }
    let next = rows.last().filter(|_| full).map(|row| row.id.to_string());
    let events: Vec<Value> = rows.into_iter().map(event_json).collect();
    Ok(json!({ "events": events, "next": next }))
}

/// One event as history answers it: `data` is what a live frame carries, the stored JSON value
/// as compact text, or the string itself when it is a JSON string.
fn event_json(row: store::Row) -> Value {
    let data = match row.data.0 {
        Value::String(text) => text,
        other => other.to_string(),
    };
    json!({
        "id": row.id.to_string(),
        "event": row.name,
        "data": data,
        "user_id": row.user_id,
        "received_at": timestamp(row.received_at),
    })
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A channel name from the path, percent-decoded (a browser encodes `=`, `@`, `,` and `;`).
pub(crate) fn channel_from_path(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|name| name.into_owned())
        .map_err(|_| ApiError::InvalidChannelEncoding)
}

/// `GET /app/{key}/channels/{channel}/events`, with CORS (any origin; preflights answered, the
/// headers on errors too).
pub fn browser_route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let cors = warp::cors()
        .allow_any_origin()
        .allow_methods(["GET"])
        .max_age(CORS_MAX_AGE);
    let answer = warp::get()
        .and(warp::path::full())
        .and(crate::raw_query())
        .and(warp::any().map(move || gateway.clone()))
        .then(
            |path: warp::path::FullPath, query: String, gateway: Arc<Gateway>| async move {
                match browser(&gateway, path.as_str(), &query).await {
                    Ok(body) => warp::reply::json(&body).into_response(),
                    Err(error) => {
                        tracing::debug!(%error, "history request refused");
                        error.into_response()
                    }
                }
            },
        )
        .recover(error::recover)
        .unify()
        .with(cors)
        .map(Reply::into_response);
    // The path is matched first, so that CORS answers preflights of this route only.
    warp::path!("app" / String / "channels" / String / "events")
        .map(|_: String, _: String| ())
        .untuple_one()
        .and(answer)
}

/// The browser route: the app by key, the channel authorized like a subscription (private and
/// presence ones with `socket_id`, `auth` and, for presence, `channel_data`).
async fn browser(gateway: &Gateway, path: &str, query: &str) -> Result<Value, ApiError> {
    let (key, channel) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "app", key, "channels", channel, "events"] => (*key, *channel),
        _ => return Err(ApiError::UnknownAppKey),
    };
    let app = app_by_key(&gateway.apps, key)?;
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| HistoryError::BadQuery)?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let name = channel_from_path(channel)?;
    let parsed = Channel::parse(&name).map_err(|source| ApiError::InvalidChannel {
        name: name.clone(),
        source,
    })?;
    if parsed.kind == ChannelKind::ServerToUser {
        return Err(HistoryError::ServerToUser.into());
    }
    if parsed.kind != ChannelKind::Public {
        let socket_id = param("socket_id").ok_or(ChannelAuthError::MissingAuth)?;
        channel_auth::authorize(
            app,
            &parsed,
            socket_id,
            param("auth"),
            param("channel_data"),
            None,
        )?;
    }
    let query = HistoryQuery::parse(param("after"), param("limit"))?;
    Ok(gateway.history.answer(&app.id, &name, query).await?)
}

fn app_by_key<'a>(apps: &'a Apps, key: &str) -> Result<&'a Arc<crate::App>, ApiError> {
    let app = apps.by_key(key).ok_or(ApiError::UnknownAppKey)?;
    if !app.enabled {
        return Err(ApiError::AppDisabled);
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        let id = Uuid::now_v7();
        let text = id.to_string();
        assert_eq!(
            HistoryQuery::parse(Some(&text), Some("1000")).unwrap(),
            HistoryQuery {
                after: Some(id),
                limit: 1000
            }
        );
        assert_eq!(
            HistoryQuery::parse(None, None).unwrap(),
            HistoryQuery {
                after: None,
                limit: DEFAULT_LIMIT
            }
        );
        for limit in ["0", "1001", "-1", "ten", ""] {
            assert!(matches!(
                HistoryQuery::parse(None, Some(limit)),
                Err(HistoryError::BadLimit)
            ));
        }
        let v4 = Uuid::new_v4().to_string();
        for after in ["", "nope", v4.as_str()] {
            assert!(matches!(
                HistoryQuery::parse(Some(after), None),
                Err(HistoryError::BadCursor)
            ));
        }
    }

    #[test]
    fn data_is_what_a_live_frame_carries() {
        let row = |data: Value| store::Row {
            id: Uuid::nil(),
            name: "e".into(),
            data: sqlx::types::Json(data),
            user_id: None,
            received_at: DateTime::parse_from_rfc3339("2025-03-01T12:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let event = event_json(row(json!({"a": [1, 2]})));
        assert_eq!(event["data"], r#"{"a":[1,2]}"#);
        assert_eq!(event["received_at"], "2025-03-01T12:00:00.123456Z");
        assert_eq!(event["user_id"], Value::Null);
        assert_eq!(event_json(row(json!("plain text")))["data"], "plain text");
        assert_eq!(event_json(row(json!(42)))["data"], "42");
    }

    #[test]
    fn channel_names_are_percent_decoded() {
        assert_eq!(
            channel_from_path("presence-a%40b%3Dc").unwrap(),
            "presence-a@b=c"
        );
        assert_eq!(channel_from_path("private-x").unwrap(), "private-x");
        assert!(channel_from_path("%FF").is_err());
    }
}
