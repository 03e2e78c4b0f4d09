//! Wires Switchboard's roles together. `main` parses the command line and calls [`start`];
//! tests call the same [`start`] on port 0.

pub mod admin;
pub mod config;
mod dashboard;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use admin::Check;
use bus::{Broker, FencePublisher, Publisher, PublisherConfig, Topology, WebhookPublisher};
use config::Config;
use consumer_worker::WorkerConfig;
use dashboards::console::ConsoleConfig;
use dashboards::DashboardConfig;
use dispatcher::{LiveConfig, Registry, RegistryConfig};
use ingest::server::{Limits, Listener, Liveness};
use ingest::tls::{Tls, TlsError};
use ingest::{About, Backends, Gateway, History, Webhooks};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Which parts of Switchboard this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway + dispatcher + worker in one process.
    Serve,
    /// Gateway + dispatcher.
    Gateway,
    /// Consumer worker only.
    Worker,
}

impl Role {
    fn has_gateway(self) -> bool {
        matches!(self, Role::Serve | Role::Gateway)
    }
    fn has_worker(self) -> bool {
        matches!(self, Role::Serve | Role::Worker)
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Broker(#[from] bus::BusError),
    #[error(transparent)]
    Database(#[from] consumer_worker::StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the live queue was not ready within {0:?}")]
    LiveNotReady(Duration),
    #[error("the publisher did not connect to RabbitMQ within {0:?}")]
    PublisherNotReady(Duration),
    #[error("the dashboard's database: {0}")]
    Dashboard(#[source] sqlx::Error),
    #[error("the history's database: {0}")]
    History(#[source] sqlx::Error),
    #[error("TLS of the {listener} listener: {source}")]
    Tls {
        listener: &'static str,
        #[source]
        source: TlsError,
    },
}

/// A started process: its bound addresses and the tasks to wait for after shutdown.
pub struct Running {
    pub gateway_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
}

impl Running {
    /// Waits until every task has finished after the shutdown token fired, at most the
    /// configured shutdown timeout. Returns false if the deadline passed first.
    pub async fn finished(self) -> bool {
        self.tracker.close();
        tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// A bound listener, not yet served: its address is known (for `GET /` and the tests) before
/// anything else starts.
struct Bound {
    name: &'static str,
    socket: TcpListener,
    addr: SocketAddr,
    limits: Limits,
    tls: Option<Arc<Tls>>,
}

impl Bound {
    async fn bind(
        name: &'static str,
        addr: SocketAddr,
        limits: Limits,
        tls: Option<&config::TlsSection>,
    ) -> Result<Bound, StartError> {
        let tls = tls
            .map(|tls| Tls::load(tls.files()))
            .transpose()
            .map_err(|source| StartError::Tls {
                listener: name,
                source,
            })?
            .map(Arc::new);
        let bind_error = |source| StartError::Bind { addr, source };
        let socket = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        Ok(Bound {
            name,
            socket,
            addr,
            limits,
            tls,
        })
    }

    /// The listener for `ingest::server::serve`; its certificate is re-read until `shutdown`.
    fn listen(self, tracker: &TaskTracker, shutdown: &CancellationToken) -> Listener {
        if let Some(tls) = &self.tls {
            tracker.spawn(tls.clone().watch(self.name, shutdown.clone()));
        }
        Listener {
            name: self.name,
            socket: self.socket,
            limits: self.limits,
            tls: self.tls,
            liveness: Liveness::started(),
        }
    }
}

const LIVE_READY_TIMEOUT: Duration = Duration::from_secs(10);
const DATABASE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often the worker ensures the partitions ahead, applies retention and prunes the dedup
/// tables (also once at start).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Checks the dependencies, binds the listeners and starts the role's tasks. Everything stops
/// when `shutdown` is cancelled; then await [`Running::finished`].
pub async fn start(
    role: Role,
    config: Config,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    config.validate()?;
    let apps = config.apps().map_err(config::ConfigError::from)?;
    if config.dev_credentials_exposed() {
        warn!(bind = %config.bind, "the development app credentials (app-key/app-secret) are served on a non-loopback address: configure your own apps");
    }
    // Fail fast, with one clear line, when no RabbitMQ node is reachable.
    let amqp_urls = config.amqp_urls();
    bus::connect_first(&amqp_urls, 0, "switchboard-startup-check")
        .await?
        .1
        .close(200, "startup check")
        .await
        .ok();

    // Both listeners first: a port in use or an unusable certificate stops the start at once.
    let gateway_listener = match role.has_gateway() {
        true => Some(
            Bound::bind(
                "gateway",
                config.bind,
                config.gateway_limits(),
                config.gateway.tls.as_ref(),
            )
            .await?,
        ),
        false => None,
    };
    let admin_listener = Bound::bind(
        "admin",
        config.admin_bind(role),
        config.admin_limits(),
        config.admin.tls.as_ref(),
    )
    .await?;
    let admin_addr = admin_listener.addr;

    let tracker = TaskTracker::new();
    let topology = Topology::new(config.amqp_prefix.clone());
    let queue_type: bus::QueueType = config.persist_queue_type.into();
    let mut checks = Vec::new();
    // Installed before anything counts, so the dashboard's tap misses nothing.
    admin::metrics_tap();
    let mut connections = None;
    let mut console = ConsoleConfig {
        apps: dashboard::console_apps(&config),
        ..ConsoleConfig::default()
    };
    // One connection per role: the gateway's publishers, live link and queue-depth checks share
    // one, the worker's consumers another (ARCHITECTURE.md, "Decisions (scale-out)").
    let gateway_broker = role
        .has_gateway()
        .then(|| Broker::spawn(amqp_urls.clone(), "switchboard-gateway", &tracker));
    let worker_broker = role
        .has_worker()
        .then(|| Broker::spawn(amqp_urls.clone(), "switchboard-worker", &tracker));

    if role.has_worker() {
        let pool = consumer_worker::prepare_database(
            &config.database_url,
            config.worker.partition_days_ahead,
        )
        .await?;
        let database_ok = Arc::new(AtomicBool::new(true));
        checks.push(Check::flag("database", database_ok.clone()));
        tracker.spawn(watch_database(pool.clone(), database_ok, shutdown.clone()));
        let broker = worker_broker
            .clone()
            .expect("a worker role has a worker broker");
        let worker_config = WorkerConfig {
            topology: topology.clone(),
            persist_queue_type: queue_type,
            prefetch: config.worker.prefetch,
            max_batch: config.worker.max_batch,
            batch_linger: Duration::from_millis(config.worker.batch_linger_ms),
            partition_days_ahead: config.worker.partition_days_ahead,
            dedup_window: config.worker.dedup_window(),
            retention_days: config.worker.retention_days,
            max_attempts: config.worker.max_attempts,
            maintenance_interval: MAINTENANCE_INTERVAL,
        };
        tracker.spawn(consumer_worker::run(
            worker_config,
            broker.clone(),
            pool.clone(),
            shutdown.clone(),
        ));
        let webhooks = config.webhooks_config(config.webhook_targets()?);
        tracker.spawn(consumer_worker::webhooks::run(
            webhooks,
            broker,
            pool,
            shutdown.clone(),
        ));
    }

    let gateway_addr = gateway_listener.as_ref().map(|bound| bound.addr);
    if let (Some(bound), Some(broker)) = (gateway_listener, gateway_broker.clone()) {
        let node = config.node_id.unwrap_or_else(rand::random);
        let mut gateway_config = config.gateway_config();
        gateway_config.about = About {
            tls: bound.tls.is_some(),
            admin: Some((admin_addr, admin_listener.tls.is_some())),
        };
        let (registry, outbox) = Registry::new(
            node,
            RegistryConfig {
                cache_ttl: gateway_config.cache_ttl,
                max_channels_per_connection: gateway_config.max_channels_per_connection,
            },
        );
        let registry = Arc::new(registry);
        connections = Some(dashboard::connections(&config, registry.clone()));
        tracker.spawn(dispatcher::run_debug(
            registry.clone(),
            registry.debug_log(),
            shutdown.clone(),
        ));
        let live_ready = Arc::new(AtomicBool::new(false));
        tracker.spawn(dispatcher::run_live(
            LiveConfig {
                broker: broker.clone(),
                topology: topology.clone(),
                persist_queue_type: queue_type,
                max_queue_len: config.gateway.live_queue_max_len,
                queue_expires: Duration::from_secs(config.gateway.live_queue_expires_secs),
                prefetch: 1000,
                heartbeat: Duration::from_millis(config.gateway.cluster_heartbeat_ms),
                node_timeout: Duration::from_millis(config.gateway.cluster_node_timeout_ms),
            },
            registry.clone(),
            outbox,
            live_ready.clone(),
            shutdown.clone(),
        ));
        // Events accepted before the live queue exists would not reach this node's sockets.
        wait_for(|| live_ready.load(Ordering::Relaxed), LIVE_READY_TIMEOUT)
            .await
            .then_some(())
            .ok_or(StartError::LiveNotReady(LIVE_READY_TIMEOUT))?;
        checks.push(Check::flag("live_queue", live_ready));
        let publisher_config = PublisherConfig {
            broker,
            topology: topology.clone(),
            persist_queue_type: queue_type,
            max_batch_envelopes: config.publisher.max_batch_envelopes,
            max_message_bytes: config.publisher.max_message_bytes,
            max_in_flight: config.publisher.max_in_flight,
            group_commit_in_flight: config.publisher.group_commit_in_flight,
            linger: Duration::from_millis(config.publisher.linger_ms),
            confirm_timeout: Duration::from_millis(config.publisher.confirm_timeout_ms),
        };
        // Only when some app has a webhook: otherwise webhooks cost nothing.
        let webhook_publisher = Webhooks::any(&apps).then(|| {
            WebhookPublisher::spawn(
                publisher_config.clone(),
                config.webhooks.buffer_events,
                &tracker,
                shutdown.clone(),
            )
        });
        let webhooks = Webhooks::new(&apps, webhook_publisher);
        let publisher = Publisher::spawn(publisher_config.clone(), &tracker);
        // Requests that come before the first connection would be refused.
        wait_for(|| publisher.is_connected(), LIVE_READY_TIMEOUT)
            .await
            .then_some(())
            .ok_or(StartError::PublisherNotReady(LIVE_READY_TIMEOUT))?;
        let connected = publisher.clone();
        checks.push(Check {
            name: "publisher",
            ok: Arc::new(move || connected.is_connected()),
        });
        let fences = FencePublisher::spawn(publisher_config, &tracker);
        // History requests that come before its first connection would be refused.
        wait_for(|| fences.is_connected(), LIVE_READY_TIMEOUT)
            .await
            .then_some(())
            .ok_or(StartError::PublisherNotReady(LIVE_READY_TIMEOUT))?;
        let history = History::new(
            &config.database_url,
            config.history.history_config(),
            fences,
            &tracker,
            shutdown.clone(),
        )
        .map_err(StartError::History)?;
        let backends = Backends {
            publisher,
            webhooks,
            history,
        };
        let gateway = Arc::new(Gateway::new(
            apps,
            gateway_config,
            backends,
            registry,
            node,
            shutdown.clone(),
        ));
        console.gateway = Some((bound.addr, bound.tls.is_some()));
        console.trigger = Some(dashboard::trigger(gateway.clone()));
        info!(addr = %bound.addr, tls = bound.tls.is_some(), node, "gateway listening");
        let listener = bound.listen(&tracker, &shutdown);
        checks.push(Check {
            name: "gateway_listener",
            ok: Arc::new(listener.liveness.probe()),
        });
        if Webhooks::any(&gateway.apps) {
            tracker.spawn(ingest::cluster_webhooks::forward(
                gateway.clone(),
                Duration::from_millis(config.webhooks.vacate_debounce_ms),
                shutdown.clone(),
            ));
        }
        tracker.spawn(ingest::serve(listener, gateway));
    }

    info!(%admin_addr, tls = admin_listener.tls.is_some(), "admin listening");
    let listener = admin_listener.listen(&tracker, &shutdown);
    let depth_broker = gateway_broker.or(worker_broker);
    let system = dashboard::system(
        &config,
        &topology,
        depth_broker.expect("every role has a broker"),
        connections,
        role == Role::Serve,
        &tracker,
        &shutdown,
    );
    let dashboard = dashboards::routes(DashboardConfig {
        password: config.admin.password.clone(),
        database_url: config.database_url.clone(),
        apps: config.apps.iter().map(|app| app.id.clone()).collect(),
        report_timeout: dashboard::report_timeout(&config),
        system,
        console,
        dead_letters: dashboard::dead_letters(&config, &topology),
        webhooks_configured: config.apps.iter().any(|app| !app.webhooks.is_empty()),
    })
    .map_err(StartError::Dashboard)?;
    tracker.spawn(admin::serve(listener, checks, dashboard, shutdown.clone()));
    Ok(Running {
        gateway_addr,
        admin_addr,
        tracker,
        shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
    })
}

async fn wait_for(ready: impl Fn() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !ready() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn watch_database(pool: sqlx::PgPool, ok: Arc<AtomicBool>, shutdown: CancellationToken) {
    loop {
        let reachable = tokio::time::timeout(
            DATABASE_CHECK_INTERVAL,
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        ok.store(reachable, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(DATABASE_CHECK_INTERVAL) => {}
        }
    }
}
