//! `switchboard:track`: acks after the broker confirm, per-event nacks with the HTTP API's
//! reasons, dedup by `messageId`, the rate limit, a broker cut, malformed frames.

use std::time::Duration;

use serde_json::{json, Value};

use super::{connect_opted_in, next_answer, send_batch, stored, track_event, Answer};
use crate::common::{broker_proxy, gateway_and_worker, test_config, TestServer, KEY};

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

fn events(ids: &[String]) -> Vec<Value> {
    ids.iter().map(|id| track_event(id)).collect()
}

/// Polls until `ids` are stored (as many rows as ids), within the harness's wait.
async fn wait_stored(server: &TestServer, ids: &[String]) -> i64 {
    let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    server
        .wait_count(
            &format!(
                "SELECT count(*) FROM events WHERE message_id IN ({})",
                quoted.join(",")
            ),
            ids.len() as i64,
        )
        .await
}

#[tokio::test]
async fn a_batch_is_acked_once_confirmed_and_stored_with_the_connections_address() {
    let server = TestServer::start().await;
    // Any connection may send analytics: a stock one here.
    let mut client = server.connect().await;
    let sent = ids("ok", 3);
    send_batch(&mut client, &events(&sent)).await;
    assert_eq!(next_answer(&mut client).await, Answer::Ack(sent.clone()));
    assert_eq!(wait_stored(&server, &sent).await, 3);
    let (channel, source, ip, user_agent): (String, String, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT channel, source, host(ip), user_agent FROM events WHERE message_id = 'ok-0'",
        )
        .fetch_one(&mut server.db().await)
        .await
        .unwrap();
    assert_eq!(channel, "private-analytics");
    assert_eq!(source, "track");
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    // tokio-tungstenite sends no User-Agent; an event's own context gives one.
    assert_eq!(user_agent, None);
    // `data` may also be the object as a JSON string; `context` wins over the connection.
    let body = json!({"batch": [track_event("ctx")], "context": {"ip": "198.51.100.7", "userAgent": "curl/8.0"}});
    client
        .send(json!({"event": "switchboard:track", "data": body.to_string()}))
        .await;
    assert_eq!(
        next_answer(&mut client).await,
        Answer::Ack(vec!["ctx".into()])
    );
    assert_eq!(wait_stored(&server, &["ctx".into()]).await, 1);
    let (ip, browser): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT host(ip), browser FROM events WHERE message_id = 'ctx'")
            .fetch_one(&mut server.db().await)
            .await
            .unwrap();
    assert_eq!(ip.as_deref(), Some("198.51.100.7"));
    assert_eq!(browser.as_deref(), Some("HTTP Library"));
    server.cleanup().await;
}

