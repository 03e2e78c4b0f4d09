//! The write path itself (COPY into the connection's staging table, then one statement):
//! every Segment column, dedup within and across batches, rollups that count only what was
//! inserted, batches with and without dedup keys, and a writer whose connection dies.

use std::net::IpAddr;

use crate::common::{wait_until, TestEnv};
use bus::QueueType;
use chrono::{DateTime, Duration, Utc};
use protocol::envelope::analytics::{CallType, DeviceClass, SegmentFields};
use protocol::{Envelope, Source};
use serde_json::{json, Value};
use uuid::Uuid;

/// A Segment `track` call with every promoted field set.
fn track(app: &str, message_id: &str, user: &str) -> Envelope {
    let mut e = Envelope::new(
        app,
        Source::Track,
        "private-analytics",
        "Order Completed",
        r#"{"type":"track","properties":{"total":9.5}}"#.into(),
    );
    e.user_id = Some(user.into());
    let received = e.received_at;
    let mut fields = SegmentFields {
        call: CallType::Track,
        message_id: message_id.into(),
        anonymous_id: Some(format!("anon-{user}")),
        original_timestamp: Some(received - Duration::seconds(70)),
        sent_at: Some(received - Duration::seconds(10)),
        occurred_at: received - Duration::seconds(60),
        context: Some(r#"{"library":{"name":"analytics.js"}}"#.into()),
        group_id: Some("group-1".into()),
        previous_id: Some("previous-1".into()),
        page: Default::default(),
        campaign: Default::default(),
        client: Default::default(),
    };
    fields.page.url = Some("https://shop.example/cart?x=1".into());
    fields.page.path = Some("/cart".into());
    fields.page.referrer = Some("https://search.example/".into());
    fields.page.search = Some("?x=1".into());
    fields.page.title = Some("Cart".into());
    fields.campaign.source = Some("news".into());
    fields.campaign.medium = Some("email".into());
    fields.campaign.name = Some("spring".into());
    fields.campaign.term = Some("shoes".into());
    fields.campaign.content = Some("top".into());
    fields.client.ip = Some("2001:db8::7".parse::<IpAddr>().unwrap());
    fields.client.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64)".into());
    fields.client.agent.browser = Some("Firefox".into());
    fields.client.agent.browser_version = Some("128.0".into());
    fields.client.agent.os = Some("Linux".into());
    fields.client.agent.os_version = Some("UNKNOWN".into());
    fields.client.agent.device = Some(DeviceClass::Desktop);
    fields.client.agent.is_bot = true;
    e.segment = Some(Box::new(fields));
    e
}

fn pusher(data: &str) -> Envelope {
    Envelope::new("app-1", Source::Api, "orders", "placed", data.into())
}

async fn ids(env: &TestEnv) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn scalar(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&env.pool)
        .await
        .expect(sql)
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct SegmentRow {
    user_id: Option<String>,
    anonymous_id: Option<String>,
    message_id: Option<String>,
    occurred_at: DateTime<Utc>,
    context: Option<Value>,
    r#type: Option<String>,
    original_timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    group_id: Option<String>,
    previous_id: Option<String>,
    page_url: Option<String>,
    page_path: Option<String>,
    page_referrer: Option<String>,
    page_search: Option<String>,
    page_title: Option<String>,
    utm_source: Option<String>,
    utm_medium: Option<String>,
    utm_campaign: Option<String>,
    utm_term: Option<String>,
    utm_content: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    browser: Option<String>,
    browser_version: Option<String>,
    os: Option<String>,
    os_version: Option<String>,
    device_class: Option<String>,
    is_bot: Option<bool>,
}

fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap()
}

