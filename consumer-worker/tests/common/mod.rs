//! Shared setup for the integration tests: a fresh database and topology per test, against the
//! real Postgres and RabbitMQ on 127.0.0.1, removed again when the [`TestEnv`] is dropped (also
//! when the test fails).

pub use faults::Proxy;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use bus::{QueueType, Topology, EVENT_ROUTING_KEY};
use consumer_worker::{prepare_database, WorkerConfig, FAILED_AT_HEADER, REASON_HEADER};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use protocol::envelope::encode_batch;
use protocol::Envelope;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const POSTGRES_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5432));
pub const AMQP_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5672));

/// How long a condition may take to become true.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// How long `run` may take to return once its shutdown token is cancelled.
pub const STOP_WITHIN: Duration = Duration::from_secs(5);

pub struct TestEnv {
    /// `switchboard_test_<random>`.
    pub database: String,
    /// A pool on the test database (direct, not proxied).
    pub pool: PgPool,
    pub topology: Topology,
    queue_type: QueueType,
    _amqp: Connection,
    /// Confirm-mode channel for publishing and inspecting queues.
    pub channel: Channel,
}

impl TestEnv {
    pub async fn new(queue_type: QueueType) -> TestEnv {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("switchboard_test_{}", &suffix[..16]);
        let pool = prepare_database(&database_url(POSTGRES_ADDR, &database), 3)
            .await
            .expect("prepare the test database");
        let topology = Topology::new(format!("t{}", &suffix[..12]));
        let amqp = bus::connect(AMQP_URL, "switchboard-test")
            .await
            .expect("connect to RabbitMQ");
        let channel = amqp.create_channel().await.expect("open a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        bus::declare_durable(&channel, &topology, queue_type)
            .await
            .expect("declare the topology");
        TestEnv {
            database,
            pool,
            topology,
            queue_type,
            _amqp: amqp,
            channel,
        }
    }

    /// The test database's URL through `addr` (Postgres itself or a proxy in front of it).
    pub fn database_url_via(&self, addr: SocketAddr) -> String {
        database_url(addr, &self.database)
    }

    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            topology: self.topology.clone(),
            persist_queue_type: self.queue_type,
            prefetch: 2000,
            max_batch: 5000,
            batch_linger: Duration::from_millis(5),
            partition_days_ahead: 3,
            dedup_window: Duration::from_secs(48 * 3600),
            retention_days: None,
            max_attempts: 3,
            maintenance_interval: Duration::from_secs(3600),
        }
    }

    /// Starts a worker with the default test config on the direct pool.
    pub fn start_worker(&self) -> RunningWorker {
        RunningWorker::start(self.config(), self.pool.clone())
    }

    /// Publishes one message carrying `envelopes` and waits for the broker's confirm.
    pub async fn publish(&self, envelopes: &[Envelope]) {
        publish_body(&self.channel, &self.topology, &encode_batch(envelopes)).await;
    }

    /// Publishes a raw body as one message and waits for the broker's confirm.
    pub async fn publish_body(&self, body: &[u8]) {
        publish_body(&self.channel, &self.topology, body).await;
    }

    pub async fn rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// Waits until `events` holds exactly `expected` rows; panics after a while.
    pub async fn wait_for_rows(&self, expected: i64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows().await;
            if rows == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {expected} rows, have {rows}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the row of envelope `id` exists.
    pub async fn wait_for_event(&self, id: uuid::Uuid) {
        let pool = &self.pool;
        let reached = wait_until(move || async move {
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT FROM events WHERE id = $1)")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("look up an event")
        })
        .await;
        assert!(reached, "event {id} was not persisted");
    }

    /// Messages ready in the persist queue (unacked ones are not counted: stop workers first).
    pub async fn persist_queue_depth(&self) -> u32 {
        let queue = self
            .channel
            .queue_declare(
                &self.topology.persist_queue(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare of the persist queue");
        queue.message_count()
    }

    /// Takes every message from the dead-letter queue.
    pub async fn take_dead_letters(&self) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                &self.topology.dead_letter_queue(),
                BasicGetOptions::default(),
            )
            .await
            .expect("get from the dead-letter queue")
        {
            let delivery = message.delivery;
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let header = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongString(value)) => value.to_string(),
                other => panic!("dead letter header {name} is {other:?}"),
            };
            letters.push(DeadLetter {
                reason: header(REASON_HEADER),
                failed_at: header(FAILED_AT_HEADER),
                body: delivery.data.clone(),
            });
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack a dead letter");
        }
        letters
    }
}

impl Drop for TestEnv {
    /// Drops the database and deletes the queues and exchange, from a thread of its own so that
    /// it also runs when the test panics.
    fn drop(&mut self) {
        let database = self.database.clone();
        let topology = self.topology.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let admin = PgPool::connect(&database_url(POSTGRES_ADDR, "postgres"))
                    .await
                    .expect("connect to the postgres database");
                sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .execute(&admin)
                    .await
                    .expect("drop the test database");
                let amqp = bus::connect(AMQP_URL, "switchboard-test-cleanup")
                    .await
                    .expect("connect to RabbitMQ");
                let channel = amqp.create_channel().await.expect("open a channel");
                for queue in [
                    topology.persist_queue(),
                    topology.dead_letter_queue(),
                    topology.webhook_queue(),
                ] {
                    channel
                        .queue_delete(&queue, QueueDeleteOptions::default())
                        .await
                        .expect("delete a test queue");
                }
                channel
                    .exchange_delete(
                        &topology.events_exchange(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await
                    .expect("delete the test exchange");
                amqp.close(200, "cleaned up").await.expect("close");
            });
        });
        let cleaned = cleanup.join();
        if !std::thread::panicking() {
            cleaned.expect("test cleanup");
        }
    }
}

pub struct DeadLetter {
    pub reason: String,
    pub failed_at: String,
    pub body: Vec<u8>,
}

/// A worker running `consumer_worker::run` on the test runtime.
pub struct RunningWorker {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningWorker {
    pub fn start(config: WorkerConfig, pool: PgPool) -> RunningWorker {
        Self::start_on(AMQP_URL, config, pool)
    }

    /// Starts a worker whose connection goes to `amqp_url` (a proxy in front of the broker).
    pub fn start_on(amqp_url: &str, config: WorkerConfig, pool: PgPool) -> RunningWorker {
        let shutdown = CancellationToken::new();
        let broker = bus::Broker::spawn(vec![amqp_url.into()], "test-worker", &TaskTracker::new());
        let task = tokio::spawn(consumer_worker::run(config, broker, pool, shutdown.clone()));
        RunningWorker { shutdown, task }
    }

    /// Cancels the worker and waits for `run` to return; panics unless it does within
    /// [`STOP_WITHIN`]. Returns how long it took.
    pub async fn stop(self) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        tokio::time::timeout(STOP_WITHIN, self.task)
            .await
            .expect("run returns soon after shutdown")
            .expect("the worker task does not panic");
        started.elapsed()
    }
}

pub fn database_url(addr: SocketAddr, database: &str) -> String {
    format!("postgres://postgres@{addr}/{database}")
}

pub async fn publish_body(channel: &Channel, topology: &Topology, body: &[u8]) {
    let confirm = channel
        .basic_publish(
            &topology.events_exchange(),
            EVENT_ROUTING_KEY,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("publisher confirm");
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "broker did not accept the message: {confirm:?}"
    );
}

/// Polls `condition` every [`POLL`] until it holds or [`WAIT`] passes; returns whether it held.
pub async fn wait_until<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
