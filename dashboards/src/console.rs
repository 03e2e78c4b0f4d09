//! The debug console's endpoints: where its Pusher client connects (`GET
//! /api/console/{app}`), the signature of its reserved channel (`POST …/auth`), and the event
//! creator (`POST …/events`, through the same path as a backend's trigger).

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