/// Every promoted Segment column arrives as sent (times to the microsecond Postgres keeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_events_keep_every_column() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();
    let sent = track("app-1", "m-1", "user-1");
    env.publish(std::slice::from_ref(&sent)).await;
    env.wait_for_event(sent.id).await;
    worker.stop().await;

    let row: SegmentRow = sqlx::query_as(
        "SELECT user_id, anonymous_id, message_id, occurred_at, context, type,
                original_timestamp, sent_at, group_id, previous_id, page_url, page_path,
                page_referrer, page_search, page_title, utm_source, utm_medium, utm_campaign,
                utm_term, utm_content, host(ip) AS ip, user_agent, browser, browser_version,
                os, os_version, device_class, is_bot
         FROM events",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let s = sent.segment.as_deref().unwrap();
    let expected = SegmentRow {
        user_id: Some("user-1".into()),
        anonymous_id: Some("anon-user-1".into()),
        message_id: Some("m-1".into()),
        occurred_at: micros(s.occurred_at),
        context: Some(json!({"library": {"name": "analytics.js"}})),
        r#type: Some("track".into()),
        original_timestamp: s.original_timestamp.map(micros),
        sent_at: s.sent_at.map(micros),
        group_id: Some("group-1".into()),
        previous_id: Some("previous-1".into()),
        page_url: Some("https://shop.example/cart?x=1".into()),
        page_path: Some("/cart".into()),
        page_referrer: Some("https://search.example/".into()),
        page_search: Some("?x=1".into()),
        page_title: Some("Cart".into()),
        utm_source: Some("news".into()),
        utm_medium: Some("email".into()),
        utm_campaign: Some("spring".into()),
        utm_term: Some("shoes".into()),
        utm_content: Some("top".into()),
        ip: Some("2001:db8::7".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        browser: Some("Firefox".into()),
        browser_version: Some("128.0".into()),
        os: Some("Linux".into()),
        os_version: Some("UNKNOWN".into()),
        device_class: Some("desktop".into()),
        is_bot: Some(true),
    };
    assert_eq!(row, expected);
}

/// A `messageId` is stored once per app: twice in one batch, again in a later batch (with a new
/// id, another day even), next to Pusher events without any key in the same batches; another
/// app's same `messageId` is another event. The rollups count the stored rows only, and a
/// redelivered batch changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_retries_are_stored_once_and_counted_once() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();
    let first = track("app-1", "m-1", "user-1");
    let twin = track("app-1", "m-1", "user-1");
    let other = track("app-1", "m-2", "user-2");
    let plain = pusher(r#"{"n":1}"#);
    let batch = [first.clone(), twin, other.clone(), plain.clone()];
    env.publish(&batch).await;
    env.wait_for_event(plain.id).await;

    let mut yesterday = track("app-1", "m-1", "user-1");
    yesterday.received_at -= Duration::days(1);
    let other_app = track("app-2", "m-1", "user-1");
    let plain_again = pusher(r#"{"n":2}"#);
    env.publish(&[yesterday, other_app.clone(), plain_again.clone()])
        .await;
    // The first batch redelivered, whole.
    env.publish(&batch).await;
    let last = pusher(r#"{"n":3}"#);
    env.publish(std::slice::from_ref(&last)).await;
    env.wait_for_event(last.id).await;
    worker.stop().await;

    let stored = vec![
        first.id,
        other.id,
        plain.id,
        other_app.id,
        plain_again.id,
        last.id,
    ];
    assert_eq!(ids(&env).await, sorted(stored));
    assert_eq!(scalar(&env, "SELECT count(*) FROM event_dedup").await, 3);
    assert_eq!(
        scalar(
            &env,
            "SELECT sum(events)::bigint FROM reports.events_per_minute"
        )
        .await,
        6,
        "the rollup counts stored rows only"
    );
    assert_eq!(
        scalar(
            &env,
            "SELECT sum(events)::bigint FROM reports.events_per_minute
             WHERE app_id = 'app-1' AND source = 'track' AND name = 'Order Completed'"
        )
        .await,
        2
    );
    // user-1 in both apps, user-2 in app-1; Pusher events have no user.
    for table in ["active_users_daily", "active_users_hourly"] {
        let users: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT app_id, user_key FROM reports.{table} ORDER BY 1, 2"
        ))
        .fetch_all(&env.pool)
        .await
        .unwrap();
        let expected = [
            ("app-1", "user-1"),
            ("app-1", "user-2"),
            ("app-2", "user-1"),
        ]
        .map(|(a, u)| (a.to_owned(), u.to_owned()));
        assert_eq!(users, expected, "{table}");
    }
    assert_eq!(env.persist_queue_depth().await, 0);
    assert!(env.take_dead_letters().await.is_empty());
}

/// The writer's connection is killed between two batches (its staging table goes with it): the
/// next batch fails as an outage, is retried on a fresh connection with a new staging table,
/// and is stored once; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_replaced_with_its_staging_table() {
    let env = TestEnv::new(QueueType::Classic).await;
    let worker = env.start_worker();
    let first = pusher("1");
    env.publish(std::slice::from_ref(&first)).await;
    env.wait_for_event(first.id).await;

    // Temporary tables of other sessions are in the catalog too.
    let staging_tables = "SELECT count(*) FROM pg_class WHERE relname = 'switchboard_batch'";
    assert_eq!(
        scalar(&env, staging_tables).await,
        1,
        "one writer connection"
    );
    // Every other connection to the database goes, the writer's among them.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert!(
        wait_until(|| async { scalar(&env, staging_tables).await == 0 }).await,
        "the staging table went with its connection"
    );

    let batch: Vec<Envelope> = (0..50).map(|n| pusher(&n.to_string())).collect();
    env.publish(&batch).await;
    env.wait_for_rows(51).await;
    assert!(
        wait_until(|| async { scalar(&env, staging_tables).await == 1 }).await,
        "a new writer connection"
    );
    // Stored once, even when redelivered after the reconnect.
    env.publish(&batch).await;
    let last = pusher("last");
    env.publish(std::slice::from_ref(&last)).await;
    env.wait_for_event(last.id).await;
    worker.stop().await;
    assert_eq!(env.rows().await, 52);
    assert!(env.take_dead_letters().await.is_empty());
}
