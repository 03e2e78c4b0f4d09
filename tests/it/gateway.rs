//! The WebSocket endpoint and the HTTP trigger API, end to end through RabbitMQ and Postgres.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::ws::{self, Client, Seen};
use crate::common::{self, TestServer, APP_ID, KEY};

fn channel_name(prefix: &str) -> String {
    format!("{prefix}-{}", common::random_suffix())
}

const EVENTS_SQL: &str = "SELECT count(*) FROM events";

#[tokio::test]
async fn handshake_announces_socket_id_and_activity_timeout() {
    let server = TestServer::start().await;
    let client = server.connect().await;
    let socket_id = &client.socket_id;
    let (node, seq) = socket_id.split_once('.').unwrap();
    assert!(
        node.bytes().all(|b| b.is_ascii_digit()) && !node.is_empty(),
        "{socket_id}"
    );
    assert!(
        seq.bytes().all(|b| b.is_ascii_digit()) && !seq.is_empty(),
        "{socket_id}"
    );
    assert_eq!(client.established["activity_timeout"], 120);
    let other = server.connect().await;
    assert_ne!(other.socket_id, client.socket_id);
    server.cleanup().await;
}

#[tokio::test]
async fn handshake_rejections_use_pusher_codes() {
    let server = TestServer::start().await;
    for (key, query, code) in [
        ("no-such-key", "protocol=7", 4001),
        (KEY, "client=js", 4008),
        (KEY, "protocol=3", 4007),
        (KEY, "protocol=seven", 4007),
    ] {
        let mut socket = Client::connect_raw(&server.ws_url(key, query)).await;
        let error = match ws::read_seen(&mut socket, ws::WAIT).await {
            Seen::Event(ev) => ev,
            other => panic!("{key} {query}: expected pusher:error, saw {other:?}"),
        };
        assert_eq!(error["event"], "pusher:error");
        assert_eq!(ws::data(&error)["code"], code, "{key} {query}");
        match ws::read_seen(&mut socket, ws::WAIT).await {
            Seen::Close(Some(got)) => assert_eq!(got, code, "{key} {query}"),
            other => panic!("{key} {query}: expected close {code}, saw {other:?}"),
        }
    }
    server.cleanup().await;
}

#[tokio::test]
async fn pings_both_ways() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send(json!({"event":"pusher:ping","data":{}})).await;
    let pong = client.next_event().await;
    assert_eq!(pong, json!({"event":"pusher:pong","data":"{}"}));
    client
        .socket
        .send(Message::Ping(b"hi".to_vec()))
        .await
        .unwrap();
    assert!(matches!(client.seen(ws::WAIT).await, Seen::Pong));
    server.cleanup().await;
}

#[tokio::test]
async fn idle_client_is_pinged_then_closed_with_4201() {
    let server = TestServer::start_with(|c| {
        c.gateway.activity_timeout_secs = 1;
        c.gateway.pong_timeout_secs = 1;
    })
    .await;
    let mut answering = server.connect().await;
    let mut silent = server.connect().await;
    assert_eq!(answering.established["activity_timeout"], 1);
    for _ in 0..3 {
        let ping = answering.next_event().await;
        assert_eq!(ping["event"], "pusher:ping");
        answering
            .send(json!({"event":"pusher:pong","data":{}}))
            .await;
    }
    let ping = silent.next_event().await;
    assert_eq!(ping["event"], "pusher:ping");
    assert_eq!(silent.closed().await, Some(4201));
    answering
        .send(json!({"event":"pusher:ping","data":{}}))
        .await;
    assert_eq!(answering.next_app_event().await["event"], "pusher:pong");
    server.cleanup().await;
}

#[tokio::test]
async fn bad_frames_and_channel_names_get_pusher_error() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send_text("this is not json").await;
    let error = client.next_event().await;
    assert_eq!(error["event"], "pusher:error");
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":"bad channel"}}))
        .await;
    let error = client.next_event().await;
    assert_eq!(error["event"], "pusher:error");
    assert!(ws::data(&error)["message"]
        .as_str()
        .unwrap()
        .contains("bad channel"));
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":"x".repeat(201)}}))
        .await;
    assert_eq!(client.next_event().await["event"], "pusher:error");
    client.send(json!({"event":"pusher:subscribe"})).await;
    assert_eq!(client.next_event().await["event"], "pusher:error");
    // The connection is still usable.
    client.subscribe("still-fine").await;
    server.cleanup().await;
}

