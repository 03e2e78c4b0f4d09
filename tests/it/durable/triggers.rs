//! `X-Idempotency-Key` on triggers and batch triggers, and batch `info` replies per item.

use serde_json::{json, Value};

use super::post;
use crate::common::{self, ws, TestServer};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_retry_with_the_same_key_makes_no_second_row_nor_live_copy() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe("idem-a").await;
    subscriber.subscribe("idem-b").await;
    let trigger =
        |data: &str| json!({"name": "keyed", "channels": ["idem-a", "idem-b"], "data": data});

    for (data, key) in [("first", "k-1"), ("first", "k-1"), ("second", "k-2")] {
        let (status, body) =
            json_of(post(server.http, "events", &trigger(data), &[key.as_bytes()]).await).await;
        assert_eq!((status, body), (200, json!({})), "{data} {key}");
    }
    let batch = json!({"batch": [
        {"name": "batched", "channel": "idem-a", "data": "b0"},
        {"name": "batched", "channel": "idem-a", "data": "b1"},
    ]});
    for _ in 0..2 {
        let response = post(server.http, "batch_events", &batch, &[b"batch-1"]).await;
        assert_eq!(response.status(), 200);
    }
    let unkeyed = post(server.http, "batch_events", &batch, &[]).await;
    assert_eq!(unkeyed.status(), 200);

    let mut live = Vec::new();
    for _ in 0..8 {
        let event = subscriber.next_app_event().await;
        live.push(format!(
            "{} {}",
            event["channel"].as_str().unwrap(),
            event["data"].as_str().unwrap()
        ));
    }
    assert_eq!(
        live,
        [
            "idem-a first",
            "idem-b first",
            "idem-a second",
            "idem-b second",
            "idem-a b0",
            "idem-a b1",
            "idem-a b0",
            "idem-a b1",
        ],
        "the retries were answered without publishing again"
    );
    let rows = server.wait_count("SELECT count(*) FROM events", 8).await;
    assert_eq!(rows, 8);
    let per_data: Value = server
        .scalar(
            "SELECT json_object_agg(d, n)::jsonb FROM (
                 SELECT data #>> '{}' AS d, count(*) AS n FROM events GROUP BY 1) AS c",
        )
        .await;
    assert_eq!(per_data, json!({"first": 2, "second": 2, "b0": 2, "b1": 2}));
    server.cleanup().await;
}

#[tokio::test]
async fn invalid_idempotency_keys_are_refused_and_publish_nothing() {
    let server = TestServer::start().await;
    let body = json!({"name": "refused", "channel": "idem-bad", "data": "x"});
    let long = vec![b'k'; 129];
    let cases: [&[&[u8]]; 5] = [
        &[&long],
        &[b""],
        &[b"has space"],
        &["caf\u{e9}".as_bytes()],
        &[b"one", b"two"],
    ];
    for keys in cases {
        for endpoint in ["events", "batch_events"] {
            let body = match endpoint {
                "events" => body.clone(),
                _ => json!({"batch": [body.clone()]}),
            };
            let (status, reply) = json_of(post(server.http, endpoint, &body, keys).await).await;
            assert_eq!(status, 400, "{endpoint} {keys:?}");
            assert_eq!(
                reply["error"],
                "X-Idempotency-Key must be one header of 1 to 128 visible ASCII characters"
            );
        }
    }
    let (status, _) = json_of(post(server.http, "events", &body, &[&[b'k'; 128]]).await).await;
    assert_eq!(status, 200, "128 characters are fine");
    assert_eq!(server.wait_count("SELECT count(*) FROM events", 1).await, 1);
    server.cleanup().await;
}

#[tokio::test]
async fn batch_info_replies_follow_the_items_not_their_channels() {
    let server = TestServer::start().await;
    let room = format!("presence-{}", common::random_suffix());
    let mut member = server.connect().await;
    member.join(&room, "m1").await;
    let mut watcher: ws::Client = server.connect().await;
    watcher.subscribe("multi-b").await;
    let batch = json!({"batch": [
        {"name": "a", "channels": ["multi-a", "multi-b"], "data": "x", "info": "subscription_count"},
        {"name": "b", "channel": room, "data": "y", "info": "user_count"},
        {"name": "c", "channel": "plain", "data": "z"},
    ]});
    let (status, body) = json_of(post(server.http, "batch_events", &batch, &[]).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"batch": [
            {"channels": {"multi-a": {"subscription_count": 0}, "multi-b": {"subscription_count": 1}}},
            {"user_count": 1},
            {},
        ]})
    );
    server.cleanup().await;
}
