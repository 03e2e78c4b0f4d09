//! `GET /` on the gateway: what a person who opens it in a browser (HTML) or a script that asks
//! for `application/json` learns about this server. Nothing of the request is echoed back.

use std::net::SocketAddr;

use serde_json::json;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// What `GET /` tells about this deployment.
#[derive(Debug, Clone, Default)]
pub struct About {
    /// The gateway serves TLS (`wss://`, `https://`).
    pub tls: bool,
    /// Where this process's admin listener is, and whether it serves TLS.
    pub admin: Option<(SocketAddr, bool)>,
}

const WEBSOCKET: &str = "/app/{key}?protocol=7";
const HTTP_API: [&str; 7] = [
    "POST /apps/{app_id}/events",
    "POST /apps/{app_id}/batch_events",
    "GET /apps/{app_id}/channels",
    "GET /apps/{app_id}/channels/{channel}",
    "GET /apps/{app_id}/channels/{channel}/users",
    "GET /apps/{app_id}/channels/{channel}/events",
    "POST /apps/{app_id}/users/{user_id}/terminate_connections",
];
/// Switchboard's own web client: the opt-in WebSocket (events with their ids) and history.
const WEB_CLIENT: [&str; 2] = [
    "/switchboard/app/{key}?protocol=7",
    "GET /app/{key}/channels/{channel}/events",
];
const SEGMENT_API: [&str; 7] = [
    "POST /v1/track",
    "POST /v1/identify",
    "POST /v1/page",
    "POST /v1/screen",
    "POST /v1/group",
    "POST /v1/alias",
    "POST /v1/batch",
];
const ADMIN: [&str; 3] = ["/health", "/ready", "/metrics"];

pub fn route(about: About) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::get())
        .and(warp::header::optional::<String>("accept"))
        .map(move |accept: Option<String>| {
            if wants_json(accept.as_deref()) {
                warp::reply::json(&describe(&about)).into_response()
            } else {
                let mut page = Response::new(page(&about).into());
                page.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                page
            }
        })
}

/// JSON only for a client that asks for it and not for HTML (browsers ask for HTML).
fn wants_json(accept: Option<&str>) -> bool {
    let types: Vec<&str> = accept
        .unwrap_or_default()
        .split(',')
        .map(|range| range.split(';').next().unwrap_or_default().trim())
        .collect();
    types.contains(&"application/json") && !types.contains(&"text/html")
}

fn describe(about: &About) -> serde_json::Value {
    let (ws, _) = schemes(about.tls);
    json!({
        "name": "Switchboard",
        "version": env!("CARGO_PKG_VERSION"),
        "websocket": format!("{ws}://<this host>{WEBSOCKET}"),
        "http_api": HTTP_API,
        "segment_api": SEGMENT_API,
        "web_client": WEB_CLIENT,
        "tls": about.tls,
        "admin": about.admin.map(|(addr, tls)| json!({
            "url": format!("{}://{addr}", schemes(tls).1),
            "paths": ADMIN,
        })),
    })
}

fn schemes(tls: bool) -> (&'static str, &'static str) {
    if tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    }
}

fn page(about: &About) -> String {
    let (ws, _) = schemes(about.tls);
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("<li><code>{item}</code></li>"))
            .collect::<String>()
    };
    let admin = match about.admin {
        Some((addr, tls)) => {
            let url = format!("{}://{addr}", schemes(tls).1);
            let paths: Vec<String> = ADMIN.iter().map(|path| format!("{url}{path}")).collect();
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            format!(
                "<p>Health, readiness and Prometheus metrics:</p><ul>{}</ul>",
                list(&paths)
            )
        }
        None => "<p>This process runs no admin listener.</p>".to_owned(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Switchboard</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}code{{background:#f2f2f2;padding:0 .2rem}}</style>
</head><body>
<h1>Switchboard {version}</h1>
<p>A self-hosted realtime and analytics server: Pusher Channels (protocol 7) and the Segment Tracking API.</p>
<h2>WebSocket (pusher-js, Laravel Echo)</h2>
<p><code>{ws}://&lt;this host&gt;{websocket}</code>: point pusher-js's <code>wsHost</code> and <code>wsPort</code> here{tls}.</p>
<h2>Pusher HTTP API (server SDKs)</h2><ul>{http_api}</ul>
<h2>Segment Tracking API</h2><p>The write key is an app's key.</p><ul>{segment_api}</ul>
<h2>Web client (event ids, <code>switchboard:track</code>, history)</h2><ul>{web_client}</ul>
<h2>Admin listener</h2>{admin}
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        websocket = WEBSOCKET,
        tls = if about.tls {
            " with <code>forceTLS: true</code>"
        } else {
            " with <code>forceTLS: false</code>"
        },
        http_api = list(&HTTP_API),
        segment_api = list(&SEGMENT_API),
        web_client = list(&WEB_CLIENT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_asked_for_and_html_is_not() {
        let check = |accept: Option<&str>, json: bool| {
            assert_eq!(wants_json(accept), json, "{accept:?}");
        };
        check(None, false);
        check(Some("*/*"), false);
        check(Some("application/json"), true);
        check(Some("application/json; charset=utf-8, */*;q=0.1"), true);
        check(
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            false,
        );
        check(Some("text/html, application/json"), false);
    }
}