#[tokio::test]
async fn oversized_frame_closes_the_connection() {
    let server = TestServer::start_with(|c| c.gateway.max_frame_bytes = 4096).await;
    let mut client = server.connect().await;
    let big = json!({"event":"pusher:subscribe","data":{"channel":"a".repeat(8000)}});
    let _ = client.socket.send(Message::text(big.to_string())).await;
    match client.seen(ws::WAIT).await {
        Seen::Close(_) => {}
        other => panic!("expected the connection to close, saw {other:?}"),
    }
    server.cleanup().await;
}

#[tokio::test]
async fn private_channels_need_a_valid_signature() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let channel = channel_name("private-orders");
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":"app-key:0000"}}))
        .await;
    let refused = client.next_event().await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["channel"], channel.as_str());
    assert_eq!(ws::data(&refused)["type"], "AuthError");
    assert_eq!(ws::data(&refused)["status"], 401);
    let auth = common::channel_auth(&client.socket_id, &channel);
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}))
        .await;
    let ok = client.next_event().await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ok["data"], "{}");
    server.cleanup().await;
}

#[tokio::test]
async fn trigger_reaches_subscribers_and_is_stored_once() {
    let server = TestServer::start().await;
    let channel = channel_name("orders");
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe(&channel).await;
    b.subscribe(&channel).await;
    let response = server
        .trigger(&channel, "order-placed", r#"{"id":42}"#)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "{}");
    for client in [&mut a, &mut b] {
        let ev = client.next_app_event().await;
        assert_eq!(
            ev,
            json!({"event":"order-placed","channel":channel,"data":r#"{"id":42}"#})
        );
    }
    assert_eq!(server.wait_count(EVENTS_SQL, 1).await, 1);
    let mut db = server.db().await;
    let row: (String, String, String, String, Value, Option<String>) =
        sqlx::query_as("SELECT app_id, source, channel, name, data, socket_id FROM events")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            APP_ID.into(),
            "api".into(),
            channel.clone(),
            "order-placed".into(),
            json!({"id":42}),
            None
        )
    );
    // Non-JSON payloads are stored as a JSON string.
    server.trigger(&channel, "plain", "just text").await;
    assert_eq!(
        server
            .wait_count(
                "SELECT count(*) FROM events WHERE data = '\"just text\"'::jsonb",
                1
            )
            .await,
        1
    );
    server.cleanup().await;
}

#[tokio::test]
async fn trigger_to_many_channels_and_socket_exclusion() {
    let server = TestServer::start().await;
    let (c1, c2) = (channel_name("one"), channel_name("two"));
    let mut sender = server.connect().await;
    let mut other = server.connect().await;
    let mut second = server.connect().await;
    sender.subscribe(&c1).await;
    other.subscribe(&c1).await;
    second.subscribe(&c2).await;
    let body = json!({"name":"ev","channels":[c1, c2],"data":"x","socket_id":sender.socket_id})
        .to_string();
    let response = server
        .post_signed(&format!("/apps/{APP_ID}/events"), &body)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(other.next_app_event().await["channel"], c1.as_str());
    assert_eq!(second.next_app_event().await["channel"], c2.as_str());
    sender.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(server.wait_count(EVENTS_SQL, 2).await, 2);
    let socket_id: String = server.scalar("SELECT DISTINCT socket_id FROM events").await;
    assert_eq!(socket_id, sender.socket_id);
    server.cleanup().await;
}

#[tokio::test]
async fn events_of_one_channel_arrive_in_order() {
    let server = TestServer::start().await;
    let channel = channel_name("ordered");
    let mut client = server.connect().await;
    client.subscribe(&channel).await;
    for i in 0..30 {
        let status = server
            .trigger(&channel, "seq", &i.to_string())
            .await
            .status();
        assert_eq!(status, 200);
    }
    for i in 0..30 {
        assert_eq!(client.next_app_event().await["data"], i.to_string());
    }
    server.cleanup().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let channel = channel_name("news");
    let mut client = server.connect().await;
    client.subscribe(&channel).await;
    client
        .send(json!({"event":"pusher:unsubscribe","data":{"channel":channel}}))
        .await;
    client.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(client.next_event().await["event"], "pusher:pong");
    assert_eq!(server.trigger(&channel, "ev", "x").await.status(), 200);
    client.assert_silent(Duration::from_millis(500)).await;
    server.cleanup().await;
}

async fn status_and_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn trigger_rejections_have_exact_statuses_and_lose_nothing() {
    let server = TestServer::start().await;
    let path = format!("/apps/{APP_ID}/events");
    // One accepted event first: every rejection below must leave it alone.
    assert_eq!(server.trigger("kept", "ev", "1").await.status(), 200);
    let valid = json!({"name":"ev","channel":"c","data":"x"}).to_string();

    let bad_secret = common::post_signed(server.http, &path, &valid, "wrong", common::now()).await;
    let (status, error) = status_and_error(bad_secret).await;
    assert_eq!(status, 401);
    assert!(error.contains("signature"), "{error}");

    let stale = common::post_signed(
        server.http,
        &path,
        &valid,
        common::SECRET,
        common::now() - 601,
    )
    .await;
    let (status, error) = status_and_error(stale).await;
    assert_eq!(status, 401);
    assert!(error.contains("auth_timestamp"), "{error}");

    let unsigned = reqwest::Client::new()
        .post(server.url(&path))
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    // body_md5 signed for a different body.
    let query = common::signed_query("POST", &path, &valid, common::SECRET, common::now());
    let tampered = reqwest::Client::new()
        .post(server.url(&format!("{path}?{query}")))
        .body(valid.replace("\"x\"", "\"y\""))
        .send()
        .await
        .unwrap();
    let (status, error) = status_and_error(tampered).await;
    assert_eq!((status, error.contains("body_md5")), (401, true), "{error}");

    let unknown_app = common::post_signed(
        server.http,
        "/apps/nope/events",
        &valid,
        common::SECRET,
        common::now(),
    )
    .await;
    assert_eq!(unknown_app.status(), 404);

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"name":"ev","channel":"bad channel","data":"x"}),
            400,
            "invalid channel",
        ),
        (json!({"name":"ev","data":"x"}), 400, "channel"),
        (
            json!({"name":"ev","channels":[],"data":"x"}),
            400,
            "channel",
        ),
        (
            json!({"name":"ev","channels":(0..101).map(|i| format!("c{i}")).collect::<Vec<_>>(),"data":"x"}),
            400,
            "101 channels",
        ),
        (
            json!({"name":"","channel":"c","data":"x"}),
            400,
            "event name",
        ),
        (
            json!({"name":"ev","channel":"c","data":"x","socket_id":"abc"}),
            400,
            "socket_id",
        ),
        (json!({"name":"ev","channel":"c"}), 400, "data"),
        (
            json!({"name":"ev","channel":"c","data":"x".repeat(10 * 1024 + 1)}),
            413,
            "10240",
        ),
    ];
    for (body, expected, needle) in cases {
        let (status, error) =
            status_and_error(server.post_signed(&path, &body.to_string()).await).await;
        assert_eq!(status, expected, "{body}: {error}");
        assert!(error.contains(needle), "{body}: {error:?} lacks {needle:?}");
    }
    let not_json = server.post_signed(&path, "{not json").await;
    assert_eq!(not_json.status(), 400);

    // Data of exactly 10 KB is fine.
    let at_limit = json!({"name":"ev","channel":"c","data":"x".repeat(10 * 1024)}).to_string();
    assert_eq!(server.post_signed(&path, &at_limit).await.status(), 200);

    let huge = "y".repeat(300 * 1024);
    let too_big = server.post_signed(&path, &huge).await;
    assert_eq!(too_big.status(), 413);

    assert_eq!(server.wait_count(EVENTS_SQL, 2).await, 2);
    let kept: i64 = server
        .scalar("SELECT count(*) FROM events WHERE channel = 'kept'")
        .await;
    assert_eq!(kept, 1);
    server.cleanup().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4100_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| c.gateway.socket_queue_len = 2).await;
    let channels: Vec<String> = (0..100).map(|i| format!("burst-{i}")).collect();
    let mut slow = server.connect().await;
    for channel in &channels {
        slow.subscribe(channel).await;
    }
    let mut fast = server.connect().await;
    fast.subscribe("burst-99").await;
    // One request, one AMQP message, 100 envelopes for the slow socket at once.
    let body = json!({"name":"ev","channels":channels,"data":"x"}).to_string();
    let response = server
        .post_signed(&format!("/apps/{APP_ID}/events"), &body)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(slow.closed().await, Some(4100));
    assert_eq!(fast.next_app_event().await["channel"], "burst-99");
    let metrics = server.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_slow_consumers_closed_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    server.cleanup().await;
}

