//! The Segment Tracking API end to end: raw HTTP in, rows (and rollups) in Postgres. Beside
//! this module: `enrich` (clock skew, user agents, client addresses), `limits` (what one
//! request may expand into, big bodies), `live` (the apps' analytics channels) and `reports`
//! (the `reports` schema against fixture data, the analyst role and the example queries of
//! docs/REPORTS.md).

mod enrich;
mod limits;
mod live;
mod reports;
mod reports_api;

use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use protocol::segment::{Edge, Endpoint, Request};
use serde_json::{json, Value};
use sqlx::Row;

use crate::common::{amqp_url_via, broker_proxy, TestServer, APP_ID, KEY};

pub(super) const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
pub(super) const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
pub(super) const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
pub(super) const GOOGLEBOT: &str =
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

pub(super) const ROWS_SQL: &str = "SELECT count(*) FROM events";

pub(super) fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub(super) fn v1(server: &TestServer, call: &str) -> String {
    server.url(&format!("/v1/{call}"))
}

pub(super) async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /v1/{call}` with the write key as the Basic username.
pub(super) async fn post(server: &TestServer, call: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(v1(server, call))
        .basic_auth(KEY, Some(""))
        .json(body)
        .send()
        .await
        .unwrap();
    status_and_body(response).await
}

pub(super) fn ok() -> (u16, Value) {
    (200, json!({"success": true}))
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub(super) fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn batch_is_stored_with_its_promoted_columns() {
    let server = TestServer::start().await;
    let batch = json!({
        "batch": [
            {"type": "page", "anonymousId": "anon-1", "messageId": "p-1",
             "properties": {"title": "Pricing"},
             "context": {"page": {"url": "https://shop.example/pricing?utm_source=news&utm_medium=email&utm_campaign=launch&utm_term=t&utm_content=c",
                                  "path": "/pricing", "referrer": "https://www.google.com/",
                                  "search": "?utm_source=news&utm_medium=email&utm_campaign=launch&utm_term=t&utm_content=c"},
                         "userAgent": CHROME, "locale": "en-GB"}},
            {"type": "track", "userId": "user-1", "event": "Order Completed", "messageId": "t-1",
             "properties": {"total": 42}},
            {"type": "identify", "userId": "user-1", "traits": {"plan": "pro"}},
            {"type": "group", "userId": "user-1", "groupId": "acme"},
            {"type": "alias", "userId": "user-1", "previousId": "anon-1"},
            {"type": "screen", "userId": "user-1", "name": "Home"}
        ],
        "context": {"library": {"name": "raw-http", "version": "1"}}
    });
    assert_eq!(post(&server, "batch", &batch).await, ok());
    assert_eq!(server.wait_count(ROWS_SQL, 6).await, 6);

    let mut db = server.db().await;
    let rows = sqlx::query(
        "SELECT source, channel, name, type, message_id, user_id, anonymous_id, data, context,
                page_url, page_path, page_referrer, page_search, page_title,
                utm_source, utm_medium, utm_campaign, utm_term, utm_content, host(ip) AS ip,
                browser, os, device_class, is_bot, group_id, previous_id
         FROM events ORDER BY message_id = 'p-1' DESC, message_id = 't-1' DESC, type",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let text = |i: usize, column: &str| rows[i].get::<Option<String>, _>(column);
    let s = |v: &str| Some(v.to_owned());
    // The page call.
    assert_eq!(text(0, "source"), s("track"));
    assert_eq!(text(0, "channel"), s("private-analytics"));
    assert_eq!(text(0, "name"), s("page"));
    assert_eq!(text(0, "type"), s("page"));
    assert_eq!(text(0, "anonymous_id"), s("anon-1"));
    assert_eq!(text(0, "page_path"), s("/pricing"));
    assert_eq!(text(0, "page_title"), s("Pricing"), "from properties");
    assert_eq!(text(0, "page_referrer"), s("https://www.google.com/"));
    assert!(text(0, "page_url")
        .unwrap()
        .starts_with("https://shop.example/pricing?"));
    assert!(text(0, "page_search")
        .unwrap()
        .starts_with("?utm_source=news"));
    assert_eq!(text(0, "utm_source"), s("news"));
    assert_eq!(text(0, "utm_medium"), s("email"));
    assert_eq!(text(0, "utm_campaign"), s("launch"));
    assert_eq!(text(0, "utm_term"), s("t"));
    assert_eq!(text(0, "utm_content"), s("c"));
    assert_eq!(text(0, "ip"), s("127.0.0.1"));
    assert_eq!(text(0, "browser"), s("Chrome"));
    assert_eq!(text(0, "os"), s("Windows 10"));
    assert_eq!(text(0, "device_class"), s("desktop"));
    assert!(!rows[0].get::<bool, _>("is_bot"));
    let context: Value = rows[0].get("context");
    assert_eq!(context["locale"], "en-GB");
    assert_eq!(
        context["library"]["name"], "raw-http",
        "batch context merged"
    );
    // The track call: data is the event as sent.
    assert_eq!(text(1, "name"), s("Order Completed"));
    assert_eq!(text(1, "user_id"), s("user-1"));
    let data: Value = rows[1].get("data");
    assert_eq!(data["properties"]["total"], 42);
    assert_eq!(data["event"], "Order Completed");
    // The others, by type: alias, group, identify, screen.
    let types: Vec<_> = (2..6).map(|i| text(i, "type").unwrap()).collect();
    assert_eq!(types, ["alias", "group", "identify", "screen"]);
    let names: Vec<_> = (2..6).map(|i| text(i, "name").unwrap()).collect();
    assert_eq!(names, types, "non-track calls are named by their type");
    assert_eq!(text(2, "previous_id"), s("anon-1"));
    assert_eq!(text(3, "group_id"), s("acme"));
    // A missing messageId is generated at the edge.
    let generated: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE message_id = id::text")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(generated, 4);
    server.cleanup().await;
}

#[tokio::test]
async fn write_keys_limits_encodings_and_cors() {
    let server = TestServer::start().await;
    let event = |id: &str| json!({"userId": "u", "event": "Clicked", "messageId": id});
    let mut accepted = 0;

    // Basic auth, and `writeKey` in the body.
    assert_eq!(post(&server, "track", &event("basic")).await, ok());
    accepted += 1;
    let mut body = event("body-key");
    body["writeKey"] = json!(KEY);
    let response = http()
        .post(v1(&server, "track"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_body(response).await, ok());
    accepted += 1;

    // Unknown or missing keys: 401.
    let (status, error) = status_and_body(
        http()
            .post(v1(&server, "track"))
            .basic_auth("no-such-key", Some(""))
            .json(&event("x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (401, Some("unknown write key"))
    );
    let mut wrong = event("x");
    wrong["writeKey"] = json!("no-such-key");
    let response = http()
        .post(v1(&server, "track"))
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = http()
        .post(v1(&server, "track"))
        .json(&event("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Invalid events: 400 naming each one.
    let (status, error) = post(&server, "track", &json!({"userId": "u"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["errors"],
        json!([{"index": 0, "reason": "`event` is required for this call"}])
    );
    let (status, error) = post(
        &server,
        "batch",
        &json!({"batch": [
            {"type": "track", "userId": "u", "event": "fine"},
            {"type": "track", "event": "anonymous"},
            {"type": "page", "userId": "u"},
            {"type": "teleport", "userId": "u"}
        ]}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(
        error["errors"],
        json!([
            {"index": 1, "reason": "userId or anonymousId is required"},
            {"index": 3, "reason": "`type` must be one of track, identify, page, screen, group, alias"}
        ])
    );
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("2 invalid events"),
        "{error}"
    );
    let response = http()
        .post(v1(&server, "batch"))
        .basic_auth(KEY, Some(""))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Sizes: 32 KB per event, 500 KB per request.
    let mut big = event("big");
    big["properties"] = json!({"blob": "x".repeat(33 * 1024)});
    let (status, error) = post(&server, "track", &big).await;
    assert_eq!(status, 413, "{error}");
    let many: Vec<Value> = (0..20)
        .map(|i| {
            json!({"type": "track", "userId": "u", "event": "e", "messageId": format!("m{i}"),
                        "properties": {"blob": "x".repeat(30 * 1024)}})
        })
        .collect();
    let (status, _) = post(&server, "batch", &json!({ "batch": many })).await;
    assert_eq!(status, 413);

    // gzip; a gzip bomb is refused after inflating at most the cap.
    let typed = [event("gz-1"), event("gz-2")].map(|mut e| {
        e["type"] = json!("track");
        e
    });
    let batch = json!({ "batch": typed });
    let response = http()
        .post(v1(&server, "batch"))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(batch.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_body(response).await, ok());
    accepted += 2;
    let mut padded = br#"{"batch":[{"type":"track","userId":"u","event":"e"}],"pad":""#.to_vec();
    padded.extend(std::iter::repeat_n(b' ', 64 * 1024 * 1024));
    padded.extend(br#""}"#);
    let bomb = gzip(&padded);
    assert!(bomb.len() < 200 * 1024, "the bomb is small: {}", bomb.len());
    let started = std::time::Instant::now();
    let (status, error) = status_and_body(
        http()
            .post(v1(&server, "batch"))
            .basic_auth(KEY, Some(""))
            .header("content-encoding", "gzip")
            .body(bomb)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("decompressed"),
        "{error}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let response = http()
        .post(v1(&server, "track"))
        .basic_auth(KEY, Some(""))
        .header("content-encoding", "br")
        .body(event("br").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // navigator.sendBeacon: text/plain, key in the body, from a page on another origin.
    let mut beacon = json!({"batch": [{"type": "page", "anonymousId": "beacon-visitor",
                                       "messageId": "beacon-1", "properties": {"path": "/b"}}]});
    beacon["writeKey"] = json!(KEY);
    let response = http()
        .post(v1(&server, "batch"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "https://shop.example")
        .body(beacon.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(status_and_body(response).await, ok());
    accepted += 1;

    // CORS preflight, and CORS headers on errors so that pages can read them.
    let preflight = http()
        .request(reqwest::Method::OPTIONS, v1(&server, "batch"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, content-encoding",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let header = |name: &str| {
        preflight.headers()[name]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
    };
    assert_eq!(
        header("access-control-allow-origin"),
        "https://shop.example"
    );
    assert!(header("access-control-allow-methods").contains("post"));
    assert!(header("access-control-allow-headers").contains("content-type"));
    assert!(header("access-control-allow-headers").contains("content-encoding"));
    let response = http()
        .post(v1(&server, "track"))
        .header("origin", "https://shop.example")
        .body(event("no-key").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );

    // Unknown calls and methods.
    let response = http().post(v1(&server, "import")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let response = http().get(v1(&server, "track")).send().await.unwrap();
    assert_eq!(response.status(), 405);

    // Only the accepted events were stored.
    assert_eq!(server.wait_count(ROWS_SQL, accepted).await, accepted);
    server.cleanup().await;
}

/// Publishes envelopes straight to the server's events exchange, as a gateway would.
async fn publish_envelopes(server: &TestServer, envelopes: &[protocol::Envelope]) {
    let topology = bus::Topology::new(server.config.amqp_prefix.clone());
    let connection = bus::connect(&server.config.amqp_url, "test-publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            &topology.events_exchange(),
            bus::EVENT_ROUTING_KEY,
            BasicPublishOptions::default(),
            &protocol::envelope::encode_batch(envelopes),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    connection.close(200, "done").await.unwrap();
}

#[tokio::test]
async fn retries_are_stored_once_and_counted_once() {
    let server = TestServer::start().await;
    let now = Utc::now();
    let batch = json!({
        "sentAt": iso(now),
        "batch": [
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1", "timestamp": iso(now - Duration::seconds(5))},
            {"type": "page", "userId": "u1", "messageId": "m-2", "timestamp": iso(now - Duration::seconds(4))},
            {"type": "track", "anonymousId": "a2", "event": "Signed Up", "messageId": "m-3", "timestamp": iso(now - Duration::seconds(3))}
        ]
    });
    assert_eq!(post(&server, "batch", &batch).await, ok());
    assert_eq!(post(&server, "batch", &batch).await, ok());
    assert_eq!(server.wait_count(ROWS_SQL, 3).await, 3);

    // A retry of m-1 much later, landing on tomorrow's partition with a later sentAt, plus a
    // new event in the same message to know when the worker is through with it.
    let tomorrow = now + Duration::days(1);
    let retry = json!({
        "sentAt": iso(tomorrow),
        "batch": [
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1", "timestamp": iso(now - Duration::seconds(5))},
            {"type": "track", "userId": "u3", "event": "Sentinel", "messageId": "m-4"}
        ]
    })
    .to_string();
    let envelopes = Request::parse(Endpoint::Batch, retry.as_bytes())
        .unwrap()
        .into_envelopes(
            APP_ID,
            &Edge {
                received_at: tomorrow,
                ip: None,
                user_agent: None,
                live_channel: Some("private-analytics"),
            },
        )
        .unwrap();
    publish_envelopes(&server, &envelopes).await;
    assert_eq!(server.wait_count(ROWS_SQL, 4).await, 4);

    let mut db = server.db().await;
    let per_message: Vec<(String, i64)> =
        sqlx::query_as("SELECT message_id, count(*) FROM events GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let expected: Vec<(String, i64)> = ["m-1", "m-2", "m-3", "m-4"]
        .iter()
        .map(|m| (m.to_string(), 1))
        .collect();
    assert_eq!(per_message, expected);
    let partitions: i64 = sqlx::query_scalar("SELECT count(DISTINCT tableoid) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(partitions, 2, "the retry really targeted another partition");

    // Rollups count each stored event once.
    let rolled: i64 = sqlx::query_scalar(
        "SELECT sum(events)::bigint FROM reports.events_per_minute WHERE app_id = $1",
    )
    .bind(APP_ID)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(rolled, 4);
    let signed_up: i64 = sqlx::query_scalar(
        "SELECT sum(events)::bigint FROM reports.events_per_minute WHERE name = 'Signed Up'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(signed_up, 2);
    let daily: Vec<(String,)> =
        sqlx::query_as("SELECT user_key FROM reports.active_users_daily ORDER BY user_key")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        daily,
        [("a2".to_owned(),), ("u1".to_owned(),), ("u3".to_owned(),)]
    );
    server.cleanup().await;
}

#[tokio::test]
async fn broker_outage_gives_503_and_the_retry_is_stored_once() {
    let proxy = broker_proxy().await;
    let server = TestServer::start_with(|c| {
        c.amqp_url = amqp_url_via(&proxy);
        c.publisher.confirm_timeout_ms = 1000;
    })
    .await;
    let event = json!({"userId": "u", "event": "Paid", "messageId": "outage-1"});
    proxy.cut();
    let response = http()
        .post(v1(&server, "track"))
        .basic_auth(KEY, Some(""))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "never 2xx for an unconfirmed event");
    assert_eq!(response.headers()["retry-after"], "1");
    proxy.restore();
    // The client retries the same messageId until it is accepted, then once more.
    let mut accepted = false;
    for _ in 0..150 {
        match post(&server, "track", &event).await.0 {
            200 => {
                accepted = true;
                break;
            }
            503 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(accepted, "the gateway reconnected by itself");
    assert_eq!(post(&server, "track", &event).await, ok());
    let marker = json!({"userId": "u", "event": "Marker", "messageId": "outage-2"});
    assert_eq!(post(&server, "track", &marker).await, ok());
    assert_eq!(server.wait_count(ROWS_SQL, 2).await, 2);
    let paid: i64 = server
        .scalar("SELECT count(*) FROM events WHERE name = 'Paid'")
        .await;
    assert_eq!(paid, 1);
    server.cleanup().await;
}
