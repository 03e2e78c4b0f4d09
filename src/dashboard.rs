//! What the dashboard reads, handed to it from where it lives: the registry's connection and
//! subscription peaks, the gateway's trigger, the broker's queue depths and dead letters. The
//! `dashboards` crate sees closures only, so it never depends on the gateway or the bus.

use std::sync::Arc;
use std::time::Duration;

use bus::{Broker, QueueDepths, Topology};
use dashboards::console::{ConsoleApp, Trigger};
use dashboards::dead::{DeadLetterCounts, DeadLetterSource, Unavailable};
use dashboards::system::{self, AppConnections, QueueCounts, System};
use dispatcher::Registry;
use ingest::Gateway;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Reads every configured app's connections and subscriptions with their peaks.
pub type Connections = Box<dyn Fn() -> Vec<AppConnections> + Send + Sync>;

/// The console's view of the configured apps.
pub fn console_apps(config: &Config) -> Vec<ConsoleApp> {
    config
        .apps
        .iter()
        .map(|app| ConsoleApp {
            id: app.id.clone(),
            key: app.key.clone(),
            secret: app.secret.clone(),
        })
        .collect()
}

/// The apps' counts from the registry (each read takes the peaks since the previous one).
pub fn connections(config: &Config, registry: Arc<Registry>) -> Connections {
    let app_ids: Vec<String> = config.apps.iter().map(|app| app.id.clone()).collect();
    Box::new(move || {
        app_ids
            .iter()
            .map(|app_id| {
                let connections = registry.connection_peak(app_id);
                let subscriptions = registry.subscription_peak(app_id);
                AppConnections {
                    app_id: app_id.clone(),
                    now: connections.now,
                    peak: connections.peak,
                    subscriptions_now: subscriptions.now,
                    subscriptions_peak: subscriptions.peak,
                }
            })
            .collect()
    })
}

/// The event creator's way in: a signed trigger answered by the gateway's HTTP API.
pub fn trigger(gateway: Arc<Gateway>) -> Trigger {
    Arc::new(move |app_id: String, body| {
        let gateway = gateway.clone();
        Box::pin(async move { ingest::console::trigger(gateway, &app_id, body).await })
    })
}

/// What sits in the dead-letter queue, read without taking it.
pub fn dead_letters(config: &Config, topology: &Topology) -> DeadLetterSource {
    let (urls, queue) = (config.amqp_urls(), topology.dead_letter_queue());
    Arc::new(move || {
        let (urls, queue) = (urls.clone(), queue.clone());
        Box::pin(async move {
            let peeked = bus::peek_dead_letters(
                &urls,
                &queue,
                consumer_worker::REASON_HEADER,
                dashboards::dead::SAMPLE,
            )
            .await
            .map_err(|error| Unavailable(Box::new(error)))?;
            Ok(DeadLetterCounts {
                queue,
                depth: peeked.depth,
                sampled: peeked.sampled,
                reasons: peeked.reasons,
            })
        })
    })
}

/// Starts the system view's sampler (and the queue-depth watch it reads, on `broker`) until
/// `shutdown`.
pub fn system(
    config: &Config,
    topology: &Topology,
    broker: Broker,
    connections: Option<Connections>,
    persist_lag: bool,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Arc<System> {
    let depths = QueueDepths::new(vec![
        topology.persist_queue(),
        topology.dead_letter_queue(),
        topology.webhook_queue(),
    ]);
    tracker.spawn(
        depths
            .clone()
            .watch(broker, system::RESOLUTION, shutdown.clone()),
    );
    let system = System::new(shutdown.clone());
    tracker.spawn(
        system.clone().run(system::Sources {
            tap: crate::admin::metrics_tap(),
            connections,
            queues: Box::new(move || QueueCounts {
                persist: depths.get(0),
                dead: depths.get(1),
                webhooks: depths.get(2),
            }),
            apps: config
                .apps
                .iter()
                .map(|app| (app.id.clone(), app.max_connections))
                .collect(),
            persist_lag,
        }),
    );
    system
}

/// The report timeout as the dashboard takes it.
pub fn report_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.admin.report_timeout_ms)
}