/// A reader that stops reading is found by the age of its oldest unwritten frame, long before
/// its queue (made too large to fill here) is full; the others on the channel get everything.
#[tokio::test]
async fn a_reader_that_stops_is_closed_with_4100_by_the_lag_bound() {
    let server = TestServer::start_with(|c| {
        c.gateway.socket_queue_len = 100_000;
        c.gateway.socket_max_lag_ms = 300;
    })
    .await;
    let mut stopped = server.connect().await;
    stopped.subscribe("firehose").await;
    let mut reader = server.connect().await;
    reader.subscribe("firehose").await;
    let counting = tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let event = reader.next_app_event().await;
            match event["event"].as_str() {
                Some("last") => return seen,
                _ => seen += 1,
            }
        }
    });
    let event = json!({"name":"ev","channel":"firehose","data":"x".repeat(10 * 1024)});
    let batch = json!({ "batch": vec![event; 10] }).to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    let mut sent = 0;
    // The stopped reader's kernel buffers fill (megabytes on loopback), then its writes block;
    // once it is closed the channel has the reader alone.
    while subscriptions(&server, "firehose").await == 2 {
        assert!(sent < 20_000, "no slow consumer found after {sent} events");
        assert_eq!(server.post_signed(&path, &batch).await.status(), 200);
        sent += 10;
    }
    assert_eq!(server.trigger("firehose", "last", "x").await.status(), 200);
    assert_eq!(counting.await.unwrap(), sent);
    assert_eq!(stopped.closed().await, Some(4100));
    server.cleanup().await;
}

