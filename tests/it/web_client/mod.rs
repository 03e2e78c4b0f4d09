//! Issue 11, the server side of the web client: event ids on the opt-in path
//! (`/switchboard/app/{key}`), analytics over the WebSocket (`switchboard:track`), history from
//! Postgres behind the storage fence, and recovery after a cut.

mod fence;
mod history;
mod opt_in;
mod recovery;
mod track;

use serde_json::{json, Value};

use crate::common::ws::{data, Client};
use crate::common::{self, TestServer, APP_ID, KEY};

/// The opt-in path's URL, with the query string pusher-js sends.
pub fn opt_in_url(server: &TestServer) -> String {
    format!(
        "ws://{}/switchboard/app/{KEY}?protocol=7&client=js&version=8.4.0&flash=false",
        server.http
    )
}

/// A connection on the opt-in path.
pub async fn connect_opted_in(server: &TestServer) -> Client {
    Client::connect(&opt_in_url(server)).await
}

pub fn channel_name(prefix: &str) -> String {
    format!("{prefix}-{}", common::random_suffix())
}

/// A Segment track event named by `message_id`.
pub fn track_event(message_id: &str) -> Value {
    json!({"type": "track", "event": "Clicked", "userId": "u1", "messageId": message_id})
}

/// Sends one `switchboard:track` frame with `events`.
pub async fn send_batch(client: &mut Client, events: &[Value]) {
    client
        .send(json!({"event": "switchboard:track", "data": {"batch": events}}))
        .await;
}

/// An answer to a track batch: `switchboard:ack` or `switchboard:nack`, its data parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ack(Vec<String>),
    Nack {
        ids: Vec<String>,
        reason: String,
        retry: bool,
    },
}

/// The next ack or nack (other frames, pings included, are skipped).
pub async fn next_answer(client: &mut Client) -> Answer {
    loop {
        let frame = client.next_event().await;
        let ids = |data: &Value| -> Vec<String> {
            data["messageIds"]
                .as_array()
                .expect("messageIds")
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect()
        };
        match frame["event"].as_str() {
            Some("switchboard:ack") => return Answer::Ack(ids(&data(&frame))),
            Some("switchboard:nack") => {
                let data = data(&frame);
                return Answer::Nack {
                    ids: ids(&data),
                    reason: data["reason"].as_str().unwrap().to_owned(),
                    retry: data["retry"].as_bool().unwrap(),
                };
            }
            _ => continue,
        }
    }
}

/// How many rows of `events` carry one of `message_ids`.
pub async fn stored(server: &TestServer, message_ids: &[String]) -> i64 {
    let ids: Vec<&str> = message_ids.iter().map(String::as_str).collect();
    sqlx::query_scalar("SELECT count(*) FROM events WHERE message_id = ANY($1)")
        .bind(&ids)
        .fetch_one(&mut server.db().await)
        .await
        .unwrap()
}

/// A signed `GET /apps/{APP_ID}/channels/{channel}/events` with `query` (`k=v&…`).
pub async fn signed_history(server: &TestServer, channel: &str, query: &str) -> reqwest::Response {
    server
        .get_signed(&format!("/apps/{APP_ID}/channels/{channel}/events"), query)
        .await
}

/// The browser's `GET /app/{key}/channels/{channel}/events?{query}` from `https://app.example`.
pub async fn browser_history(
    server: &TestServer,
    key: &str,
    channel: &str,
    query: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .get(server.url(&format!("/app/{key}/channels/{channel}/events?{query}")))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("request reaches the server")
}

/// A 200 history page: its events and `next`.
pub async fn page(response: reqwest::Response) -> (Vec<Value>, Option<String>) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let events = body["events"].as_array().expect("events").clone();
    (events, body["next"].as_str().map(str::to_owned))
}

/// Triggers `count` events named `name` on `channel`, `{"i":N}` each, ten per batch request.
pub async fn trigger_numbered(server: &TestServer, channel: &str, name: &str, count: usize) {
    let mut sent = 0;
    while sent < count {
        let batch: Vec<Value> = (sent..count.min(sent + 10))
            .map(|i| json!({"channel": channel, "name": name, "data": format!(r#"{{"i":{i}}}"#)}))
            .collect();
        sent += batch.len();
        let body = json!({ "batch": batch }).to_string();
        let response = server
            .post_signed(&format!("/apps/{APP_ID}/batch_events"), &body)
            .await;
        assert_eq!(response.status(), 200);
    }
}
