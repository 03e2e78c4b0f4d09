//! What the edge adds to Segment events, seen in the stored rows: the clock-skew correction,
//! the classified user agents and bots, and the client's address.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::{
    iso, ok, post, status_and_body, v1, CHROME, FIREFOX_LINUX, GOOGLEBOT, ROWS_SQL, SAFARI_IPHONE,
};
use crate::common::{TestServer, KEY};

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
