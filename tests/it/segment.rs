//! The Segment Tracking API end to end: raw HTTP in, rows (and rollups) in Postgres, live copies
//! on `private-analytics`, the `reports` schema against fixture data, the analyst role, and the
//! example queries of docs/REPORTS.md.

use std::io::Write;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use protocol::segment::{Edge, Endpoint, Request};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

use crate::common::{TestServer, APP_ID, KEY};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

const ROWS_SQL: &str = "SELECT count(*) FROM events";

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn v1(server: &TestServer, call: &str) -> String {
    server.url(&format!("/v1/{call}"))
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /v1/{call}` with the write key as the Basic username.
async fn post(server: &TestServer, call: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(v1(server, call))
        .basic_auth(KEY, Some(""))
        .json(body)
        .send()
        .await
        .unwrap();
    status_and_body(response).await
}

fn ok() -> (u16, Value) {
    (200, json!({"success": true}))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn iso(at: DateTime<Utc>) -> String {
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
async fn clock_skew_is_corrected_and_the_future_clamped() {
    let server = TestServer::start().await;
    // A client whose clock is an hour behind sends an event 30 s after it happened.
    let client_now = Utc::now() - Duration::hours(1);
    let happened = client_now - Duration::seconds(30);
    let skewed = json!({"userId": "u", "event": "Skewed", "messageId": "skewed",
                        "timestamp": iso(happened), "sentAt": iso(client_now)});
    assert_eq!(post(&server, "track", &skewed).await, ok());
    let future = json!({"userId": "u", "event": "Future", "messageId": "future",
                        "timestamp": "2100-01-01T00:00:00Z"});
    assert_eq!(post(&server, "track", &future).await, ok());
    assert_eq!(server.wait_count(ROWS_SQL, 2).await, 2);

    let mut db = server.db().await;
    type Times = (
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Times> = sqlx::query_as(
        "SELECT name, occurred_at, received_at, original_timestamp, sent_at
             FROM events ORDER BY name",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let (_, occurred, received, original, sent) = &rows[1];
    assert_eq!(rows[1].0, "Skewed");
    assert_eq!(*received - *occurred, Duration::seconds(30));
    assert_eq!(
        original.unwrap().timestamp_millis(),
        happened.timestamp_millis()
    );
    assert_eq!(
        sent.unwrap().timestamp_millis(),
        client_now.timestamp_millis()
    );
    let (_, occurred, received, original, sent) = &rows[0];
    assert_eq!(rows[0].0, "Future");
    assert_eq!(occurred, received, "clamped to received_at");
    assert_eq!(
        *original,
        Some(Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(*sent, None);
    server.cleanup().await;
}

#[tokio::test]
async fn user_agents_bots_and_client_addresses() {
    let server = TestServer::start_with(|config| {
        config.gateway.trusted_proxies = vec!["127.0.0.2".parse().unwrap()];
    })
    .await;
    let send =
        |from: &'static str, user_agent: &'static str, forwarded: &'static str, body: Value| {
            let url = v1(&server, "track");
            async move {
                let client = reqwest::Client::builder()
                    .local_address(from.parse::<std::net::IpAddr>().unwrap())
                    .build()
                    .unwrap();
                let response = client
                    .post(url)
                    .basic_auth(KEY, Some(""))
                    .header("user-agent", user_agent)
                    .header("x-forwarded-for", forwarded)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(status_and_body(response).await, ok());
            }
        };
    let event = |name: &str, context: Value| json!({"userId": "u", "event": name, "messageId": name, "context": context});
    // The User-Agent header, from an untrusted peer that claims another address.
    send(
        "127.0.0.1",
        SAFARI_IPHONE,
        "203.0.113.9",
        event("iphone", json!({})),
    )
    .await;
    // context.userAgent wins over the header; a trusted proxy's X-Forwarded-For is believed.
    send(
        "127.0.0.2",
        "node-fetch",
        "198.51.100.1, 203.0.113.7",
        event("chrome", json!({"userAgent": CHROME})),
    )
    .await;
    // A crawler is flagged and kept.
    send("127.0.0.2", GOOGLEBOT, "127.0.0.2", event("bot", json!({}))).await;
    // context.ip wins over everything.
    send(
        "127.0.0.1",
        FIREFOX_LINUX,
        "",
        event("context-ip", json!({"ip": "192.0.2.44"})),
    )
    .await;
    assert_eq!(server.wait_count(ROWS_SQL, 4).await, 4);

    let mut db = server.db().await;
    type Agent = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
    );
    let rows: Vec<Agent> = sqlx::query_as(
        "SELECT name, host(ip), browser, os, device_class, user_agent, is_bot FROM events ORDER BY name",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        vec![
            (
                "bot".into(),
                s("127.0.0.2"),
                s("Googlebot"),
                None,
                s("bot"),
                s(GOOGLEBOT),
                true
            ),
            (
                "chrome".into(),
                s("203.0.113.7"),
                s("Chrome"),
                s("Windows 10"),
                s("desktop"),
                s(CHROME),
                false
            ),
            (
                "context-ip".into(),
                s("192.0.2.44"),
                s("Firefox"),
                s("Linux"),
                s("desktop"),
                s(FIREFOX_LINUX),
                false
            ),
            (
                "iphone".into(),
                s("127.0.0.1"),
                s("Safari"),
                s("iPhone"),
                s("mobile"),
                s(SAFARI_IPHONE),
                false
            ),
        ]
    );
    server.cleanup().await;
}

#[tokio::test]
async fn private_analytics_subscribers_see_segment_events_live() {
    let server = TestServer::start().await;
    let mut dashboard = server.connect().await;
    dashboard.subscribe_private("private-analytics").await;
    let track = json!({"userId": "u", "event": "Order Completed", "properties": {"total": 9}});
    assert_eq!(post(&server, "track", &track).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(live["event"], "Order Completed");
    assert_eq!(live["channel"], "private-analytics");
    assert_eq!(crate::common::ws::data(&live), track);
    let page = json!({"anonymousId": "a", "properties": {"path": "/"}});
    assert_eq!(post(&server, "page", &page).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(live["event"], "page");
    assert_eq!(crate::common::ws::data(&live), page);
    server.cleanup().await;
}

/// Monday 00:00 UTC three weeks before this week's Monday: the fixture's week 0.
fn fixture_base() -> DateTime<Utc> {
    let today = Utc::now().date_naive();
    let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
    (monday - Duration::weeks(3))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

/// Four visitors over three weeks (see the expectations in `reports_match_the_fixture`).
async fn load_fixture(server: &TestServer) -> DateTime<Utc> {
    let base = fixture_base();
    // week, day of week (0 = Monday), hour, minute
    let at = |week: i64, day: i64, hour: i64, minute: i64| {
        iso(base
            + Duration::weeks(week)
            + Duration::days(day)
            + Duration::hours(hour)
            + Duration::minutes(minute))
    };
    let utm = "?utm_source=google&utm_medium=cpc&utm_campaign=spring";
    let visitors = [
        (
            CHROME,
            json!([
                {"type": "identify", "userId": "u1", "timestamp": at(0, 0, 9, 59), "traits": {"plan": "pro"}},
                {"type": "page", "userId": "u1", "timestamp": at(0, 0, 10, 0),
                 "properties": {"path": "/", "url": format!("https://shop.example/{utm}"), "search": utm,
                                "referrer": "https://www.google.com/search?q=shop", "title": "Home"}},
                {"type": "track", "userId": "u1", "event": "Signed Up", "timestamp": at(0, 0, 10, 1)},
                {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(0, 0, 10, 5), "properties": {"total": 30}},
                {"type": "page", "userId": "u1", "timestamp": at(1, 1, 9, 0),
                 "context": {"page": {"path": "/pricing", "url": "https://shop.example/pricing", "referrer": "https://shop.example/"}}},
                {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(2, 2, 12, 0), "properties": {"total": 12.5}}
            ]),
        ),
        (
            SAFARI_IPHONE,
            json!([
                {"type": "page", "userId": "u2", "timestamp": at(0, 1, 11, 0),
                 "properties": {"path": "/", "url": "https://shop.example/", "referrer": "https://news.ycombinator.com/item?id=1"}},
                {"type": "track", "userId": "u2", "event": "Signed Up", "timestamp": at(0, 1, 11, 30)},
                {"type": "page", "userId": "u2", "timestamp": at(1, 1, 12, 0), "properties": {"path": "/", "url": "https://shop.example/"}}
            ]),
        ),
        (
            FIREFOX_LINUX,
            json!([
                {"type": "page", "anonymousId": "a3", "timestamp": at(1, 2, 8, 0),
                 "context": {"page": {"path": "/pricing", "url": "https://shop.example/pricing", "referrer": "https://www.google.com/"},
                             "campaign": {"source": "google", "medium": "cpc", "name": "spring"}}},
                {"type": "track", "anonymousId": "a3", "event": "Signed Up", "timestamp": at(1, 2, 8, 10)},
                {"type": "track", "anonymousId": "a3", "event": "Order Completed", "timestamp": at(1, 2, 8, 40), "properties": {"total": 20}}
            ]),
        ),
        (
            GOOGLEBOT,
            json!([
                {"type": "page", "anonymousId": "bot-1", "timestamp": at(1, 2, 10, 0), "properties": {"path": "/", "url": "https://shop.example/"}}
            ]),
        ),
    ];
    for (user_agent, batch) in visitors {
        let body = json!({"batch": batch, "context": {"userAgent": user_agent}});
        assert_eq!(post(server, "batch", &body).await, ok());
    }
    assert_eq!(server.wait_count(ROWS_SQL, 13).await, 13);
    base
}

async fn analyst(server: &TestServer) -> PgConnection {
    let mut db = PgConnection::connect(&server.config.database_url)
        .await
        .unwrap();
    sqlx::query("SET ROLE switchboard_analyst")
        .execute(&mut db)
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn reports_match_the_fixture() {
    let server = TestServer::start().await;
    let base = load_fixture(&server).await;
    let mut db = analyst(&server).await;
    let from = base - Duration::days(1);
    let to = Utc::now() + Duration::minutes(1);
    let day =
        |week: i64, day: i64| (base + Duration::weeks(week) + Duration::days(day)).date_naive();
    let hour = |week: i64, day: i64, hour: i64| {
        base + Duration::weeks(week) + Duration::days(day) + Duration::hours(hour)
    };

    let top_events: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT * FROM reports.top_events($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    let expected: Vec<(String, i64, i64)> = vec![
        ("page".into(), 6, 4),
        ("Order Completed".into(), 3, 2),
        ("Signed Up".into(), 3, 3),
        ("identify".into(), 1, 1),
    ];
    assert_eq!(top_events, expected);
    let limited: i64 = sqlx::query_scalar("SELECT count(*) FROM reports.top_events($1, $2, $3, 2)")
        .bind(APP_ID)
        .bind(from)
        .bind(to)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(limited, 2);

    let top_pages: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT * FROM reports.top_pages($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(top_pages, [("/".into(), 4, 3), ("/pricing".into(), 2, 2)]);

    let referrers: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT * FROM reports.top_referrers($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        referrers,
        [
            ("www.google.com".into(), 2, 2),
            ("news.ycombinator.com".into(), 1, 1)
        ]
    );

    type Campaign = (Option<String>, Option<String>, Option<String>, i64, i64);
    let campaigns: Vec<Campaign> =
        sqlx::query_as("SELECT * FROM reports.utm_campaigns($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(campaigns, [(s("google"), s("cpc"), s("spring"), 2, 2)]);

    let technology = |dimension: &'static str| {
        sqlx::query_as::<_, (Option<String>, i64, i64)>(
            "SELECT * FROM reports.technology($1, $2, $3, $4)",
        )
        .bind(APP_ID)
        .bind(dimension)
        .bind(from)
        .bind(to)
    };
    let browsers = technology("browser").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        browsers,
        [
            (s("Chrome"), 1, 6),
            (s("Firefox"), 1, 3),
            (s("Safari"), 1, 3),
            (s("Googlebot"), 1, 1)
        ]
    );
    let systems = technology("os").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        systems,
        [
            (s("Windows 10"), 1, 6),
            (s("Linux"), 1, 3),
            (s("iPhone"), 1, 3),
            (None, 1, 1)
        ]
    );
    let devices = technology("device_class").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        devices,
        [(s("desktop"), 2, 9), (s("mobile"), 1, 3), (s("bot"), 1, 1)]
    );

    let funnel: Vec<(i32, String, i64)> =
        sqlx::query_as("SELECT * FROM reports.funnel($1, $2, $3, $4, interval '1 hour')")
            .bind(APP_ID)
            .bind(vec!["page", "Signed Up", "Order Completed"])
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        funnel,
        [
            (1, "page".into(), 4),
            (2, "Signed Up".into(), 3),
            (3, "Order Completed".into(), 2)
        ]
    );
    let tight: Vec<i64> = sqlx::query_scalar(
        "SELECT users FROM reports.funnel($1, $2, $3, $4, interval '20 minutes')",
    )
    .bind(APP_ID)
    .bind(vec!["page", "Signed Up", "Order Completed"])
    .bind(from)
    .bind(to)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        tight,
        [4, 2, 1],
        "u2 signs up after 30 min, a3 orders after 40"
    );

    let retention: Vec<(chrono::NaiveDate, i64, i32, i64, String)> = sqlx::query_as(
        "SELECT cohort_week, cohort_users, week, active_users, retention::text
         FROM reports.retention_weekly($1, $2, $3)",
    )
    .bind(APP_ID)
    .bind(from.date_naive())
    .bind(to.date_naive())
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        retention,
        [
            (day(0, 0), 2, 0, 2, "100.0".into()),
            (day(0, 0), 2, 1, 2, "100.0".into()),
            (day(0, 0), 2, 2, 1, "50.0".into()),
            (day(1, 0), 2, 0, 2, "100.0".into()),
        ]
    );

    let daily: Vec<(chrono::NaiveDate, i64)> = sqlx::query_as(
        "SELECT day, users FROM reports.unique_users_per_day WHERE app_id = $1 ORDER BY day",
    )
    .bind(APP_ID)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        daily,
        [
            (day(0, 0), 1),
            (day(0, 1), 1),
            (day(1, 1), 2),
            (day(1, 2), 2),
            (day(2, 2), 1)
        ]
    );
    let hourly: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT hour, users FROM reports.active_users_per_hour WHERE app_id = $1 ORDER BY hour",
    )
    .bind(APP_ID)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        hourly,
        [
            (hour(0, 0, 9), 1),
            (hour(0, 0, 10), 1),
            (hour(0, 1, 11), 1),
            (hour(1, 1, 9), 1),
            (hour(1, 1, 12), 1),
            (hour(1, 2, 8), 1),
            (hour(1, 2, 10), 1),
            (hour(2, 2, 12), 1)
        ]
    );

    let over_time: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "SELECT * FROM reports.events_over_time($1, 'hour', $2, $3) WHERE bucket = $4",
    )
    .bind(APP_ID)
    .bind(from)
    .bind(to)
    .bind(hour(1, 2, 8))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        over_time,
        [
            (hour(1, 2, 8), "track".into(), "Order Completed".into(), 1),
            (hour(1, 2, 8), "track".into(), "Signed Up".into(), 1),
            (hour(1, 2, 8), "track".into(), "page".into(), 1)
        ]
    );
    let buckets = |bucket: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(DISTINCT bucket) FROM reports.events_over_time($1, $2, $3, $4)",
        )
        .bind(APP_ID)
        .bind(bucket)
        .bind(from)
        .bind(to)
    };
    assert_eq!(buckets("minute").fetch_one(&mut db).await.unwrap(), 13);
    assert_eq!(buckets("hour").fetch_one(&mut db).await.unwrap(), 8);
    assert_eq!(buckets("day").fetch_one(&mut db).await.unwrap(), 5);
    assert_eq!(buckets("week").fetch_one(&mut db).await.unwrap(), 3);
    assert_eq!(buckets("fortnight").fetch_one(&mut db).await.unwrap(), 0);

    let per_day: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, events FROM reports.events_per_day WHERE app_id = $1 AND day = $2 ORDER BY name",
    )
    .bind(APP_ID)
    .bind(day(0, 0))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        per_day,
        [
            ("Order Completed".into(), 1),
            ("Signed Up".into(), 1),
            ("identify".into(), 1),
            ("page".into(), 1)
        ]
    );
    let per_hour: i64 = sqlx::query_scalar(
        "SELECT sum(events)::bigint FROM reports.events_per_hour WHERE app_id = $1 AND hour = $2",
    )
    .bind(APP_ID)
    .bind(hour(0, 0, 10))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(per_hour, 3);
    let page_views: Vec<(Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT referrer_host, page_host, user_key FROM reports.page_views
         WHERE app_id = $1 AND page_path = '/pricing' ORDER BY occurred_at",
    )
    .bind(APP_ID)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        page_views,
        [
            (s("shop.example"), s("shop.example"), "u1".into()),
            (s("www.google.com"), s("shop.example"), "a3".into())
        ]
    );
    server.cleanup().await;
}

#[tokio::test]
async fn the_analyst_reads_and_cannot_write() {
    let server = TestServer::start().await;
    load_fixture(&server).await;
    let mut db = analyst(&server).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 13);
    let rolled: i64 =
        sqlx::query_scalar("SELECT sum(events)::bigint FROM reports.events_per_minute")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(rolled, 13);
    for statement in [
        "INSERT INTO events (id, app_id, source, channel, name, data, occurred_at, received_at)
         VALUES (gen_random_uuid(), 'x', 'api', 'c', 'n', '{}', now(), now())",
        "UPDATE events SET name = 'changed'",
        "DELETE FROM events",
        "TRUNCATE events",
        "INSERT INTO reports.events_per_minute VALUES ('x', 'api', 'n', now(), 1)",
        "UPDATE reports.active_users_daily SET user_key = 'x'",
        "DELETE FROM reports.active_users_hourly",
        "SELECT * FROM event_dedup",
        "DELETE FROM event_dedup",
        "CREATE TABLE reports.mine (x int)",
        "CREATE TABLE public.mine (x int)",
        "SELECT * FROM idempotency_dedup",
        "SELECT switchboard_ensure_partition(current_date + 30)",
    ] {
        let error = sqlx::query(statement)
            .execute(&mut db)
            .await
            .expect_err(statement);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
    server.cleanup().await;
}

/// The SQL blocks under "Ten example queries" in docs/REPORTS.md.
fn documented_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/REPORTS.md"))
        .expect("docs/REPORTS.md");
    let (_, examples) = doc
        .split_once("## Ten example queries")
        .expect("the examples section");
    examples
        .split("```sql\n")
        .skip(1)
        .map(|block| {
            block
                .split_once("```")
                .expect("a closed sql block")
                .0
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_documented_queries_run_as_the_analyst() {
    let queries = documented_queries();
    assert_eq!(queries.len(), 10);
    let server = TestServer::start().await;
    load_fixture(&server).await;
    let mut db = analyst(&server).await;
    for (i, query) in queries.iter().enumerate() {
        let rows = sqlx::query(query)
            .fetch_all(&mut db)
            .await
            .unwrap_or_else(|error| panic!("query {}: {error}\n{query}", i + 1));
        assert!(
            !rows.is_empty(),
            "query {} returned nothing:\n{query}",
            i + 1
        );
    }
    // Spot checks against the fixture.
    let funnel: Vec<i64> = sqlx::query(&queries[7])
        .fetch_all(&mut db)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("users"))
        .collect();
    assert_eq!(funnel, [4, 3, 2]);
    let revenue: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT revenue::text FROM ({}) AS q",
        queries[9].trim().trim_end_matches(';')
    ))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(revenue, ["30", "20", "12.5"]);
    let campaigns: Vec<(String, i64, i64)> = sqlx::query_as(&queries[5])
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(campaigns, [("spring".into(), 2, 2)]);
    server.cleanup().await;
}

#[tokio::test]
async fn broker_outage_gives_503_and_the_retry_is_stored_once() {
    let proxy = crate::common::proxy::Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let server = TestServer::start_with(|c| {
        c.amqp_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
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
