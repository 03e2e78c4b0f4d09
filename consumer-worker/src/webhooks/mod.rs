//! Durable webhooks, the worker's side: the webhook queue → `webhook_deliveries` → the apps'
//! URLs, at least once, with a stable id per batch.
//!
//! - [`intake`]: consumes `<prefix>.webhooks`, groups the events per configured webhook into
//!   batches (the batch window, `max_events_per_request`), inserts them and acks only after the
//!   commit.
//! - [`deliver`]: one task per webhook claims its due rows with a lease and sends them; 2xx
//!   delivers, anything else is retried with exponential backoff and full jitter until the
//!   retry period is over, then the row is `dead` with the last reason.
//! - the monitor: the pending gauges every few seconds, retention hourly.

mod deliver;
mod intake;
mod send;
mod store;
mod target;

pub use target::{check_unique, Target, TargetError};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the pending gauges are refreshed.
const MONITOR_INTERVAL: Duration = Duration::from_secs(2);
/// How often delivered and dead rows past their retention are deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct WebhooksConfig {
    pub topology: bus::Topology,
    pub queue_type: bus::QueueType,
    /// Every app's webhooks; none means the worker leaves the webhook queue alone.
    pub targets: Vec<Target>,
    /// How long the intake gathers events after the first before storing the batches.
    pub batch_window: Duration,
    pub max_events_per_request: usize,
    /// The whole exchange of one attempt: connect, send, the answer and its body.
    pub request_timeout: Duration,
    /// Most bytes of an answer read; a longer one fails the attempt.
    pub max_response_bytes: usize,
    /// How long after its creation a batch is retried before it is dead.
    pub retry_period: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Delivered rows are deleted this long after their creation.
    pub delivered_retention: Duration,
    /// Dead rows are deleted this long after their creation.
    pub dead_retention: Duration,
    /// AMQP prefetch of the webhook queue (messages).
    pub prefetch: u16,
}

impl fmt::Debug for WebhooksConfig {
    /// Targets hide their own secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("topology", &self.topology)
            .field("targets", &self.targets)
            .field("batch_window", &self.batch_window)
            .field("max_events_per_request", &self.max_events_per_request)
            .field("request_timeout", &self.request_timeout)
            .field("retry_period", &self.retry_period)
            .finish_non_exhaustive()
    }
}

/// Runs the intake (on `broker`, the process's shared connection), one delivery task per
/// webhook and the monitor until `shutdown`. Returns at once when no webhook is configured.
pub async fn run(
    config: WebhooksConfig,
    broker: bus::Broker,
    pool: PgPool,
    shutdown: CancellationToken,
) {
    if config.targets.is_empty() {
        return;
    }
    let client = match send::client(config.request_timeout) {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, "cannot build the webhook HTTP client; webhooks stay pending");
            return;
        }
    };
    let config = Arc::new(config);
    let wakes: Vec<Arc<Notify>> = config.targets.iter().map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (target, wake) in config.targets.iter().zip(&wakes) {
        let delivery = deliver::Delivery {
            config: config.clone(),
            target: target.clone(),
            pool: pool.clone(),
            client: client.clone(),
            wake: wake.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(delivery.run());
    }
    tasks.spawn(
        intake::Intake {
            config: config.clone(),
            broker,
            pool: pool.clone(),
            wakes,
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    tasks.spawn(monitor(config, pool, shutdown));
    while tasks.join_next().await.is_some() {}
    info!("webhooks stopped");
}

/// Refreshes `switchboard_webhook_pending` and `switchboard_webhook_oldest_pending_seconds`,
/// and deletes delivered and dead rows past their retention.
async fn monitor(config: Arc<WebhooksConfig>, pool: PgPool, shutdown: CancellationToken) {
    let mut gauges = tokio::time::interval(MONITOR_INTERVAL);
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = gauges.tick() => match store::pending(&pool).await {
                Ok((pending, oldest)) => {
                    metrics::gauge!("switchboard_webhook_pending").set(pending as f64);
                    metrics::gauge!("switchboard_webhook_oldest_pending_seconds").set(oldest);
                }
                Err(error) => debug!(%error, "cannot count the pending webhooks"),
            },
            _ = retention.tick() => {
                match store::prune(&pool, config.delivered_retention, config.dead_retention).await {
                    Ok(0) => {}
                    Ok(deleted) => info!(deleted, "deleted webhook deliveries past retention"),
                    Err(error) => warn!(%error, "cannot delete webhook deliveries past retention"),
                }
            }
        }
    }
}
