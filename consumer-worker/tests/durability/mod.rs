//! What must never block the persist queue or the inserts: an envelope that fails for a
//! non-data reason, retention behind a long analyst query; and idempotency keys in storage.

use std::time::Duration;

use crate::common::{self, wait_until, RunningWorker, TestEnv};
use bus::QueueType;
use chrono::{NaiveDate, Utc};
use consumer_worker::WorkerConfig;
use protocol::envelope::decode_batch;
use protocol::{Envelope, Source};
use sqlx::{Connection, PgConnection};

fn envelope(data: &str) -> Envelope {
    Envelope::new("app-1", Source::Api, "orders", "order-created", data.into())
}

fn partition_of(day: NaiveDate) -> String {
    format!("events_{}", day.format("%Y%m%d"))
}

async fn execute(env: &TestEnv, sql: &str) {
    sqlx::raw_sql(sql).execute(&env.pool).await.expect(sql);
}

async fn scalar_i64(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&env.pool)
        .await
        .expect(sql)
}

/// A worker that splits a failing batch after two attempts.
fn impatient_worker(env: &TestEnv) -> RunningWorker {
    let config = WorkerConfig {
        max_attempts: 2,
        ..env.config()
    };
    RunningWorker::start(config, env.pool.clone())
}

/// The ids in `events`, sorted.
async fn stored_ids(env: &TestEnv) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn exists(env: &TestEnv, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// An audit trigger refuses one envelope with `RAISE EXCEPTION` (SQLSTATE P0001, outside the
/// data classes 22/23/54): after `max_attempts` the batch is split, the good envelopes are
/// stored and the refused one is dead-lettered with the reason; nothing stays in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_that_keeps_failing_is_split_off_and_dead_lettered() {
    let env = TestEnv::new(QueueType::Classic).await;
    execute(
        &env,
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.data->>'poison' = 'yes' THEN
                 RAISE EXCEPTION 'the audit trigger refuses event %', NEW.id;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON events
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .await;
    let worker = impatient_worker(&env);
    let good: Vec<Envelope> = (0..3)
        .map(|i| envelope(&format!("{{\"n\":{i}}}")))
        .collect();
    let poison = envelope(r#"{"poison":"yes"}"#);
    env.publish(&[good[0].clone(), poison.clone(), good[1].clone()])
        .await;
    env.publish(std::slice::from_ref(&good[2])).await;
    env.wait_for_rows(3).await;
    worker.stop().await;

    let stored = stored_ids(&env).await;
    let mut expected: Vec<uuid::Uuid> = good.iter().map(|e| e.id).collect();
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(
        env.persist_queue_depth().await,
        0,
        "every delivery is acked"
    );
    let letters = env.take_dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        decode_batch(&letters[0].body).unwrap(),
        std::slice::from_ref(&poison)
    );
    let reason = &letters[0].reason;
    assert!(
        reason.starts_with(&format!(
            "P0001: the audit trigger refuses event {}",
            poison.id
        )) && reason.ends_with("(failed 2 attempts)"),
        "{reason}"
    );
}

/// A statement-level trigger refuses every insert, even one without rows: Postgres is broken
/// as a whole, not the envelopes, so nothing is dead-lettered; once it is fixed, everything is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_everything_is_waited_for_not_dead_lettered() {
    let env = TestEnv::new(QueueType::Classic).await;
    execute(
        &env,
        "CREATE SEQUENCE refusals;
         CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('refusals');
             RAISE EXCEPTION 'inserts are suspended';
         END $$;
         CREATE TRIGGER refuse_all BEFORE INSERT ON events
             FOR EACH STATEMENT EXECUTE FUNCTION refuse_all();",
    )
    .await;
    let worker = impatient_worker(&env);
    let sent: Vec<Envelope> = (0..3).map(|i| envelope(&i.to_string())).collect();
    env.publish(&sent).await;
    // Two rounds of attempts and probes (sequences are not transactional).
    let env_ref = &env;
    assert!(
        wait_until(
            || async move { scalar_i64(env_ref, "SELECT last_value FROM refusals").await >= 6 }
        )
        .await
    );
    assert_eq!(env.rows().await, 0);
    execute(&env, "DROP TRIGGER refuse_all ON events").await;
    env.wait_for_rows(3).await;
    worker.stop().await;
    assert!(env.take_dead_letters().await.is_empty());
    assert_eq!(env.persist_queue_depth().await, 0);
}

