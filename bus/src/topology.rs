//! Exchange and queue names and declarations (DESIGN.md, "RabbitMQ topology").

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::BusError;

/// Routing key of event batches; persist and live queues bind to it.
pub const EVENT_ROUTING_KEY: &str = "event";
/// Routing key of the gateway nodes' control messages; only live queues bind to it.
pub const CONTROL_ROUTING_KEY: &str = "ctl";

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

/// Declares the durable part of the topology: events exchange, persist queue bound to it, and
/// the dead-letter queue. Idempotent; gateways and workers both call it at connect time, so an
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
        .queue_declare(&topology.dead_letter_queue(), durable, args)
        .await
        .map_err(BusError::Declare)?;
    Ok(())
}

/// Declares a node's live queue, bound to events and control messages: exclusive to its
/// connection, deleted with it, and bounded to `max_len` messages so a stalled node cannot fill
/// the broker. What overflows (the oldest first) is dead-lettered to the node's `dropped` queue
/// (bounded too), so the node can close the sockets that missed an event instead of losing it
/// silently.
pub async fn declare_live_queue(
    channel: &Channel,
    topology: &Topology,
    node: u32,
    max_len: u32,
) -> Result<LiveQueues, BusError> {
    let queues = LiveQueues {
        live: topology.live_queue(node),
        dropped: topology.live_dropped_queue(node),
    };
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let bounded = |args: &mut FieldTable| {
        args.insert("x-max-length".into(), AMQPValue::LongUInt(max_len));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
    };
    let mut dropped_args = FieldTable::default();
    bounded(&mut dropped_args);
    channel
        .queue_declare(&queues.dropped, exclusive, dropped_args)
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
        .queue_declare(&queues.live, exclusive, args)
        .await
        .map_err(BusError::Declare)?;
    for key in [EVENT_ROUTING_KEY, CONTROL_ROUTING_KEY] {
        channel
            .queue_bind(
                &queues.live,
                &topology.events_exchange(),
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BusError::Declare)?;
    }
    Ok(queues)
}
