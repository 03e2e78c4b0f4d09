//! The broker goes away: fail fast and unready within a second; a confirm lost with its
//! connection is made good by publishing again; a 503 is a doubt that an idempotent retry
//! settles without a second event.

use std::time::{Duration, Instant};

use serde_json::json;

use faults::Proxy;

use super::{post, ready_status, trigger_until_accepted};
use crate::common::{self, amqp_url_via, broker_proxy, test_config, TestServer};

#[tokio::test]
async fn a_silent_broker_means_503_and_unready_within_a_second() {
    let proxy = broker_proxy().await;
    let server = TestServer::start_with(|c| c.amqp_url = amqp_url_via(&proxy)).await;
    assert_eq!(server.trigger("gone", "before", "{}").await.status(), 200);
    assert_eq!(ready_status(&server).await, 200);

    proxy.silence();
    let cut = Instant::now();
    let first = server.trigger("gone", "during", "0").await;
    let first_answer = cut.elapsed();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "1");
    assert!(
        first_answer < Duration::from_millis(1500),
        "503 after {first_answer:?}"
    );
    while ready_status(&server).await != 503 {
        assert!(
            cut.elapsed() < Duration::from_millis(1500),
            "/ready still 200 after {:?}",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..5 {
        let started = Instant::now();
        let response = server.trigger("gone", "during", &i.to_string()).await;
        assert_eq!(response.status(), 503);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "503 after {:?} while disconnected",
            started.elapsed()
        );
    }

    proxy.restore();
    trigger_until_accepted(&server, "gone", "after").await;
    let stored = server
        .wait_count("SELECT count(*) FROM events WHERE name <> 'during'", 2)
        .await;
    assert_eq!(stored, 2);
    server.cleanup().await;
}

/// A gateway behind `proxy` and a worker, the gateway's confirms awaited `confirm_timeout_ms`.
async fn gateway_and_worker(proxy: &Proxy, confirm_timeout_ms: u64) -> (TestServer, TestServer) {
    let mut config = test_config();
    config.publisher.confirm_timeout_ms = confirm_timeout_ms;
    common::gateway_and_worker(config, proxy).await
}

async fn stored_named(server: &TestServer, name: &str, expected: i64) -> i64 {
    server
        .wait_count(
            &format!("SELECT count(*) FROM events WHERE name = '{name}'"),
            expected,
        )
        .await
}

#[tokio::test]
async fn a_confirm_lost_with_its_connection_is_republished_and_answered_200() {
    let proxy = broker_proxy().await;
    let (gateway, mut worker) = gateway_and_worker(&proxy, 10_000).await;
    assert_eq!(
        gateway.trigger("doubt", "warm-up", "{}").await.status(),
        200
    );

    proxy.hold_replies();
    let addr = gateway.http;
    let pending = tokio::spawn(async move {
        let body = json!({"name": "in-doubt", "channel": "doubt", "data": "1"});
        post(addr, "events", &body, &[]).await
    });
    assert_eq!(stored_named(&gateway, "in-doubt", 1).await, 1, "published");
    assert!(!pending.is_finished(), "answered without a confirm");
    // The connection goes with the confirm it held back.
    proxy.restore();
    let response = pending.await.unwrap();
    assert_eq!(response.status(), 200, "republished on the new connection");

    trigger_until_accepted(&gateway, "doubt", "marker").await;
    assert_eq!(stored_named(&gateway, "marker", 1).await, 1);
    assert_eq!(
        stored_named(&gateway, "in-doubt", 1).await,
        1,
        "the republished copy is the same event"
    );
    assert!(worker.stop().await);
    gateway.cleanup().await;
}

#[tokio::test]
async fn no_confirm_in_time_is_503_and_a_keyed_retry_adds_no_second_event() {
    let proxy = broker_proxy().await;
    let (gateway, mut worker) = gateway_and_worker(&proxy, 2000).await;
    assert_eq!(
        gateway.trigger("doubt", "warm-up", "{}").await.status(),
        200
    );
    let body = json!({"name": "in-doubt", "channels": ["doubt-a", "doubt-b"], "data": "1"});

    proxy.hold_replies();
    let pending = tokio::spawn({
        let (addr, body) = (gateway.http, body.clone());
        async move { post(addr, "events", &body, &[b"order-17"]).await }
    });
    assert_eq!(stored_named(&gateway, "in-doubt", 2).await, 2, "published");
    // No broker to publish again on until the deadline.
    proxy.silence();
    let response = pending.await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    proxy.restore();
    let mut retried = None;
    for _ in 0..200 {
        let status = post(gateway.http, "events", &body, &[b"order-17"])
            .await
            .status()
            .as_u16();
        if status != 503 {
            retried = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(retried, Some(200));
    trigger_until_accepted(&gateway, "doubt", "marker").await;
    assert_eq!(stored_named(&gateway, "marker", 1).await, 1);
    assert_eq!(
        stored_named(&gateway, "in-doubt", 2).await,
        2,
        "one row per channel, however often it was sent"
    );
    assert!(worker.stop().await);
    gateway.cleanup().await;
}
