//! Consumes this node's live queue and fans every event out to local subscribers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus::{QueueType, Topology};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use protocol::envelope::decode_batch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Registry;

#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub url: String,
    pub topology: Topology,
    pub persist_queue_type: QueueType,
    /// This gateway node's id; names its live queue.
    pub node: u32,
    /// Most messages the live queue holds before dropping the oldest.
    pub max_queue_len: u32,
    pub prefetch: u16,
}

/// Runs until `shutdown`: (re)connects, declares the live queue and fans out what arrives.
/// `ready` is true while the live queue is being consumed.
pub async fn run_live(
    config: LiveConfig,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match consume(&config, &registry, &ready, &shutdown).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(error) => warn!(%error, "live queue consumer failed; reconnecting"),
        }
        ready.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn consume(
    config: &LiveConfig,
    registry: &Registry,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let connection = bus::connect(&config.url, "switchboard-live").await?;
    let channel = connection.create_channel().await?;
    bus::declare_durable(&channel, &config.topology, config.persist_queue_type).await?;
    let queue = bus::declare_live_queue(
        &channel,
        &config.topology,
        config.node,
        config.max_queue_len,
    )
    .await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            &queue,
            "switchboard-live",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue, "consuming live queue");
    ready.store(true, Ordering::Relaxed);
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Err("live queue consumer was cancelled by the broker".into()),
            },
        };
        match decode_batch(&delivery.data) {
            Ok(envelopes) => {
                for envelope in &envelopes {
                    registry.fan_out(envelope);
                }
            }
            // The worker dead-letters its own copy of such a message; live has nothing to show.
            Err(error) => warn!(%error, "undecodable message on the live queue"),
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = connection.close(200, "shutting down").await;
    Ok(())
}
