//! Exchange and queue names and declarations (DESIGN.md, "RabbitMQ topology").

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::BusError;

/// Routing key of event batches; persist and live queues bind to it.
pub const EVENT_ROUTING_KEY: &str = "event";
/// Routing key of the gateway nodes' control messages; only live queues bind to it.
pub const CONTROL_ROUTING_KEY: &str = "ctl";

/// Channels hash into this many shards (by app and channel). An event message carries the keys
/// of its envelopes' shards in its `BCC` header (RabbitMQ's sender-selected distribution: it
/// routes on them too and removes the header), and a gateway's live queue is bound to the shard
/// keys of its local subscribers' channels, so a node receives only the events of its channels'
/// shards.
pub const SHARDS: u16 = 1024;

/// The header carrying an event message's shard keys.
pub const SHARD_HEADER: &str = "BCC";

/// The shard of an app's channel: FNV-1a (64 bit) of the app id, a NUL and the channel name,
/// modulo [`SHARDS`]. Fixed here, byte for byte, because every gateway and publisher of a
/// cluster must agree on it whatever their version.
pub fn shard_of(app_id: &str, channel: &str) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = app_id.bytes().chain([0]).chain(channel.bytes());
    let hash = bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    (hash % u64::from(SHARDS)) as u16
}

/// The routing key of a shard: `live.s.<shard>`; [`EVERY_NODE`] is `live.all`.
pub fn shard_key(shard: u16) -> String {
    if shard == EVERY_NODE {
        return "live.all".to_owned();
    }
    format!("live.s.{shard}")
}

/// The pseudo-shard of cache channels, whose events every live queue receives (bound at
/// declaration): every node keeps their last event, so a subscriber on a node that had none
/// gets the replay, not a `cache_miss`.
pub const EVERY_NODE: u16 = SHARDS;

/// Where an envelope of `channel` is routed: its channel's shard, or [`EVERY_NODE`] for a cache
/// channel.
pub fn route_of(app_id: &str, channel: &str) -> u16 {
    if protocol::Channel::parse(channel).is_ok_and(|parsed| parsed.cache) {
        EVERY_NODE
    } else {
        shard_of(app_id, channel)
    }
}

/// The persist queue's type: quorum (replicated, the default) or classic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

/// Names of everything Switchboard declares, all under one prefix so deployments (and tests)
/// sharing a broker stay apart.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
        }
    }
    /// Topic exchange every accepted event batch is published to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Durable queue the workers persist from.
    pub fn persist_queue(&self) -> String {
        format!("{}.persist", self.prefix)
    }
    /// Durable queue of messages the workers could not persist, with the reason in a header.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    /// Durable queue of webhook events, from the gateways to the workers (published through the
    /// default exchange, its name as the routing key).
    pub fn webhook_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }
    /// One gateway node's live queue.
    pub fn live_queue(&self, node: u32) -> String {
        format!("{}.live.{node}", self.prefix)
    }
    /// Where the live queue's overflow goes, so the node knows which events it lost.
    pub fn live_dropped_queue(&self, node: u32) -> String {
        format!("{}.live.{node}.dropped", self.prefix)
    }
}

/// The names of a node's live queue and of its overflow queue.
#[derive(Debug, Clone)]
pub struct LiveQueues {
    pub live: String,
    pub dropped: String,
}

/// Declares the durable part of the topology: events exchange, persist queue bound to it, the
/// dead-letter queue and the webhook queue (all of `persist_queue_type`). Idempotent; gateways and workers both call it at connect time, so an
/// event accepted before any worker runs waits in the persist queue.
pub async fn declare_durable(
    channel: &Channel,
    topology: &Topology,
    persist_queue_type: QueueType,
) -> Result<(), BusError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &topology.events_exchange(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BusError::Declare)?;
    let mut args = FieldTable::default();
    if persist_queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(&topology.persist_queue(), durable, args.clone())
        .await
        .map_err(BusError::Declare)?;
    channel
        .queue_bind(
            &topology.persist_queue(),
            &topology.events_exchange(),
            EVENT_ROUTING_KEY,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BusError::Declare)?;
    channel
        .queue_declare(&topology.dead_letter_queue(), durable, args.clone())
        .await
        .map_err(BusError::Declare)?;
    channel
        .queue_declare(&topology.webhook_queue(), durable, args)
        .await
        .map_err(BusError::Declare)?;
    Ok(())
}

