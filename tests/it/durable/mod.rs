//! Nothing acknowledged lost, nothing doubled: the publisher against a broker that goes away
//! (silent, or between a publish and its confirm), idempotency keys, batch `info` replies.

mod broker;
mod triggers;

use std::time::Duration;

use serde_json::Value;

use crate::common::{now, signed_query, TestServer, APP_ID, SECRET};

/// A signed `POST /apps/{APP_ID}/{endpoint}` with `body`, and `X-Idempotency-Key` values.
pub async fn post(
    addr: std::net::SocketAddr,
    endpoint: &str,
    body: &Value,
    keys: &[&[u8]],
) -> reqwest::Response {
    let path = format!("/apps/{APP_ID}/{endpoint}");
    let body = body.to_string();
    let query = signed_query("POST", &path, &body, SECRET, now());
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}{path}?{query}"))
        .header("content-type", "application/json")
        .body(body);
    for key in keys {
        request = request.header(
            "x-idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key).unwrap(),
        );
    }
    request.send().await.expect("request reaches the server")
}

pub async fn ready_status(server: &TestServer) -> u16 {
    reqwest::get(format!("http://{}/ready", server.admin))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Triggers `name` on `channel` until it is answered 200 (503s while the gateway reconnects).
pub async fn trigger_until_accepted(server: &TestServer, channel: &str, name: &str) {
    for _ in 0..200 {
        match server.trigger(channel, name, "{}").await.status().as_u16() {
            200 => return,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("unexpected status {other}"),
        }
    }
    panic!("{name} was never accepted");
}
