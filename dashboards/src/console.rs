//! The debug console's endpoints: where its Pusher client connects (`GET
//! /api/console/{app}`), the signature of its reserved channel (`POST …/auth`), the event
//! creator (`POST …/events`, through the same path as a backend's trigger), and the webhooks
//! sent and failed lately (`GET …/webhooks`, read from `webhook_deliveries`: the workers
//! deliver webhooks, so their attempts are not seen by a gateway's registry).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use protocol::channel::DEBUG_CHANNEL;
use protocol::signature::{channel_string_to_sign, debug_console_secret, sign};
use protocol::SocketId;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// An app as the console needs it.
#[derive(custom_debug::Debug, Clone)]
pub struct ConsoleApp {
    pub id: String,
    pub key: String,
    #[debug(skip)]
    pub secret: String,
}

/// The gateway's trigger (`ingest::console::trigger`): app id and the trigger's JSON body.
pub type Trigger =
    Arc<dyn Fn(String, Bytes) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// What the console endpoints serve from.
#[derive(custom_debug::Debug, Default)]
pub struct ConsoleConfig {
    pub apps: Vec<ConsoleApp>,
    /// The gateway's listener and whether it speaks TLS; `None` in a process without one.
    pub gateway: Option<(SocketAddr, bool)>,
    #[debug(skip)]
    pub trigger: Option<Trigger>,
}

/// Largest event-creator request accepted.
pub const MAX_BODY_BYTES: u64 = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    socket_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    channel: String,
    event: String,
    data: String,
}

/// `GET /api/console/{app}/webhooks?since=MS`: the attempts that ended after `since` (ms
/// since the epoch, the `now` of the previous answer; without it, none: the answer only says
/// `now`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookQuery {
    since: Option<i64>,
}

/// Most attempts one answer lists (the oldest first); the next poll goes on from the last.
const MAX_WEBHOOK_RECORDS: i64 = 200;

/// Attempts are read again this long before `since`: rows updated in transactions that commit
/// out of their clock's order are not missed (the console drops what it has already shown, by
/// id and attempt count).
const WEBHOOK_OVERLAP_MS: i64 = 2000;

/// The webhook attempts of an app that ended after `$2` (ms), as console records, each row as
/// its latest attempt left it (`error`: the latest failure's reason, kept once delivered, so a
/// delivery after failures says why they failed); and the database's clock, where the next
/// poll starts.
const WEBHOOK_ACTIVITY: &str = "SELECT json_build_object( \
       'now', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
       'records', coalesce((SELECT json_agg(r ORDER BY r.t) FROM ( \
           SELECT CASE WHEN status = 'delivered' THEN 'webhook_sent' ELSE 'webhook_failed' END \
                      AS type, \
                  floor(extract(epoch FROM last_attempt_at) * 1000)::bigint AS t, \
                  id, webhook, jsonb_array_length(events) AS events, event_types, attempts, \
                  last_error AS error, \
                  status = 'dead' AS dead \
           FROM webhook_deliveries \
           WHERE app_id = $1 AND $2::bigint IS NOT NULL \
             AND last_attempt_at > to_timestamp(($2 - $3) / 1000.0) \
           ORDER BY last_attempt_at LIMIT $4) AS r), '[]'::json))";

fn error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({ "error": message })), status)
        .into_response()
}

fn no_app() -> Response {
    error(StatusCode::NOT_FOUND, "no such app")
}

impl ConsoleConfig {
    fn app(&self, app_id: &str) -> Option<&ConsoleApp> {
        self.apps.iter().find(|app| app.id == app_id)
    }

    /// The app's webhook attempts since the last poll.
    pub async fn webhooks(&self, pool: &PgPool, app_id: &str, query: &WebhookQuery) -> Response {
        if self.app(app_id).is_none() {
            return no_app();
        }
        let read = crate::read_only(
            pool,
            sqlx::query_scalar(WEBHOOK_ACTIVITY)
                .bind(app_id)
                .bind(query.since)
                .bind(WEBHOOK_OVERLAP_MS)
                .bind(MAX_WEBHOOK_RECORDS),
        );
        match read.await {
            Ok(activity) => warp::reply::json(&activity).into_response(),
            Err(error) => {
                tracing::warn!(%error, "webhook attempts unavailable");
                self::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the webhook deliveries cannot be read",
                )
            }
        }
    }

    /// Where the console connects and which channel it joins.
    pub fn connection(&self, app_id: &str) -> Response {
        let Some(app) = self.app(app_id) else {
            return no_app();
        };
        let gateway = self.gateway.map(|(addr, tls)| {
            // An unspecified bind (0.0.0.0) is reached under the page's own host name.
            let host = (!addr.ip().is_unspecified()).then(|| addr.ip().to_string());
            json!({ "host": host, "port": addr.port(), "tls": tls })
        });
        warp::reply::json(&json!({
            "key": app.key,
            "channel": DEBUG_CHANNEL,
            "gateway": gateway,
        }))
        .into_response()
    }

    /// The `auth` of the debug channel for `socket_id`, signed with the console's secret.
    pub fn authorize(&self, app_id: &str, request: &AuthRequest) -> Response {
        let Some(app) = self.app(app_id) else {
            return no_app();
        };
        if !SocketId::is_valid(&request.socket_id) {
            return error(StatusCode::BAD_REQUEST, "socket_id: not a socket id");
        }
        let signed = channel_string_to_sign(&request.socket_id, DEBUG_CHANNEL, None);
        let signature = sign(&debug_console_secret(&app.secret), signed.as_bytes());
        warp::reply::json(&json!({ "auth": format!("{}:{signature}", app.key) })).into_response()
    }

    /// Triggers the event as a backend would: the gateway's answer is the answer.
    pub async fn trigger(&self, app_id: &str, request: EventRequest) -> Response {
        if self.app(app_id).is_none() {
            return no_app();
        }
        let Some(trigger) = &self.trigger else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this process has no gateway to trigger through",
            );
        };
        let body = json!({
            "name": request.event,
            "channels": [request.channel],
            "data": request.data,
        });
        trigger(app_id.to_owned(), Bytes::from(body.to_string())).await
    }
}
