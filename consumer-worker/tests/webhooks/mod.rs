//! Webhooks, the worker's side, against real RabbitMQ and Postgres and receivers inside the test
//! (`faults::receiver`): signatures, batching, retries until delivered, every bad receiver's
//! documented outcome, isolation between webhooks; `recovery`: what survives a stopped or
//! crashed worker and a Postgres outage, and retention.

mod recovery;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use bus::QueueType;
use consumer_worker::webhooks::{Target, WebhooksConfig};
use faults::receiver::{Behaviour, Received, Receiver};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use protocol::envelope::join_encoded;
use protocol::webhook::{Body, EventType, Filter, Queued, WebhookEvent};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::{wait_until, TestEnv, AMQP_URL, STOP_WITHIN};

const APP: &str = "app-1";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret";
const WAIT: Duration = Duration::from_secs(30);

/// The process-wide recorder, installed by the first test that looks at metrics.
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("one recorder per test process")
    })
}

/// The value of a counter or gauge line starting with `series`, 0 when absent.
fn metric(series: &str) -> f64 {
    metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn target(url: &str, types: &[EventType], prefix: Option<&str>) -> Target {
    let filter = Filter {
        event_types: types.to_vec(),
        channel_prefix: prefix.map(str::to_owned),
    };
    Target::new(APP, KEY, SECRET, url, filter, &BTreeMap::new()).expect("a valid target")
}

fn all(url: &str) -> Target {
    target(url, &EventType::ALL, None)
}

/// Fast settings: a short window, quick retries, a 1 s request timeout. Installs the metrics
/// recorder first, so that the counters of what the test starts are recorded.
fn config(env: &TestEnv, targets: Vec<Target>) -> WebhooksConfig {
    metrics();
    WebhooksConfig {
        topology: env.topology.clone(),
        queue_type: QueueType::Classic,
        targets,
        batch_window: Duration::from_millis(200),
        max_events_per_request: 100,
        request_timeout: Duration::from_secs(1),
        max_response_bytes: 64 * 1024,
        retry_period: Duration::from_secs(60),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        delivered_retention: Duration::from_secs(86_400),
        dead_retention: Duration::from_secs(86_400),
        prefetch: 64,
    }
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start(config: WebhooksConfig, pool: &PgPool) -> Running {
    let shutdown = CancellationToken::new();
    let broker = bus::Broker::spawn(vec![AMQP_URL.into()], "test-webhooks", &TaskTracker::new());
    let task = tokio::spawn(consumer_worker::webhooks::run(
        config,
        broker,
        pool.clone(),
        shutdown.clone(),
    ));
    Running { shutdown, task }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_WITHIN, self.task)
            .await
            .expect("webhooks stop soon after shutdown")
            .expect("the webhooks task does not panic");
    }
}

