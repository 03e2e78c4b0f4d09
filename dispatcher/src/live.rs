//! This node's link to the bus for the live path: consumes the live queue (event batches and the
//! other nodes' control messages), fans events out, and publishes this node's deltas, snapshots
//! and control messages, on channels of its own on the process's shared connection. Reopens
//! them on its own.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus::{Backoff, Broker, QueueType, Topology, CONTROL_ROUTING_KEY};
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
use uuid::Uuid;

use crate::Registry;

#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The process's shared connection.
    pub broker: Broker,
    pub topology: Topology,
    pub persist_queue_type: QueueType,
    /// Most messages the live queue holds before dropping the oldest.
    pub max_queue_len: u32,
    /// How long the live queue outlives this node's connection (what is routed meanwhile waits
    /// for the node to reconnect); a node away for longer closes its sockets on return.
    pub queue_expires: Duration,
    pub prefetch: u16,
    /// How often this node publishes its snapshot (the heartbeat) even when nothing changed.
    pub heartbeat: Duration,
    /// How long without a message before another node is considered dead.
    pub node_timeout: Duration,
}

/// A change is announced to the other nodes within this time, in a delta.
const DELTA_DEBOUNCE: Duration = Duration::from_millis(50);

/// How often shards without local subscribers are looked for, to unbind those idle for
/// [`crate::UNBIND_AFTER`].
const UNBIND_CHECK: Duration = Duration::from_secs(10);

/// How long closing the live channel may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
    #[error("the process's RabbitMQ connection has ended")]
    Gone,
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
    let mut link = Link::default();
    while !shutdown.is_cancelled() {
        if let Err(error) = serve(
            &config,
            &registry,
            &mut outbox,
            &ready,
            &mut link,
            &shutdown,
        )
        .await
        {
            warn!(%error, "live queue link failed; reconnecting");
        }
        ready.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(link.backoff.next_delay()) => {}
        }
    }
}

/// What one connection of the live link leaves to the next.
struct Link {
    backoff: Backoff,
    /// No connection has consumed the live queue yet in this process.
    first: bool,
    /// Messages fanned out lately, to skip a second copy: a redelivery of what reached the
    /// sockets before its ack was lost with the connection, or a batch the publisher sent again
    /// after its confirm was lost.
    recent: RecentIds,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            backoff: Backoff::default(),
            first: true,
            recent: RecentIds::default(),
        }
    }
}

/// The first envelope id of the last [`RecentIds::CAPACITY`] messages fanned out (bounded: the
/// oldest is forgotten first; far more than the prefetch, which bounds unacked deliveries).
#[derive(Default)]
struct RecentIds {
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
}

impl RecentIds {
    const CAPACITY: usize = 16_384;

