//! What one request may expand into (the batch `context` counted in every event, at most 1,000
//! events), and big bodies, which the gateway prepares on its blocking pool.

use serde_json::{json, Value};

use super::{gzip, http, ok, post, status_and_body, v1, CHROME, ROWS_SQL};
use crate::common::{now, signed_query, TestServer, APP_ID, KEY, SECRET};

/// A batch `context` of exactly `bytes` bytes of JSON text.
fn context_of(bytes: usize) -> Value {
    let padding = bytes - r#"{"pad":""}"#.len();
    json!({ "pad": "x".repeat(padding) })
}

fn tiny_events(prefix: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| json!({"type": "track", "event": prefix, "userId": "u", "messageId": format!("{prefix}-{i}")}))
        .collect()
}

async fn post_gzip(server: &TestServer, body: &Value) -> (u16, Value) {
    let response = http()
        .post(v1(server, "batch"))
        .basic_auth(KEY, Some(""))
        .header("content-encoding", "gzip")
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    status_and_body(response).await
}

#[tokio::test]
async fn the_context_amplification_attack_is_refused_and_nothing_accepted_is_lost() {
    let server = TestServer::start().await;
    let before = json!({"batch": tiny_events("before", 3), "context": {"locale": "en"}});
    assert_eq!(post(&server, "batch", &before).await, ok());

    // The issue's attack: a 380 KB context and 1,500 tiny events in a ~5 KB gzip body.
    let attack = json!({"batch": tiny_events("attack", 1500), "context": context_of(380_000)});
    let compressed = gzip(attack.to_string().as_bytes());
    assert!(compressed.len() < 8 * 1024, "{}", compressed.len());
    let (status, error) = post_gzip(&server, &attack).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"], "1500 events in the batch; at most 1000");

    // Within the event count, the same context cannot fit in any event.
    let attack = json!({"batch": tiny_events("attack", 1000), "context": context_of(380_000)});
    let (status, error) = post_gzip(&server, &attack).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(
        error["error"],
        "the batch `context` is 380000 bytes; it is merged into every event, and an event with \
         it must fit in 32768 bytes"
    );

    // A context that fits in one event, but not 30 times in the request.
    let per_event = tiny_events("attack", 1)[0].to_string().len() + 20_000;
    let attack = json!({"batch": tiny_events("attack", 30), "context": context_of(20_000)});
    let (status, error) = post(&server, "batch", &attack).await;
    assert_eq!(status, 413, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("counted in each of its 30 events; the limit is 512000"),
        "{error}"
    );

    // As many as fit are accepted, each stored with the whole context.
    let fit = 512_000 / per_event;
    let largest = json!({"batch": tiny_events("fits", fit), "context": context_of(20_000)});
    assert_eq!(post(&server, "batch", &largest).await, ok());
    let after = json!({"batch": tiny_events("after", 1)});
    assert_eq!(post(&server, "batch", &after).await, ok());

    let expected = 3 + fit as i64 + 1;
    assert_eq!(server.wait_count(ROWS_SQL, expected).await, expected);
    let refused: i64 = server
        .scalar("SELECT count(*) FROM events WHERE name = 'attack'")
        .await;
    assert_eq!(refused, 0);
    let merged: i64 = server
        .scalar(
            "SELECT count(*) FROM events WHERE name = 'fits' AND length(context->>'pad') = 19990",
        )
        .await;
    assert_eq!(merged, fit as i64);
    let kept: i64 = server
        .scalar("SELECT count(*) FROM events WHERE name = 'before' AND context->>'locale' = 'en'")
        .await;
    assert_eq!(kept, 3, "what was accepted before is all there");
    server.cleanup().await;
}

#[tokio::test]
async fn big_bodies_are_processed_on_the_blocking_path() {
    let server = TestServer::start().await;
    // 500 events (about 70 KB): well past the inline limit, one distinct user agent.
    let events: Vec<Value> = (0..500)
        .map(|i| {
            json!({"type": "track", "event": "Big", "userId": format!("u{i}"),
                   "messageId": format!("big-{i}"), "properties": {"i": i, "pad": "p".repeat(60)}})
        })
        .collect();
    let identity = json!({ "batch": events });
    assert!(identity.to_string().len() > 64 * 1024);
    let response = http()
        .post(v1(&server, "batch"))
        .basic_auth(KEY, Some(""))
        .header("user-agent", CHROME)
        .json(&identity)
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_body(response).await, ok());
    // The same shape gzip-compressed (small on the wire, inflated on the pool).
    let events: Vec<Value> = (0..500)
        .map(|i| json!({"type": "page", "anonymousId": format!("a{i}"), "messageId": format!("gz-{i}")}))
        .collect();
    assert_eq!(post_gzip(&server, &json!({ "batch": events })).await, ok());

    // A Pusher batch trigger of ten 9 KB events (about 95 KB).
    let data = |i: usize| json!({"i": i, "pad": "d".repeat(9000)}).to_string();
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"name": "big-trigger", "channel": "big", "data": data(i)}))
        .collect();
    let body = json!({ "batch": batch }).to_string();
    assert!(body.len() > 64 * 1024);
    let path = format!("/apps/{APP_ID}/batch_events");
    // Signed for another body: its MD5, checked on the pool, refuses it.
    let query = signed_query(
        "POST",
        &path,
        &body.replace("big-trigger", "other"),
        SECRET,
        now(),
    );
    let response = http()
        .post(server.url(&format!("{path}?{query}")))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, error) = status_and_body(response).await;
    assert_eq!(status, 401, "{error}");
    let response = server.post_signed(&path, &body).await;
    assert_eq!(status_and_body(response).await, (200, json!({})));

    assert_eq!(server.wait_count(ROWS_SQL, 1010).await, 1010);
    let chrome: i64 = server
        .scalar(
            "SELECT count(*) FROM events WHERE name = 'Big' AND browser = 'Chrome' \
             AND (data->'properties'->>'i')::int = substring(user_id FROM 2)::int",
        )
        .await;
    assert_eq!(chrome, 500);
    let pages: i64 = server
        .scalar("SELECT count(DISTINCT anonymous_id) FROM events WHERE type = 'page'")
        .await;
    assert_eq!(pages, 500);
    let triggered: i64 = server
        .scalar(
            "SELECT count(*) FROM events WHERE name = 'big-trigger' \
             AND length(data->>'pad') = 9000",
        )
        .await;
    assert_eq!(triggered, 10);
    server.cleanup().await;
}