/// The HTTP API's reasons for the events of `batch`, by index.
async fn http_reasons(server: &TestServer, batch: &[Value]) -> Vec<(u64, String)> {
    let response = reqwest::Client::new()
        .post(server.url("/v1/batch"))
        .json(&json!({"writeKey": KEY, "batch": batch}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn invalid_events_are_nacked_one_by_one_and_the_valid_ones_stored() {
    let server = TestServer::start().await;
    let mut client = connect_opted_in(&server).await;
    let batch = vec![
        track_event("v-1"),
        json!({"type": "track", "userId": "u", "messageId": "bad-event"}),
        json!({"type": "track", "event": "e", "messageId": "bad-identity"}),
        json!({"type": "track", "userId": "u", "messageId": "bad-event-2"}),
        json!({"type": "track", "event": "no id", "userId": "u"}),
        track_event("v-2"),
    ];
    send_batch(&mut client, &batch).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(next_answer(&mut client).await);
    }
    let http = http_reasons(&server, &batch[..4]).await;
    assert_eq!(http.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2, 3]);
    let (missing_event, missing_identity) = (http[0].1.clone(), http[1].1.clone());
    assert_eq!(http[2].1, missing_event);
    let expected = [
        Answer::Nack {
            ids: vec![],
            reason: "messageId is required over the WebSocket".into(),
            retry: false,
        },
        Answer::Nack {
            ids: vec!["bad-event".into(), "bad-event-2".into()],
            reason: missing_event,
            retry: false,
        },
        Answer::Nack {
            ids: vec!["bad-identity".into()],
            reason: missing_identity,
            retry: false,
        },
        Answer::Ack(vec!["v-1".into(), "v-2".into()]),
    ];
    for answer in &expected {
        assert!(answers.contains(answer), "{answer:?} not in {answers:?}");
    }
    let valid = vec!["v-1".to_owned(), "v-2".to_owned()];
    assert_eq!(wait_stored(&server, &valid).await, 2);
    let refused: Vec<String> = ["bad-event", "bad-identity", "bad-event-2"]
        .map(String::from)
        .to_vec();
    assert_eq!(stored(&server, &refused).await, 0);
    let unnamed: i64 = server
        .scalar("SELECT count(*) FROM events WHERE name = 'no id'")
        .await;
    assert_eq!(unnamed, 0, "an event that cannot be named is not published");
    server.cleanup().await;
}

#[tokio::test]
async fn the_same_message_id_twice_is_stored_once() {
    let server = TestServer::start().await;
    let mut client = connect_opted_in(&server).await;
    let dup = vec!["dup".to_owned()];
    for _ in 0..2 {
        send_batch(&mut client, &events(&dup)).await;
        assert_eq!(next_answer(&mut client).await, Answer::Ack(dup.clone()));
    }
    // And once more on another connection, after a marker behind the others.
    let mut other = server.connect().await;
    let marker = vec!["dup".to_owned(), "marker".to_owned()];
    send_batch(&mut other, &events(&marker)).await;
    assert_eq!(next_answer(&mut other).await, Answer::Ack(marker));
    assert_eq!(wait_stored(&server, &["marker".into()]).await, 1);
    assert_eq!(stored(&server, &dup).await, 1);
    server.cleanup().await;
}

#[tokio::test]
async fn batches_over_the_rate_limit_are_nacked_for_retry() {
    let server = TestServer::start_with(|c| c.apps[0].limits.track_batches_per_second = 2).await;
    let mut client = connect_opted_in(&server).await;
    for i in 0..3 {
        send_batch(&mut client, &events(&ids(&format!("r{i}"), 2))).await;
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(next_answer(&mut client).await);
    }
    assert!(answers.contains(&Answer::Ack(ids("r0", 2))), "{answers:?}");
    assert!(answers.contains(&Answer::Ack(ids("r1", 2))), "{answers:?}");
    assert!(
        answers.contains(&Answer::Nack {
            ids: ids("r2", 2),
            reason: "Track rate limit reached: at most 2 batches per second \
                     (limits.track_batches_per_second)"
                .into(),
            retry: true,
        }),
        "{answers:?}"
    );
    assert_eq!(wait_stored(&server, &ids("r1", 2)).await, 2);
    assert_eq!(stored(&server, &ids("r2", 2)).await, 0);
    server.cleanup().await;

    let off = TestServer::start_with(|c| c.apps[0].limits.track_batches_per_second = 0).await;
    let mut client = off.connect().await;
    send_batch(&mut client, &events(&ids("off", 1))).await;
    match next_answer(&mut client).await {
        Answer::Nack {
            ids: got,
            reason,
            retry: true,
        } => {
            assert_eq!(got, ids("off", 1));
            assert!(
                reason.contains("limits.track_batches_per_second = 0"),
                "{reason}"
            );
        }
        other => panic!("expected a nack, got {other:?}"),
    }
    off.cleanup().await;
}

#[tokio::test]
async fn malformed_frames_are_nacked_whole_and_the_connection_stays() {
    let server = TestServer::start().await;
    let mut client = connect_opted_in(&server).await;
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"messageId": format!("m{i}")}))
        .collect();
    let cases: Vec<(Value, Vec<String>, &str)> = vec![
        (json!("not json"), vec![], "body is not JSON"),
        (
            json!({"events": []}),
            vec![],
            "`batch` must be an array of events",
        ),
        (json!({"batch": []}), vec![], "`batch` is empty"),
        (
            json!({"batch": too_many}),
            (0..1001).map(|i| format!("m{i}")).collect(),
            "1001 events in the batch; at most 1000",
        ),
    ];
    for (data, expected_ids, reason) in cases {
        client
            .send(json!({"event": "switchboard:track", "data": data}))
            .await;
        match next_answer(&mut client).await {
            Answer::Nack {
                ids,
                reason: got,
                retry: false,
            } => {
                assert_eq!(ids, expected_ids);
                assert!(got.starts_with(reason), "{got}");
            }
            other => panic!("expected a nack for {reason}, got {other:?}"),
        }
    }
    client.send_text(r#"{"event":"switchboard:track"}"#).await;
    assert!(matches!(
        next_answer(&mut client).await,
        Answer::Nack { retry: false, .. }
    ));
    send_batch(&mut client, &events(&ids("after", 1))).await;
    assert_eq!(next_answer(&mut client).await, Answer::Ack(ids("after", 1)));
    server.cleanup().await;
}

