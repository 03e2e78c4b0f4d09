//! What survives: a worker stopped mid-retry, one that crashed holding a claim, Postgres away
//! while messages arrive; and retention of old rows.

use std::collections::HashSet;
use std::time::Duration;

use bus::QueueType;
use consumer_worker::prepare_database;
use faults::receiver::{Behaviour, Receiver};
use protocol::webhook::WebhookEvent;

use super::{
    all, answered, body, client_event, config, metrics, publish, start, wait_for_status, WAIT,
};
use crate::common::{wait_until, Proxy, TestEnv, POSTGRES_ADDR};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_retries_are_pending_loses_nothing() {
    let env = TestEnv::new(QueueType::Classic).await;
    let receiver = Receiver::start(Behaviour::Status(503)).await;
    let hook = all(&receiver.url("/later"));
    let name = hook.name.clone();
    let first = start(config(&env, vec![hook.clone()]), &env.pool);
    let sent: Vec<WebhookEvent> = (0..10).map(|n| client_event("private-s", n)).collect();
    publish(&env, &sent[..5]).await;
    receiver.wait_until(WAIT, |r| r.len() >= 2).await;
    first.stop().await;
    // Published while no worker runs: it waits in the queue.
    publish(&env, &sent[5..]).await;
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND lease_until IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        pending, 1,
        "the failing batch is pending, its claim released"
    );
    receiver.set(Behaviour::Ok);
    let second = start(config(&env, vec![hook]), &env.pool);
    let received = receiver
        .wait_until(WAIT, |r| {
            answered(r)
                .iter()
                .map(|r| body(r).events.len())
                .sum::<usize>()
                >= sent.len()
        })
        .await;
    let delivered: HashSet<String> = answered(&received)
        .iter()
        .flat_map(|r| body(r).events)
        .map(|e| serde_json::to_string(&e).unwrap())
        .collect();
    assert_eq!(delivered.len(), sent.len(), "every event delivered");
    wait_for_status(&env, &name, "delivered", 2).await;
    let shown = metrics().render();
    assert!(
        shown.contains("switchboard_webhook_pending ")
            && shown.contains("switchboard_webhook_oldest_pending_seconds "),
        "{shown}"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acked_only_after_their_batches_are_committed() {
    let env = TestEnv::new(QueueType::Classic).await;
    let proxy = Proxy::start(POSTGRES_ADDR).await.unwrap();
    let pool = prepare_database(&env.database_url_via(proxy.addr()), 3)
        .await
        .unwrap();
    let receiver = Receiver::start(Behaviour::Ok).await;
    let hook = all(&receiver.url("/committed"));
    let name = hook.name.clone();
    let worker = start(config(&env, vec![hook.clone()]), &pool);
    proxy.cut();
    let sent: Vec<WebhookEvent> = (0..6).map(|n| client_event("private-c", n)).collect();
    for chunk in sent.chunks(2) {
        publish(&env, chunk).await;
    }
    // Stopped while Postgres is away: nothing was stored, so nothing was acked.
    worker.stop().await;
    assert_eq!(webhook_queue_depth(&env).await, 3);
    assert!(receiver.received().is_empty());
    proxy.restore();
    let worker = start(config(&env, vec![hook]), &pool);
    let received = receiver
        .wait_until(WAIT, |r| {
            answered(r)
                .iter()
                .map(|r| body(r).events.len())
                .sum::<usize>()
                >= sent.len()
        })
        .await;
    let mut delivered: Vec<String> = answered(&received)
        .iter()
        .flat_map(|r| body(r).events)
        .map(|e| serde_json::to_string(&e).unwrap())
        .collect();
    delivered.sort();
    let mut expected: Vec<String> = sent
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    expected.sort();
    assert_eq!(delivered, expected, "every event, once");
    wait_for_status(&env, &name, "delivered", received.len() as i64).await;
    worker.stop().await;
    assert_eq!(webhook_queue_depth(&env).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_rows_are_sent_again_after_its_lease() {
    let env = TestEnv::new(QueueType::Classic).await;
    let receiver = Receiver::start(Behaviour::Hang).await;
    let hook = all(&receiver.url("/crash"));
    let name = hook.name.clone();
    let first = start(config(&env, vec![hook.clone()]), &env.pool);
    publish(&env, &[client_event("private-k", 1)]).await;
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    // A crash: the tasks are gone without releasing their claim.
    first.task.abort();
    let _ = first.task.await;
    let crashed = std::time::Instant::now();
    receiver.set(Behaviour::Ok);
    let second = start(config(&env, vec![hook]), &env.pool);
    let received = receiver.wait_until(WAIT, |r| !answered(r).is_empty()).await;
    assert_eq!(answered(&received).len(), 1);
    // The lease: the 1 s request timeout + 10 s.
    assert!(
        crashed.elapsed() >= Duration::from_secs(9),
        "sent again before the lease was over: {:?}",
        crashed.elapsed()
    );
    assert_eq!(
        received[0].headers["x-switchboard-webhook-id"],
        received[1].headers["x-switchboard-webhook-id"]
    );
    let rows = wait_for_status(&env, &name, "delivered", 1).await;
    assert_eq!(rows[0].0, 1, "the crashed attempt was never recorded");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_delivered_and_dead_rows_are_deleted() {
    let env = TestEnv::new(QueueType::Classic).await;
    sqlx::raw_sql(
        "INSERT INTO webhook_deliveries (id, app_id, webhook, event_types, events, status, created_at) VALUES \
         (gen_random_uuid(), 'a', 'http://h/', '{}', '[]', 'delivered', now() - interval '3 days'), \
         (gen_random_uuid(), 'a', 'http://h/', '{}', '[]', 'delivered', now() - interval '1 hour'), \
         (gen_random_uuid(), 'a', 'http://h/', '{}', '[]', 'dead', now() - interval '3 days'), \
         (gen_random_uuid(), 'a', 'http://h/', '{}', '[]', 'dead', now() - interval '9 days'), \
         (gen_random_uuid(), 'a', 'http://h/', '{}', '[]', 'pending', now() - interval '30 days')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let mut config = config(&env, vec![all("http://127.0.0.1:9/unused")]);
    config.delivered_retention = Duration::from_secs(2 * 86_400);
    config.dead_retention = Duration::from_secs(7 * 86_400);
    let worker = start(config, &env.pool);
    let pool = &env.pool;
    let left = || async move {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT status, count(*) FROM webhook_deliveries GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    };
    assert!(
        wait_until(|| async { left().await.iter().map(|(_, n)| n).sum::<i64>() == 3 }).await,
        "{:?}",
        left().await
    );
    let expected = [("dead", 1), ("delivered", 1), ("pending", 1)].map(|(s, n)| (s.to_owned(), n));
    assert_eq!(left().await, expected);
    worker.stop().await;
}

/// Messages ready in the webhook queue (stop the worker first: unacked ones are not counted).
async fn webhook_queue_depth(env: &TestEnv) -> u32 {
    env.channel
        .queue_declare(
            &env.topology.webhook_queue(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("passive declare of the webhook queue")
        .message_count()
}
