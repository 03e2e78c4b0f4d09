//! The Dead letters view's endpoint: the dead-letter queue's depth and the reasons of what
//! sits in it, read without taking anything.

use serde_json::Value;

use super::dead_letter_one;
use crate::common::TestServer;

const PASSWORD: &str = "dead-secret";

async fn dead_letters(server: &TestServer) -> Value {
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/dead-letters", server.admin))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_dead_letters_are_counted_by_reason_and_left_in_the_queue() {
    let server = TestServer::start_with(|c| c.admin.password = Some(PASSWORD.into())).await;
    let empty = dead_letters(&server).await;
    assert_eq!(empty["depth"], 0);
    assert_eq!(empty["reasons"], serde_json::json!([]));
    assert_eq!(
        empty["queue"],
        format!("{}.dead", server.config.amqp_prefix).as_str()
    );

    dead_letter_one(&server).await;
    dead_letter_one(&server).await;
    let mut seen = dead_letters(&server).await;
    for _ in 0..100 {
        if seen["depth"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        seen = dead_letters(&server).await;
    }
    assert_eq!(seen["depth"], 2, "{seen}");
    assert_eq!(seen["sampled"], 2);
    let reasons = seen["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{seen}");
    assert_eq!(reasons[0]["count"], 2);
    assert!(!reasons[0]["reason"].as_str().unwrap().is_empty());

    let again = dead_letters(&server).await;
    assert_eq!(again, seen, "reading takes nothing");
    server.cleanup().await;
}

#[tokio::test]
async fn failing_webhook_deliveries_are_listed_by_app_webhook_and_state() {
    let server = TestServer::start_with(|c| c.admin.password = Some(PASSWORD.into())).await;
    let mut db = server.db().await;
    // (status, attempts, last_error): a dead batch, two still retried, one delivered, one new.
    for (status, attempts, error) in [
        ("dead", 12, Some("status_5xx: 503")),
        ("pending", 2, Some("connect: refused")),
        ("pending", 1, Some("timeout")),
        ("delivered", 3, Some("timeout")),
        ("pending", 0, None),
    ] {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, app_id, webhook, event_types, events, status, \
             attempts, last_error) VALUES ($1, 'app-id', 'http://127.0.0.1:9/hook', \
             ARRAY['client_event'], '[]', $2, $3, $4)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(status)
        .bind(attempts)
        .bind(error)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{}/api/webhook-failures", server.admin))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["configured"], false);
    let failures = answer["failures"].as_array().unwrap();
    let summary: Vec<(&str, i64, i64)> = failures
        .iter()
        .map(|f| {
            (
                f["status"].as_str().unwrap(),
                f["deliveries"].as_i64().unwrap(),
                f["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [("dead", 1, 12), ("pending", 2, 3)], "{answer}");
    assert_eq!(failures[0]["last_error"], "status_5xx: 503");
    assert_eq!(failures[0]["webhook"], "http://127.0.0.1:9/hook");
    drop(db);
    server.cleanup().await;
}