    /// Remembers `id`; false when it was already there.
    fn insert(&mut self, id: Uuid) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

async fn serve(
    config: &LiveConfig,
    registry: &Registry,
    outbox: &mut mpsc::Receiver<Control>,
    ready: &AtomicBool,
    link: &mut Link,
    shutdown: &CancellationToken,
) -> Result<(), LiveError> {
    let mut broker = config.broker.clone();
    let connection = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        connected = broker.connected() => connected.ok_or(LiveError::Gone)?,
    };
    let channel = bus::setup_step(
        "opening the live channel",
        connection.connection.create_channel(),
    )
    .await?;
    let _closer = Closer(channel.clone());
    let node = registry.node();
    if link.first {
        bus::within(
            "removing an earlier run's live queue",
            bus::delete_live_queues(&channel, &config.topology, node),
        )
        .await?;
    } else if !bus::within(
        "checking the live queue",
        bus::live_queue_exists(&connection.connection, &config.topology, node),
    )
    .await?
    {
        // The broker restarted or the queue expired: events routed to this node meanwhile may
        // be lost. Its sockets reconnect at once (4200) and resubscribe, rather than miss them.
        let closed = registry.close_all(crate::CLOSE_RECONNECT);
        metrics::counter!("switchboard_live_gap_closes_total").increment(closed as u64);
        warn!(
            closed,
            "live queue was gone on reconnect; closed this node's sockets"
        );
    }
    bus::within(
        "declaring the durable topology",
        bus::declare_durable(&channel, &config.topology, config.persist_queue_type),
    )
    .await?;
    let queues = bus::within(
        "declaring the live queue",
        bus::declare_live_queue(
            &channel,
            &config.topology,
            node,
            config.max_queue_len,
            config.queue_expires,
        ),
    )
    .await?;
    // The shards of this node's subscribers, bound again before anything is consumed.
    for shard in registry.interest().all() {
        bus::setup_step(
            "binding the live queue to a shard",
            bus::bind_shard(&channel, &config.topology, node, shard, true),
        )
        .await?;
        registry.interest().bound(shard);
    }
    bus::setup_step(
        "setting the live prefetch",
        channel.basic_qos(config.prefetch, BasicQosOptions::default()),
    )
    .await?;
    let mut deliveries = bus::setup_step(
        "consuming the live queue",
        channel.basic_consume(
            &queues.live,
            "switchboard-live",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let mut dropped = bus::setup_step(
        "consuming the dropped queue",
        channel.basic_consume(
            &queues.dropped,
            "switchboard-live-dropped",
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    link.first = false;
    link.backoff.reset();
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
    let mut unbind = tokio::time::interval(UNBIND_CHECK);
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
            () = registry.interest().wanted() => {
                for shard in registry.interest().pending() {
                    bus::bind_shard(&channel, &config.topology, node, shard, true).await?;
                    registry.interest().bound(shard);
                }
            }
            _ = unbind.tick() => {
                let in_use = registry.local_shards();
                registry.interest().touch(in_use.iter().copied());
                for shard in registry.interest().idle(|shard| in_use.contains(&shard)) {
                    bus::bind_shard(&channel, &config.topology, node, shard, false).await?;
                }
            }
            next = dropped.next() => {
                // Overflow of the live queue: these events will never reach this node's
                // sockets, so their subscribers are closed (4100) rather than left behind.
                let delivery = next.ok_or(LiveError::Cancelled)??;
                if let Ok(envelopes) = decode_batch(&delivery.data) {
                    metrics::counter!("switchboard_live_dropped_events_total")
                        .increment(envelopes.len() as u64);
                    for envelope in &envelopes {
                        registry.close_channel(&envelope.app_id, &envelope.channel);
                    }
                }
            }
            next = deliveries.next() => {
                let delivery = next.ok_or(LiveError::Cancelled)??;
                if delivery.routing_key.as_str() == CONTROL_ROUTING_KEY {
                    match Control::decode(&delivery.data) {
                        Ok(Control::Sync { node, id }) => {
                            if node != registry.node() {
                                // What this node knows goes out first, on this channel, in order.
                                for message in registry.outgoing(false) {
                                    publish(message).await?;
                                }
                                publish(Control::Synced { to: node, from: registry.node(), id }).await?;
                            }
                        }
                        Ok(message) => registry.receive(message),
                        Err(error) => warn!(%error, "undecodable control message"),
                    }
                } else {
                    match decode_batch(&delivery.data) {
                        Ok(envelopes) => {
                            metrics::counter!("switchboard_live_envelopes_received_total")
                                .increment(envelopes.len() as u64);
                            if envelopes.first().is_none_or(|first| link.recent.insert(first.id)) {
                                for envelope in &envelopes {
                                    registry.fan_out(envelope);
                                }
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
    // Nothing waits for this node any more: its queues go now rather than when they expire.
    let _ = bus::within(
        "removing the live queue",
        bus::delete_live_queues(&channel, &config.topology, node),
    )
    .await;
    Ok(())
}

/// Closes the live channel when its link ends, however it ends: on a connection that stays
/// open, a channel left behind would keep its consumers and their deliveries.
struct Closer(Channel);

impl Drop for Closer {
    fn drop(&mut self) {
        let channel = self.0.clone();
        tokio::spawn(async move {
            // Best effort: a channel the broker already closed fails to close again.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "live link ends")).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_skip_a_second_copy_and_forget_the_oldest() {
        let mut recent = RecentIds::default();
        let ids: Vec<Uuid> = (0..=RecentIds::CAPACITY as u128)
            .map(Uuid::from_u128)
            .collect();
        assert!(recent.insert(ids[0]));
        assert!(!recent.insert(ids[0]), "a redelivered message is skipped");
        for id in &ids[1..] {
            assert!(recent.insert(*id));
        }
        assert_eq!(recent.order.len(), RecentIds::CAPACITY);
        assert!(recent.insert(ids[0]), "the oldest was forgotten");
        assert!(!recent.insert(ids[RecentIds::CAPACITY]));
    }
}
