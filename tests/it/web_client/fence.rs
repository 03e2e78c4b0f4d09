//! The storage fence: a history request answers with every event confirmed before it arrived,
//! even when the worker is behind; without a worker it is 503, never an incomplete page.

use std::time::{Duration, Instant};

use faults::Proxy;
use serde_json::{json, Value};
use switchboard::config::Config;
use switchboard::Role;

use super::{channel_name, page, signed_history, trigger_numbered};
use crate::common::{test_config, TestServer, KEY};

/// A gateway (reaching Postgres directly for history) and a worker whose Postgres is behind
/// `proxy`.
async fn worker_behind(proxy: &Proxy) -> (TestServer, TestServer) {
    let config = test_config();
    let gateway_config = config.clone();
    let worker_config = Config {
        database_url: config
            .database_url
            .replace("127.0.0.1:5432", &proxy.addr().to_string()),
        ..config
    };
    let worker = TestServer::start_config(Role::Worker, worker_config).await;
    let gateway = TestServer::start_config(Role::Gateway, gateway_config).await;
    (gateway, worker)
}

#[tokio::test]
async fn events_confirmed_before_a_request_are_in_its_answer_while_the_worker_is_stalled() {
    let proxy = Proxy::start(([127, 0, 0, 1], 5432).into()).await.unwrap();
    let (gateway, worker) = worker_behind(&proxy).await;
    let channel = channel_name("fenced");
    trigger_numbered(&gateway, &channel, "before", 5).await;
    assert_eq!(
        page(signed_history(&gateway, &channel, "").await)
            .await
            .0
            .len(),
        5
    );
    // Postgres stops answering the worker: what is confirmed now is not stored yet.
    proxy.hold_replies();
    trigger_numbered(&gateway, &channel, "stalled", 40).await;
    let stalled = Instant::now();
    let request = tokio::spawn({
        let (http, channel) = (gateway.http, channel.clone());
        async move {
            let response = crate::common::get_signed(
                http,
                &format!("/apps/{}/channels/{channel}/events", crate::common::APP_ID),
                "",
            )
            .await;
            (Instant::now(), response)
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!request.is_finished(), "the request waits for the fence");
    proxy.restore();
    let (answered, response) = request.await.unwrap();
    assert!(answered - stalled >= Duration::from_millis(600));
    let (events, _) = page(response).await;
    assert_eq!(events.len(), 45, "every confirmed event is in the answer");
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        names[..5].iter().all(|n| *n == "before") && names[5..].iter().all(|n| *n == "stalled")
    );
    gateway.cleanup().await;
    worker.cleanup().await;
}

#[tokio::test]
async fn events_confirmed_before_a_request_are_in_its_answer_behind_a_backlog() {
    let server = TestServer::start().await;
    let batch = |from: usize| -> Value {
        let events: Vec<Value> = (from..from + 1000)
            .map(|i| json!({"type": "track", "event": "e", "userId": "u", "messageId": format!("m{i}")}))
            .collect();
        json!({"writeKey": KEY, "batch": events})
    };
    let client = reqwest::Client::new();
    for from in [0, 1000, 2000] {
        let response = client
            .post(server.url("/v1/batch"))
            .json(&batch(from))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut total = 0;
    let mut query = "limit=1000".to_owned();
    loop {
        let (events, next) = page(signed_history(&server, "private-analytics", &query).await).await;
        total += events.len();
        match next {
            Some(next) => query = format!("after={next}&limit=1000"),
            None => break,
        }
    }
    assert_eq!(total, 3000);
    server.cleanup().await;
}

#[tokio::test]
async fn without_a_worker_history_is_503_not_an_incomplete_page() {
    let config = test_config();
    // A worker made the database, and stopped.
    let mut worker = TestServer::start_config(Role::Worker, config.clone()).await;
    assert!(worker.stop().await);
    let server = TestServer::start_config(Role::Gateway, config).await;
    let channel = channel_name("alone");
    trigger_numbered(&server, &channel, "e", 3).await;
    let started = Instant::now();
    let response = signed_history(&server, &channel, "").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "history is not available: no worker is consuming the persist queue; retry later"
    );
    server.cleanup().await;
    worker.cleanup().await;
}