/// A gateway behind `proxy` and a worker, the gateway's confirms awaited `confirm_timeout_ms`.
async fn gateway_behind(
    proxy: &faults::Proxy,
    confirm_timeout_ms: u64,
) -> (TestServer, TestServer) {
    let mut config = test_config();
    config.publisher.confirm_timeout_ms = confirm_timeout_ms;
    gateway_and_worker(config, proxy).await
}

#[tokio::test]
async fn a_broker_cut_nacks_for_retry_and_nothing_acked_is_lost() {
    let proxy = broker_proxy().await;
    let (gateway, worker) = gateway_behind(&proxy, 2000).await;
    let mut client = connect_opted_in(&gateway).await;
    let mut acked: Vec<String> = Vec::new();
    let mut to_send: Vec<Vec<String>> = (0..20).map(|i| ids(&format!("b{i}"), 5)).collect();
    let mut round = 0;
    while !to_send.is_empty() {
        if round == 3 {
            proxy.cut();
        }
        if round == 8 {
            proxy.restore();
        }
        round += 1;
        assert!(round < 400, "never all acked; left {to_send:?}");
        let batch = to_send.remove(0);
        send_batch(&mut client, &events(&batch)).await;
        match next_answer(&mut client).await {
            Answer::Ack(ids) => {
                assert_eq!(ids, batch);
                acked.extend(ids);
            }
            Answer::Nack { ids, reason, retry } => {
                assert_eq!(ids, batch);
                assert!(retry, "{reason}");
                assert!(
                    reason.starts_with("events could not be accepted: RabbitMQ"),
                    "{reason}"
                );
                // The client sends it again later, with the same messageIds.
                to_send.push(batch);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(round > 20, "the cut refused some batches");
    assert_eq!(acked.len(), 100);
    assert_eq!(
        wait_stored(&worker, &acked).await,
        100,
        "every acked event stored once"
    );
    gateway.cleanup().await;
    worker.cleanup().await;
}

#[tokio::test]
async fn batches_beyond_the_in_flight_bound_are_nacked_while_pings_flow() {
    let proxy = broker_proxy().await;
    let (gateway, worker) = gateway_behind(&proxy, 3000).await;
    let mut client = connect_opted_in(&gateway).await;
    // The broker takes the messages but its confirms are held back.
    proxy.hold_replies();
    for i in 0..ingest::websocket::MAX_IN_FLIGHT {
        send_batch(&mut client, &events(&ids(&format!("f{i}"), 1))).await;
    }
    send_batch(&mut client, &events(&ids("over", 1))).await;
    assert_eq!(
        next_answer(&mut client).await,
        Answer::Nack {
            ids: ids("over", 1),
            reason: "too many batches in flight: at most 16 awaiting their confirm".into(),
            retry: true,
        }
    );
    // The reader is not waiting on the broker.
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(client.next_event().await["event"], "pusher:pong");
    proxy.restore();
    // Each held batch is answered: acked if it was confirmed (after publishing it again on a
    // new connection), else nacked for retry; whatever was acked is stored.
    let mut acked = Vec::new();
    for _ in 0..ingest::websocket::MAX_IN_FLIGHT {
        match next_answer(&mut client).await {
            Answer::Ack(ids) => acked.extend(ids),
            Answer::Nack { retry, .. } => assert!(retry),
        }
    }
    assert_eq!(wait_stored(&worker, &acked).await, acked.len() as i64);
    // The bound is free again.
    send_batch(&mut client, &events(&ids("later", 1))).await;
    loop {
        match next_answer(&mut client).await {
            Answer::Ack(ids) => {
                assert_eq!(ids, self::ids("later", 1));
                break;
            }
            Answer::Nack { retry: true, .. } => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                send_batch(&mut client, &events(&ids("later", 1))).await;
            }
            other => panic!("{other:?}"),
        }
    }
    gateway.cleanup().await;
    worker.cleanup().await;
}
