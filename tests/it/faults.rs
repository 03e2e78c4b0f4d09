//! RabbitMQ cut off behind a TCP proxy: the gateway answers 503 with Retry-After, never 200 for
//! an unconfirmed event, recovers on its own, and everything it acknowledged is stored once.

use std::time::Duration;

use crate::common::{amqp_url_via, broker_proxy, TestServer};

#[tokio::test]
async fn broker_outage_gives_503_then_recovers_without_loss() {
    let proxy = broker_proxy().await;
    let server = TestServer::start_with(|c| {
        c.amqp_url = amqp_url_via(&proxy);
        c.publisher.confirm_timeout_ms = 1000;
    })
    .await;
    let mut accepted = 0;
    for i in 0..5 {
        assert_eq!(
            server
                .trigger("outage", "before", &i.to_string())
                .await
                .status(),
            200
        );
        accepted += 1;
    }

    proxy.cut();
    for i in 0..5 {
        let response = server.trigger("outage", "during", &i.to_string()).await;
        assert_eq!(
            response.status(),
            503,
            "no 2xx while the broker is unreachable"
        );
        assert_eq!(response.headers()["retry-after"], "1");
    }
    let ready = reqwest::get(format!("http://{}/ready", server.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    proxy.restore();
    let mut recovered = false;
    for i in 0..150 {
        let response = server.trigger("outage", "after", &i.to_string()).await;
        match response.status().as_u16() {
            200 => {
                accepted += 1;
                recovered = true;
                break;
            }
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(recovered, "the gateway reconnected by itself");
    for i in 0..5 {
        assert_eq!(
            server
                .trigger("outage", "later", &i.to_string())
                .await
                .status(),
            200
        );
        accepted += 1;
    }
    let stored = server
        .wait_count(
            "SELECT count(*) FROM events WHERE name <> 'during'",
            accepted,
        )
        .await;
    assert_eq!(
        stored, accepted,
        "every acknowledged event stored exactly once"
    );
    let distinct: i64 = server.scalar("SELECT count(DISTINCT id) FROM events").await;
    let all: i64 = server.scalar("SELECT count(*) FROM events").await;
    assert_eq!(distinct, all);
    server.cleanup().await;
}