/// Whether a node's live queue still exists (it outlived the node's connection) or is gone (the
/// broker restarted, or it expired): then events routed to it meanwhile may be lost.
pub async fn live_queue_exists(
    connection: &lapin::Connection,
    topology: &Topology,
    node: u32,
) -> Result<bool, BusError> {
    // A passive declare of a missing queue closes its channel with 404: use a channel of its own.
    let channel = connection
        .create_channel()
        .await
        .map_err(BusError::Declare)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(&topology.live_queue(node), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "checked").await;
            Ok(true)
        }
        Err(lapin::Error::ProtocolError(error)) if error.get_id() == 404 => Ok(false),
        Err(error) => Err(BusError::Declare(error)),
    }
}

/// Deletes a node's live queues with whatever they hold (a process that starts afresh under a
/// configured node id must not replay what its previous run left).
pub async fn delete_live_queues(
    channel: &Channel,
    topology: &Topology,
    node: u32,
) -> Result<(), BusError> {
    for queue in [topology.live_queue(node), topology.live_dropped_queue(node)] {
        channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .map_err(BusError::Declare)?;
    }
    Ok(())
}

/// Declares a node's live queue, bound to control messages and cache channels' events
/// ([`EVERY_NODE`]; the dispatcher binds its shards' keys, [`bind_shard`]). It is not tied to one
/// connection: it outlives a reconnect (what is routed meanwhile waits for the node) and expires
/// `expires` after its last consumer went away, so a dead node's queue goes by itself. It is
/// bounded to `max_len` messages so a stalled node cannot fill the broker. What overflows (the
/// oldest first) is dead-lettered to the node's `dropped` queue (bounded and expiring too), so
/// the node can close the sockets that missed an event instead of losing it silently. Both are
/// transient: a broker restart removes them, which the node notices ([`live_queue_exists`]).
pub async fn declare_live_queue(
    channel: &Channel,
    topology: &Topology,
    node: u32,
    max_len: u32,
    expires: Duration,
) -> Result<LiveQueues, BusError> {
    let queues = LiveQueues {
        live: topology.live_queue(node),
        dropped: topology.live_dropped_queue(node),
    };
    let options = QueueDeclareOptions::default();
    let expires_ms = u32::try_from(expires.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    let bounded = |args: &mut FieldTable| {
        args.insert("x-max-length".into(), AMQPValue::LongUInt(max_len));
        args.insert("x-expires".into(), AMQPValue::LongUInt(expires_ms));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
    };
    let mut dropped_args = FieldTable::default();
    bounded(&mut dropped_args);
    channel
        .queue_declare(&queues.dropped, options, dropped_args)
        .await
        .map_err(BusError::Declare)?;
    let mut args = FieldTable::default();
    bounded(&mut args);
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queues.dropped.as_str().into()),
    );
    channel
        .queue_declare(&queues.live, options, args)
        .await
        .map_err(BusError::Declare)?;
    for key in [CONTROL_ROUTING_KEY.to_owned(), shard_key(EVERY_NODE)] {
        channel
            .queue_bind(
                &queues.live,
                &topology.events_exchange(),
                &key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BusError::Declare)?;
    }
    Ok(queues)
}

/// Binds (`bind`) or unbinds a node's live queue to a shard's key; returns once RabbitMQ has
/// done it.
pub async fn bind_shard(
    channel: &Channel,
    topology: &Topology,
    node: u32,
    shard: u16,
    bind: bool,
) -> Result<(), lapin::Error> {
    let (queue, exchange, key) = (
        topology.live_queue(node),
        topology.events_exchange(),
        shard_key(shard),
    );
    if bind {
        let options = QueueBindOptions::default();
        channel
            .queue_bind(&queue, &exchange, &key, options, FieldTable::default())
            .await
    } else {
        channel
            .queue_unbind(&queue, &exchange, &key, FieldTable::default())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_fixed_and_spread() {
        // Golden values: every node of a cluster must compute the same shard.
        assert_eq!(shard_of("", ""), (0xaf63_bd4c_8601_b7df_u64 % 1024) as u16);
        assert_eq!(shard_of("app-id", "chat"), shard_of("app-id", "chat"));
        assert_ne!(
            shard_of("a", "bc"),
            shard_of("ab", "c"),
            "the NUL separates"
        );
        let used: std::collections::HashSet<u16> = (0..4096)
            .map(|i| shard_of("app", &format!("channel-{i}")))
            .collect();
        assert!(
            used.len() > 900,
            "4096 channels use {} of 1024 shards",
            used.len()
        );
        assert!(used.iter().all(|&shard| shard < SHARDS));
        assert_eq!(shard_key(17), "live.s.17");
        assert_eq!(shard_key(EVERY_NODE), "live.all");
        assert_eq!(route_of("app", "cache-news"), EVERY_NODE);
        assert_eq!(route_of("app", "private-cache-news"), EVERY_NODE);
        assert_eq!(route_of("app", "news"), shard_of("app", "news"));
    }
}