/// Envelopes carrying the same idempotency key for the same app are stored once, whatever
/// their ids and days; another app's key, or another key, is another event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_stored_once_per_app() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();
    let keyed = |app: &str, key: &str| {
        let mut e = Envelope::new(app, Source::Api, "orders", "placed", "{}".into());
        e.idempotency_key = Some(key.into());
        e
    };
    let first = keyed("app-1", "retry-1 orders");
    env.publish(std::slice::from_ref(&first)).await;
    env.wait_for_event(first.id).await;
    let mut yesterday = keyed("app-1", "retry-1 orders");
    yesterday.received_at -= chrono::Duration::days(1);
    let same_batch = keyed("app-1", "retry-1 orders");
    let other_app = keyed("app-2", "retry-1 orders");
    let other_key = keyed("app-1", "retry-2 orders");
    env.publish(&[yesterday, same_batch, other_app.clone(), other_key.clone()])
        .await;
    env.wait_for_event(other_key.id).await;
    worker.stop().await;
    let stored = stored_ids(&env).await;
    let mut expected = vec![first.id, other_app.id, other_key.id];
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(
        scalar_i64(&env, "SELECT count(*) FROM idempotency_dedup").await,
        3
    );
}

/// An analyst's transaction stays open on an expired partition. Inserts keep flowing while
/// retention waits for it; the partition goes once the query ended (its detach finished with
/// FINALIZE after timing out), and nothing within retention, nor an unrelated table of the
/// same name pattern, is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_a_long_query_without_blocking_inserts() {
    let env = TestEnv::new(QueueType::Classic).await;
    let today = Utc::now().date_naive();
    let day = |back: u64| today - chrono::Days::new(back);
    for back in [10, 5, 2] {
        sqlx::query("SELECT switchboard_ensure_partition($1)")
            .bind(day(back))
            .execute(&env.pool)
            .await
            .unwrap();
    }
    execute(&env, "CREATE TABLE events_19990101 (note text)").await;
    let mut old = envelope("old");
    old.received_at -= chrono::Duration::days(10);
    let keep = env.start_worker();
    env.publish(std::slice::from_ref(&old)).await;
    env.wait_for_rows(1).await;
    keep.stop().await;

    let mut analyst = PgConnection::connect(&env.database_url_via(common::POSTGRES_ADDR))
        .await
        .unwrap();
    sqlx::raw_sql(
        "BEGIN; SELECT count(*) FROM events WHERE received_at < now() - interval '9 days'",
    )
    .execute(&mut analyst)
    .await
    .unwrap();

    let config = WorkerConfig {
        retention_days: Some(2),
        maintenance_interval: Duration::from_secs(1),
        ..env.config()
    };
    let worker = RunningWorker::start(config, env.pool.clone());
    let env_ref = &env;
    assert!(
        wait_until(|| async move {
            scalar_i64(
                env_ref,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
                > 0
        })
        .await,
        "retention waits behind the analyst"
    );
    let today_partition = partition_of(today);
    for round in 0..3 {
        let fresh: Vec<Envelope> = (0..5).map(|i| envelope(&format!("{round}{i}"))).collect();
        env.publish(&fresh).await;
        let expected = 5 * (round + 1);
        let sql = format!("SELECT count(*) FROM {today_partition}");
        let sql = sql.as_str();
        assert!(
            wait_until(|| async move { scalar_i64(env_ref, sql).await == expected }).await,
            "inserts flow while retention waits (round {round})"
        );
    }
    assert!(
        exists(&env, &partition_of(day(10))).await,
        "not while queried"
    );
    // The detach gives up at its lock timeout, leaving the partition pending; a later round
    // takes it up with FINALIZE.
    assert!(
        wait_until(|| async move {
            scalar_i64(
                env_ref,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'active'
                   AND query LIKE 'ALTER TABLE events DETACH PARTITION % FINALIZE'",
            )
            .await
                == 1
        })
        .await,
        "a later round finishes the interrupted detach"
    );
    assert_eq!(
        scalar_i64(
            &env,
            "SELECT count(*) FROM pg_inherits WHERE inhdetachpending"
        )
        .await,
        1
    );
    sqlx::raw_sql("COMMIT").execute(&mut analyst).await.unwrap();
    let gone = |back: u64| async move { !exists(env_ref, &partition_of(day(back))).await };
    assert!(
        wait_until(|| async move { gone(10).await && gone(5).await }).await,
        "expired partitions are dropped once the query ended"
    );
    worker.stop().await;
    assert!(
        exists(&env, &partition_of(day(2))).await,
        "within retention"
    );
    assert!(exists(&env, &today_partition).await);
    assert!(
        exists(&env, "events_19990101").await,
        "not a partition of events"
    );
    assert_eq!(env.rows().await, 15, "only the old event went");
}