fn client_event(channel: &str, n: usize) -> WebhookEvent {
    WebhookEvent::ClientEvent {
        channel: channel.into(),
        event: "client-n".into(),
        data: format!(r#"{{"n":{n}}}"#),
        socket_id: "1.1".into(),
        user_id: None,
    }
}

/// Publishes one message of the webhook queue carrying `events` of [`APP`], confirmed.
async fn publish(env: &TestEnv, events: &[WebhookEvent]) {
    let parts: Vec<Vec<u8>> = events
        .iter()
        .map(|event| {
            Queued {
                app_id: APP.into(),
                event: event.clone(),
            }
            .encode()
        })
        .collect();
    let body = join_encoded(parts.iter().map(Vec::as_slice));
    let confirm = env
        .channel
        .basic_publish(
            "",
            &env.topology.webhook_queue(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(
        confirm,
        lapin::publisher_confirm::Confirmation::Ack(None)
    ));
}

fn body(received: &Received) -> Body {
    serde_json::from_slice(&received.body).expect("a webhook body")
}

fn answered(received: &[Received]) -> Vec<&Received> {
    received
        .iter()
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .collect()
}

/// Waits until every row of `webhook` has `status`; returns (attempts, last_error) per row.
async fn wait_for_status(
    env: &TestEnv,
    webhook: &str,
    status: &str,
    rows: i64,
) -> Vec<(i32, Option<String>)> {
    let pool = &env.pool;
    let reached = wait_until(|| async move {
        let counted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook = $1 AND status = $2",
        )
        .bind(webhook)
        .bind(status)
        .fetch_one(pool)
        .await
        .expect("count rows");
        counted == rows
    })
    .await;
    let found: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT status, attempts, last_error FROM webhook_deliveries WHERE webhook = $1",
    )
    .bind(webhook)
    .fetch_all(&env.pool)
    .await
    .expect("read rows");
    assert!(
        reached,
        "{webhook}: expected {rows} rows {status}, have {found:?}"
    );
    found.into_iter().map(|(_, a, e)| (a, e)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_signed_filtered_and_cut_by_size_and_window() {
    let env = TestEnv::new(QueueType::Classic).await;
    let everything = Receiver::start(Behaviour::Ok).await;
    let presence = Receiver::start(Behaviour::Ok).await;
    let mut config = config(
        &env,
        vec![
            all(&everything.url("/hooks?token=t")),
            target(
                &presence.url("/p"),
                &[EventType::ClientEvent],
                Some("presence-"),
            ),
        ],
    );
    config.max_events_per_request = 3;
    config.batch_window = Duration::from_secs(1);
    let worker = start(config, &env.pool);
    // One message of five events, then another of one within the window.
    let mut events: Vec<WebhookEvent> = (0..5).map(|n| client_event("private-a", n)).collect();
    events[4] = client_event("presence-a", 4);
    publish(&env, &events).await;
    let miss = WebhookEvent::CacheMiss {
        channel: "cache-a".into(),
    };
    publish(&env, std::slice::from_ref(&miss)).await;

    let got = everything.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(got.len(), 2, "two requests: {got:?}");
    let mut bodies: Vec<Body> = got.iter().map(body).collect();
    // Both batches hold three events: the first has the first message's first three.
    bodies.sort_by_key(|b| b.events[0] != events[0]);
    assert_eq!(bodies[0].events, events[..3]);
    assert_eq!(
        bodies[1].events,
        [events[3].clone(), events[4].clone(), miss]
    );
    let ids: HashSet<&String> = got
        .iter()
        .map(|r| &r.headers["x-switchboard-webhook-id"])
        .collect();
    assert_eq!(ids.len(), 2, "one id per batch");
    for request in &got {
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["x-pusher-key"], KEY);
        assert!(protocol::webhook::verify(
            SECRET,
            &request.body,
            &request.headers["x-pusher-signature"]
        ));
        let row: (
            serde_json::Value,
            Vec<String>,
            chrono::DateTime<chrono::Utc>,
        ) = sqlx::query_as(
            "SELECT events, event_types, created_at FROM webhook_deliveries WHERE id = $1::uuid",
        )
        .bind(&request.headers["x-switchboard-webhook-id"])
        .fetch_one(&env.pool)
        .await
        .expect("the row of the id");
        assert_eq!(body(request).time_ms, row.2.timestamp_millis());
        assert_eq!(row.0, serde_json::to_value(&body(request).events).unwrap());
        assert!(row.1.contains(&"client_event".to_owned()));
    }
    // The presence webhook gets only the presence client event.
    let got = presence.wait_until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(body(&got[0]).events, [events[4].clone()]);
    wait_for_status(&env, &all(&everything.url("/hooks")).name, "delivered", 2).await;
    assert_eq!(presence.received().len(), 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_every_event_once_per_id() {
    let env = TestEnv::new(QueueType::Classic).await;
    let receiver = Receiver::start(Behaviour::FailFirst(3)).await;
    let hook = all(&receiver.url("/flaky"));
    let name = hook.name.clone();
    let worker = start(config(&env, vec![hook]), &env.pool);
    let sent: Vec<WebhookEvent> = (0..20).map(|n| client_event("private-f", n)).collect();
    for chunk in sent.chunks(5) {
        publish(&env, chunk).await;
    }
    let all_in = |received: &[Received]| {
        answered(received)
            .iter()
            .map(|r| body(r).events.len())
            .sum::<usize>()
            >= sent.len()
    };
    let received = receiver.wait_until(WAIT, all_in).await;
    assert_eq!(received.iter().filter(|r| r.status == Some(500)).count(), 3);
    let ok = answered(&received);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for request in &ok {
        *per_id
            .entry(&request.headers["x-switchboard-webhook-id"])
            .or_default() += 1;
    }
    assert!(
        per_id.values().all(|&n| n == 1),
        "one 2xx per id: {per_id:?}"
    );
    let delivered: Vec<WebhookEvent> = ok.iter().flat_map(|r| body(r).events).collect();
    let mut expected = sent.clone();
    let key = |e: &WebhookEvent| serde_json::to_string(e).unwrap();
    expected.sort_by_key(key);
    let mut delivered_sorted = delivered;
    delivered_sorted.sort_by_key(key);
    assert_eq!(delivered_sorted, expected, "every event, once");
    // A retried batch is sent with the same id and the same bytes.
    let failed = &received[0];
    let retried = ok
        .iter()
        .find(|r| {
            r.headers["x-switchboard-webhook-id"] == failed.headers["x-switchboard-webhook-id"]
        })
        .expect("the failed batch delivered later");
    assert_eq!(retried.body, failed.body);
    let rows = wait_for_status(&env, &name, "delivered", per_id.len() as i64).await;
    assert!(rows.iter().any(|(attempts, error)| *attempts >= 2
        && error
            .as_deref()
            .is_some_and(|e| e.starts_with("status: HTTP 500"))));
    assert!(metric("switchboard_webhook_attempts_total{result=\"delivered\"}") >= 1.0);
    assert!(metric("switchboard_webhook_failures_total{reason=\"status_5xx\"}") >= 3.0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_receivers_end_dead_with_their_reason() {
    let env = TestEnv::new(QueueType::Classic).await;
    let hang = Receiver::start(Behaviour::Hang).await;
    let redirect = Receiver::start(Behaviour::Redirect).await;
    let gone = Receiver::start(Behaviour::Status(410)).await;
    let failing = Receiver::start(Behaviour::Status(503)).await;
    let huge = Receiver::start(Behaviour::HugeBody(1024 * 1024)).await;
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/nobody", listener.local_addr().unwrap())
    };
    let cases = [
        (
            all(&hang.url("/hang")),
            "timeout",
            "timeout: no complete answer within 1s",
        ),
        (
            all(&redirect.url("/r")),
            "redirect",
            "redirect: HTTP 302 to /elsewhere; redirects are not followed",
        ),
        (
            all(&gone.url("/g")),
            "status_4xx",
            "status: HTTP 410 \"answered 410\"",
        ),
        (
            all(&failing.url("/f")),
            "status_5xx",
            "status: HTTP 503 \"answered 503\"",
        ),
        (
            all(&huge.url("/h")),
            "body_too_large",
            "body_too_large: HTTP 200 with an answer over 65536 bytes",
        ),
        (all(&unreachable), "connect", "connect: "),
    ];
    let before: Vec<f64> = cases
        .iter()
        .map(|(_, reason, _)| {
            metric(&format!(
                "switchboard_webhook_failures_total{{reason=\"{reason}\"}}"
            ))
        })
        .collect();
    let mut config = config(&env, cases.iter().map(|(t, _, _)| t.clone()).collect());
    config.retry_period = Duration::from_secs(2);
    config.backoff_base = Duration::from_millis(200);
    let worker = start(config, &env.pool);
    publish(&env, &[client_event("private-bad", 1)]).await;
    for (i, (target, reason, error)) in cases.iter().enumerate() {
        let rows = wait_for_status(&env, &target.name, "dead", 1).await;
        let (attempts, last_error) = &rows[0];
        assert!(
            *attempts >= 2,
            "{reason}: retried before it was dead ({attempts})"
        );
        let last_error = last_error.as_deref().unwrap_or_default();
        assert!(last_error.starts_with(error), "{reason}: {last_error}");
        let counted = metric(&format!(
            "switchboard_webhook_failures_total{{reason=\"{reason}\"}}"
        ));
        assert!(counted >= before[i] + 2.0, "{reason}: {counted}");
    }
    assert!(
        hang.received().len() >= 2,
        "the hanging receiver got every attempt"
    );
    assert!(metric("switchboard_webhook_dead_total") >= 6.0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_delay_another_webhook() {
    let env = TestEnv::new(QueueType::Classic).await;
    let hang = Receiver::start(Behaviour::Hang).await;
    let healthy = Receiver::start(Behaviour::Ok).await;
    let mut config = config(
        &env,
        vec![all(&hang.url("/hang")), all(&healthy.url("/ok"))],
    );
    config.request_timeout = Duration::from_secs(20);
    config.batch_window = Duration::from_millis(20);
    let worker = start(config, &env.pool);
    // Occupy the hanging webhook's task first, then send to both.
    publish(&env, &[client_event("private-1", 1)]).await;
    hang.wait_until(WAIT, |r| !r.is_empty()).await;
    let started = std::time::Instant::now();
    for n in 2..6 {
        publish(&env, &[client_event("private-1", n)]).await;
        let got = healthy
            .wait_until(WAIT, |r| answered(r).len() >= n - 1)
            .await;
        assert_eq!(got.len(), n - 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the healthy webhook waited for the hanging one: {:?}",
        started.elapsed()
    );
    assert_eq!(
        hang.received().len(),
        1,
        "still hanging on its first attempt"
    );
    worker.stop().await;
}
