//! This node's link to the bus for the live path: consumes the live queue (event batches and the
//! other nodes' control messages), fans events out, and publishes this node's deltas, snapshots
//! and control messages. Reconnects on its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus::{Backoff, QueueType, Topology, CONTROL_ROUTING_KEY};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel};
use protocol::control::Control;
use protocol::envelope::decode_batch;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Registry;

#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub url: String,
    pub topology: Topology,
    pub persist_queue_type: QueueType,
    /// Most messages the live queue holds before dropping the oldest.
    pub max_queue_len: u32,
    pub prefetch: u16,
    /// How often this node publishes its snapshot (the heartbeat) even when nothing changed.
    pub heartbeat: Duration,
    /// How long without a message before another node is considered dead.
    pub node_timeout: Duration,
}

/// A change is announced to the other nodes within this time, in a delta.
const DELTA_DEBOUNCE: Duration = Duration::from_millis(50);

/// How often expired cache-channel events are swept (the shortest TTL is a second).
const CACHE_SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum LiveError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the live queue consumer")]
    Cancelled,
}

/// Live deliveries are acked together (`multiple`) every [`ACK_EVERY`] deliveries or at the next
/// tick, instead of one ack frame (and one wake-up of lapin's I/O thread) per message.
const ACK_EVERY: u32 = 64;

#[derive(Default)]
struct Acks {
    last: Option<DeliveryTag>,
    pending: u32,
}

impl Acks {
    async fn handled(&mut self, channel: &Channel, tag: DeliveryTag) -> Result<(), lapin::Error> {
        self.last = Some(tag);
        self.pending += 1;
        if self.pending >= ACK_EVERY {
            self.flush(channel).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, channel: &Channel) -> Result<(), lapin::Error> {
        if let Some(tag) = self.last.take() {
            self.pending = 0;
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }
}

/// Runs until `shutdown`: (re)connects, declares the live queue and serves it. `ready` is true
/// while the live queue is being consumed.
pub async fn run_live(
    config: LiveConfig,
    registry: Arc<Registry>,
    mut outbox: mpsc::Receiver<Control>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        match serve(&config, &registry, &mut outbox, &ready, &shutdown).await {
            Ok(()) => backoff.reset(),
            Err(error) => warn!(%error, "live queue link failed; reconnecting"),
        }
        ready.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn serve(
    config: &LiveConfig,
    registry: &Registry,
    outbox: &mut mpsc::Receiver<Control>,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), LiveError> {
    let connection = bus::connect(&config.url, "switchboard-live").await?;
    let channel = connection.create_channel().await?;
    bus::declare_durable(&channel, &config.topology, config.persist_queue_type).await?;
    let queues = bus::declare_live_queue(
        &channel,
        &config.topology,
        registry.node(),
        config.max_queue_len,
    )
    .await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            &queues.live,
            "switchboard-live",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut dropped = channel
        .basic_consume(
            &queues.dropped,
            "switchboard-live-dropped",
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    info!(queue = queues.live, "consuming live queue");
    ready.store(true, Ordering::Relaxed);
    let exchange = config.topology.events_exchange();
    let publish = |message: Control| {
        let body = message.encode();
        let channel = channel.clone();
        let exchange = exchange.clone();
        async move {
            channel
                .basic_publish(
                    &exchange,
                    CONTROL_ROUTING_KEY,
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await
                .map(drop)
        }
    };
    // Deltas published while the link was down are lost: a new snapshot for everyone.
    registry.request_snapshot();
    for message in registry.outgoing(false) {
        publish(message).await?;
    }
    let mut last_snapshot = Instant::now();
    let mut tick = tokio::time::interval(DELTA_DEBOUNCE);
    let mut sweep = tokio::time::interval(CACHE_SWEEP);
    let mut acks = Acks::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            message = outbox.recv() => {
                if let Some(message) = message {
                    publish(message).await?;
                }
            }
            _ = tick.tick() => {
                let heartbeat = last_snapshot.elapsed() >= config.heartbeat;
                for message in registry.outgoing(heartbeat) {
                    publish(message).await?;
                }
                if heartbeat {
                    last_snapshot = Instant::now();
                }
                for node in registry.stale_nodes(config.node_timeout) {
                    registry.forget_node(node);
                }
                registry.flush_counts();
                acks.flush(&channel).await?;
            }
            _ = sweep.tick() => registry.sweep_cache(),
            next = dropped.next() => {
                // Overflow of the live queue: these events will never reach this node's
                // sockets, so their subscribers are closed (4100) rather than left behind.
                let delivery = next.ok_or(LiveError::Cancelled)??;
                if let Ok(envelopes) = decode_batch(&delivery.data) {
                    metrics::counter!("switchboard_live_dropped_events_total")
                        .increment(envelopes.len() as u64);
                    for envelope in &envelopes {
                        registry.close_channel(&envelope.app_id, &envelope.channel, crate::CLOSE_SLOW_CONSUMER);
                    }
                }
            }
            next = deliveries.next() => {
                let delivery = next.ok_or(LiveError::Cancelled)??;
                if delivery.routing_key.as_str() == CONTROL_ROUTING_KEY {
                    match Control::decode(&delivery.data) {
                        Ok(message) => registry.receive(message),
                        Err(error) => warn!(%error, "undecodable control message"),
                    }
                } else {
                    match decode_batch(&delivery.data) {
                        Ok(envelopes) => {
                            for envelope in &envelopes {
                                registry.fan_out(envelope);
                            }
                        }
                        // The worker dead-letters its own copy; live has nothing to show.
                        Err(error) => warn!(%error, "undecodable message on the live queue"),
                    }
                }
                acks.handled(&channel, delivery.delivery_tag).await?;
            }
        }
    }
    let _ = publish(Control::Goodbye {
        node: registry.node(),
    })
    .await;
    let _ = connection.close(200, "shutting down").await;
    Ok(())
}