/// A channel's subscriptions, from the HTTP API.
async fn subscriptions(server: &TestServer, channel: &str) -> u64 {
    let path = format!("/apps/{APP_ID}/channels/{channel}");
    let response = server.get_signed(&path, "info=subscription_count").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["subscription_count"].as_u64().expect("a count")
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe("metered").await;
    assert_eq!(server.trigger("metered", "ev", "x").await.status(), 200);
    client.next_app_event().await;
    let health = reqwest::get(format!("http://{}/health", server.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://{}/ready", server.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let states: Value = ready.json().await.unwrap();
    assert_eq!(
        states,
        json!({"database": true, "gateway_listener": true, "live_queue": true, "publisher": true})
    );
    let metrics = server.metrics().await;
    for name in [
        "switchboard_connections",
        "switchboard_subscriptions",
        "switchboard_events_in_total",
        "switchboard_deliveries_total",
        "switchboard_publish_confirm_seconds",
        "switchboard_publish_batch_envelopes",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    server.cleanup().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_4200() {
    let mut server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe("bye").await;
    let stopping = tokio::spawn(async move {
        let finished = server.stop().await;
        (finished, server)
    });
    assert_eq!(client.closed().await, Some(4200));
    let (finished, server) = stopping.await.unwrap();
    assert!(finished, "shutdown finished within the timeout");
    server.cleanup().await;
}
