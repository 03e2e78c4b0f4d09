//! The worker against the real RabbitMQ and Postgres: every test has its own database and
//! topology (see `common`).

mod common;
mod durability;
mod storage;
mod webhooks;

use std::time::{Duration, Instant};

use bus::QueueType;
use chrono::{DateTime, NaiveDate, Utc};
use common::{publish_body, wait_until, Proxy, RunningWorker, TestEnv, AMQP_ADDR, POSTGRES_ADDR};
use consumer_worker::{prepare_database, WorkerConfig};
use protocol::envelope::decode_batch;
use protocol::{Envelope, Source};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn envelope(data: &str) -> Envelope {
    Envelope::new(
        "app-1",
        Source::Api,
        "orders",
        "order-created",
        data.to_owned(),
    )
}

fn envelopes(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| envelope(&format!(r#"{{"n":{i}}}"#)))
        .collect()
}

fn partition_of(day: NaiveDate) -> String {
    format!("events_{}", day.format("%Y%m%d"))
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    app_id: String,
    source: String,
    channel: String,
    name: String,
    data: Value,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    message_id: Option<String>,
    socket_id: Option<String>,
    occurred_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    context: Option<Value>,
    inserted_at: DateTime<Utc>,
    partition: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_persisted_once_with_every_column() {
    let env = TestEnv::new(QueueType::Quorum).await;
    let worker = env.start_worker();

    let mut api = Envelope::new(
        "app-1",
        Source::Api,
        "orders",
        "order-created",
        r#"{"order":17,"items":[{"sku":"a-1"}],"paid":true}"#.into(),
    );
    api.socket_id = Some("123.456".into());
    let mut client = Envelope::new(
        "app-1",
        Source::Client,
        "private-chat",
        "client-typing",
        "not json at all".into(),
    );
    client.user_id = Some("user-9".into());
    let number = Envelope::new("app-2", Source::Track, "segment", "Signed Up", "42".into());
    let string = Envelope::new(
        "app-2",
        Source::Track,
        "segment",
        "Viewed",
        r#""quoted""#.into(),
    );
    let expected_data = [
        json!({"order": 17, "items": [{"sku": "a-1"}], "paid": true}),
        json!("not json at all"),
        json!(42),
        json!("quoted"),
    ];
    let sent = [api, client, number, string];
    env.publish(&sent[..2]).await;
    env.publish(&sent[2..]).await;
    env.wait_for_rows(4).await;
    worker.stop().await;

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT *, tableoid::regclass::text AS partition FROM events ORDER BY received_at, id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    for (envelope, data) in sent.iter().zip(expected_data) {
        let row = rows.iter().find(|row| row.id == envelope.id).unwrap();
        assert_eq!(row.app_id, envelope.app_id);
        assert_eq!(row.source, envelope.source.as_str());
        assert_eq!(row.channel, envelope.channel);
        assert_eq!(row.name, envelope.name);
        assert_eq!(row.data, data);
        assert_eq!(row.user_id, envelope.user_id);
        assert_eq!(row.socket_id, envelope.socket_id);
        assert_eq!((&row.anonymous_id, &row.message_id), (&None, &None));
        assert_eq!(row.context, None);
        // Postgres keeps microseconds.
        assert_eq!(
            row.received_at.timestamp_micros(),
            envelope.received_at.timestamp_micros()
        );
        assert_eq!(row.occurred_at, row.received_at);
        assert!(row.inserted_at >= row.received_at);
        assert_eq!(
            row.partition,
            partition_of(envelope.received_at.date_naive())
        );
    }
    assert_eq!(env.persist_queue_depth().await, 0, "everything is acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_envelopes_are_stored_once() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();

    let first = envelope(r#"{"copy":1}"#);
    env.publish(std::slice::from_ref(&first)).await;
    env.wait_for_event(first.id).await;
    let twin = envelope(r#"{"copy":2}"#);
    // Again after it was stored, and twice within one message and again in the next.
    env.publish(&[first.clone(), twin.clone(), twin.clone()])
        .await;
    env.publish(std::slice::from_ref(&twin)).await;
    let last = envelope("{}");
    env.publish(std::slice::from_ref(&last)).await;
    env.wait_for_event(last.id).await;
    worker.stop().await;

    assert_eq!(env.rows().await, 3);
    assert_eq!(env.persist_queue_depth().await, 0);
    assert!(env.take_dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_without_blocking() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();

    let garbage: [&[u8]; 3] = [
        b"not json",
        br#"[{"id":"not a uuid"}]"#,
        br#"{"an":"object, not an array"}"#,
    ];
    for body in garbage {
        env.publish_body(body).await;
    }
    let good = envelopes(2);
    env.publish(&good).await;
    env.wait_for_rows(2).await;
    worker.stop().await;

    assert_eq!(env.persist_queue_depth().await, 0, "dead letters are acked");
    let letters = env.take_dead_letters().await;
    assert_eq!(letters.len(), 3);
    for (letter, body) in letters.iter().zip(garbage) {
        assert_eq!(letter.body, body);
        assert!(
            letter
                .reason
                .starts_with("message is not a batch of envelopes: "),
            "{}",
            letter.reason
        );
        let failed_at = DateTime::parse_from_rfc3339(&letter.failed_at).unwrap();
        assert!((Utc::now() - failed_at.to_utc()).num_seconds().abs() < 60);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_postgres_refuses_are_dead_lettered_and_the_rest_persist() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();

    // Valid JSON, but jsonb has no \u0000 (SQLSTATE 22P05).
    let escaped_nul = envelope(r#"{"a":"\u0000"}"#);
    // A NUL byte is no valid text (SQLSTATE 22021).
    let mut nul_name = envelope("{}");
    nul_name.name = "bad\0name".into();
    let good = envelopes(3);
    env.publish(&[good[0].clone(), escaped_nul.clone(), good[1].clone()])
        .await;
    env.publish(&[nul_name.clone(), good[2].clone()]).await;
    env.wait_for_rows(3).await;
    worker.stop().await;

    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let mut expected: Vec<Uuid> = good.iter().map(|e| e.id).collect();
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(
        env.persist_queue_depth().await,
        0,
        "every delivery is acked"
    );

    let letters = env.take_dead_letters().await;
    assert_eq!(letters.len(), 2);
    for (rejected, sqlstate, message) in [
        (&escaped_nul, "22P05", "unsupported Unicode escape sequence"),
        (&nul_name, "22021", "invalid byte sequence"),
    ] {
        let letter = letters
            .iter()
            .find(|letter| decode_batch(&letter.body).unwrap() == [rejected.clone()])
            .expect("the rejected envelope is dead-lettered alone");
        assert!(
            letter.reason.starts_with(sqlstate) && letter.reason.contains(message),
            "{}",
            letter.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_created_for_the_days_of_a_batch() {
    let env = TestEnv::new(QueueType::Classic).await;
    let partition_exists = |day: NaiveDate| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(partition_of(day))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let today = Utc::now().date_naive();
    for ahead in 0..=3 {
        let day = today + chrono::Days::new(ahead);
        assert!(partition_exists(day).await, "prepared {day} ahead");
    }

    let mut future = envelope("1");
    future.received_at += chrono::Duration::days(10);
    let mut past = envelope("2");
    past.received_at -= chrono::Duration::days(5);
    let now = envelope("3");
    let sent = [future, past, now];
    for envelope in &sent[..2] {
        assert!(!partition_exists(envelope.received_at.date_naive()).await);
    }

    let worker = env.start_worker();
    env.publish(&sent).await;
    env.wait_for_rows(3).await;
    worker.stop().await;

    for envelope in &sent {
        let partition: String =
            sqlx::query_scalar("SELECT tableoid::regclass::text FROM events WHERE id = $1")
                .bind(envelope.id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(partition, partition_of(envelope.received_at.date_naive()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_keeps_deliveries_until_they_are_committed() {
    let env = TestEnv::new(QueueType::Classic).await;
    let proxy = Proxy::start(POSTGRES_ADDR).await.unwrap();
    let pool = prepare_database(&env.database_url_via(proxy.addr()), 3)
        .await
        .unwrap();
    let worker = RunningWorker::start(env.config(), pool.clone());
    env.publish(&envelopes(1)).await;
    env.wait_for_rows(1).await;

    // Postgres goes away; the worker keeps the batch and retries until it comes back.
    proxy.cut();
    for chunk in envelopes(50).chunks(10) {
        env.publish(chunk).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.rows().await, 1);
    proxy.restore();
    env.wait_for_rows(51).await;

    // Nothing is acked before it is committed: stopped during an outage, the worker returns
    // promptly and every message of the outage is back in the queue.
    proxy.cut();
    for chunk in envelopes(30).chunks(10) {
        env.publish(chunk).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;
    assert_eq!(env.persist_queue_depth().await, 3);
    assert_eq!(env.rows().await, 51);

    proxy.restore();
    let worker = RunningWorker::start(env.config(), pool);
    env.wait_for_rows(81).await;
    worker.stop().await;
    assert_eq!(env.persist_queue_depth().await, 0);
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(distinct, 81);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_reconnects_and_carries_on() {
    let env = TestEnv::new(QueueType::Classic).await;
    let proxy = Proxy::start(AMQP_ADDR).await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let worker = RunningWorker::start_on(&url, env.config(), env.pool.clone());
    env.publish(&envelopes(10)).await;
    env.wait_for_rows(10).await;

    proxy.cut();
    for chunk in envelopes(20).chunks(10) {
        env.publish(chunk).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.rows().await, 10);
    proxy.restore();
    env.wait_for_rows(30).await;
    worker.stop().await;
    assert_eq!(env.persist_queue_depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_batch_in_hand() {
    const PER_MESSAGE: i64 = 10;
    let env = TestEnv::new(QueueType::Classic).await;
    let config = WorkerConfig {
        max_batch: 100,
        ..env.config()
    };
    let worker = RunningWorker::start(config.clone(), env.pool.clone());

    let stop_publishing = CancellationToken::new();
    let publisher = tokio::spawn({
        let channel = env.channel.clone();
        let topology = env.topology.clone();
        let stop = stop_publishing.clone();
        async move {
            let mut published = 0;
            while !stop.is_cancelled() {
                let body = protocol::envelope::encode_batch(&envelopes(PER_MESSAGE as usize));
                publish_body(&channel, &topology, &body).await;
                published += PER_MESSAGE;
            }
            published
        }
    });
    let pool = &env.pool;
    assert!(
        wait_until(move || async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
                .fetch_one(pool)
                .await
                .unwrap()
                >= 500
        })
        .await
    );
    worker.stop().await;
    stop_publishing.cancel();
    let published = publisher.await.unwrap();

    // Every acked delivery is in the table and every other one is back in the queue (the
    // broker may take a moment to requeue what the closed channel held).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (rows, queued) = loop {
        let rows = env.rows().await;
        let queued = i64::from(env.persist_queue_depth().await);
        if rows + queued * PER_MESSAGE == published || Instant::now() > deadline {
            break (rows, queued);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        rows + queued * PER_MESSAGE,
        published,
        "stored {rows}, {queued} messages queued"
    );
    assert!(queued > 0, "events were still flowing");

    let worker = RunningWorker::start(config, env.pool.clone());
    env.wait_for_rows(published).await;
    worker.stop().await;
    assert_eq!(env.persist_queue_depth().await, 0);
}

#[tokio::test]
async fn prepare_database_names_the_unreachable_endpoint() {
    let error = prepare_database("postgres://postgres:hunter2@127.0.0.1:1/switchboard", 3)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("cannot reach Postgres at postgres://127.0.0.1:1/switchboard: "),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(std::error::Error::source(&error).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_drops_partitions_past_retention_and_prunes_the_dedup_table() {
    let env = TestEnv::new(QueueType::Classic).await;
    let today = Utc::now().date_naive();
    let day = |back: u64| today - chrono::Days::new(back);
    let partition_exists = |day: NaiveDate| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(partition_of(day))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // An old event in an old partition, and dedup rows old and recent.
    let mut old = envelope("old");
    old.received_at -= chrono::Duration::days(10);
    for back in [10, 3, 2] {
        sqlx::query("SELECT switchboard_ensure_partition($1)")
            .bind(day(back))
            .execute(&env.pool)
            .await
            .unwrap();
    }
    for (message, age_hours) in [("stale", 72), ("recent", 1)] {
        sqlx::query(
            "INSERT INTO event_dedup (app_id, message_id, event_id, received_at)
             VALUES ('app-1', $1, $2, now() - make_interval(hours => $3))",
        )
        .bind(message)
        .bind(Uuid::now_v7())
        .bind(age_hours)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let keep_everything = env.start_worker();
    env.publish(std::slice::from_ref(&old)).await;
    env.wait_for_rows(1).await;
    keep_everything.stop().await;
    assert!(
        partition_exists(day(10)).await,
        "retention is off by default"
    );

    let config = WorkerConfig {
        retention_days: Some(2),
        ..env.config()
    };
    let worker = RunningWorker::start(config, env.pool.clone());
    // Partitions are detached and dropped one after the other.
    let dropped = wait_until(|| async {
        !partition_exists(day(10)).await && !partition_exists(day(3)).await
    })
    .await;
    worker.stop().await;
    assert!(dropped, "the partitions past retention are dropped");
    assert_eq!(env.rows().await, 0, "the old event went with its partition");
    assert!(partition_exists(day(2)).await, "days within retention stay");
    assert!(partition_exists(today).await);
    let remembered: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM event_dedup ORDER BY 1")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        remembered,
        ["recent"],
        "rows past the 48 h window are pruned"
    );
}
