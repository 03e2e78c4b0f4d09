//! The debug console's records: what happens to an app's sockets and events on this node,
//! published on the app's reserved [`DEBUG_CHANNEL`] — only while a console watches it, on this
//! node or on another, through a bounded queue (when full, records are dropped and counted in
//! `switchboard_debug_records_dropped_total`), never waiting on the path that makes them.
//!
//! Records for consoles on other nodes travel as [`Control::Debug`] messages, batched: what
//! is queued when one is sent goes in it. A console sees every event of its app on its own
//! node (the node fans out every event of the channels it serves, and with a console it
//! serves them all), so events are recorded there only; the other nodes add how many of their
//! sockets got each one ([`Record::Delivered`], by event id).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::channel::DEBUG_CHANNEL;
use protocol::control::{Control, RelayedRecord, MAX_CONTROL_BYTES};
use protocol::{frame, Envelope, Source};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Frame, Registry};

/// Records waiting to be sent to the consoles; beyond, new ones are dropped and counted.
pub const DEBUG_QUEUE: usize = 1024;
/// The most bytes of an event's data a record carries.
pub const DATA_PREVIEW_BYTES: usize = 1024;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    ConnectionOpened {
        socket_id: String,
    },
    /// `code`: the close code the server closed it with (1000 when the client left).
    ConnectionClosed {
        socket_id: String,
        code: u16,
    },
    Subscribed {
        socket_id: String,
        channel: String,
    },
    Unsubscribed {
        socket_id: String,
        channel: String,
    },
    /// An event fanned out on this node: `source` says whether it came from the HTTP API, a
    /// client or the Segment API; `data` is cut at [`DATA_PREVIEW_BYTES`].
    Event {
        id: Uuid,
        source: Source,
        channel: String,
        event: String,
        data: String,
        truncated: bool,
        socket_id: Option<String>,
        delivered: usize,
    },
    SlowConsumerClosed {
        socket_id: String,
        channel: String,
    },
    /// Another node queued event `id` for `delivered` of its sockets (added to the event's
    /// record by the console).
    Delivered {
        id: Uuid,
        delivered: usize,
    },
}

impl Record {
    /// The record of an envelope fanned out to `delivered` sockets.
    pub fn event(envelope: &Envelope, delivered: usize) -> Record {
        let mut end = envelope.data.len().min(DATA_PREVIEW_BYTES);
        while !envelope.data.is_char_boundary(end) {
            end -= 1;
        }
        Record::Event {
            id: envelope.id,
            source: envelope.source,
            channel: envelope.channel.clone(),
            event: envelope.name.clone(),
            data: envelope.data[..end].to_owned(),
            truncated: end < envelope.data.len(),
            socket_id: envelope.socket_id.clone(),
            delivered,
        }
    }

    /// The record as the console reads it: `type` and its fields, `t` in ms since the epoch.
    fn to_json(&self, t: u64) -> String {
        let record = match self {
            Record::ConnectionOpened { socket_id } => {
                serde_json::json!({ "type": "connection_opened", "socket_id": socket_id })
            }
            Record::ConnectionClosed { socket_id, code } => serde_json::json!({
                "type": "connection_closed", "socket_id": socket_id, "code": code,
            }),
            Record::Subscribed { socket_id, channel } => serde_json::json!({
                "type": "subscribed", "socket_id": socket_id, "channel": channel,
            }),
            Record::Unsubscribed { socket_id, channel } => serde_json::json!({
                "type": "unsubscribed", "socket_id": socket_id, "channel": channel,
            }),
            Record::Event {
                id,
                source,
                channel,
                event,
                data,
                truncated,
                socket_id,
                delivered,
            } => serde_json::json!({
                "type": match source {
                    Source::Api => "api_event",
                    Source::Client => "client_event",
                    Source::Track => "segment_event",
                },
                "id": id,
                "channel": channel,
                "event": event,
                "data": data,
                "truncated": truncated,
                "socket_id": socket_id,
                "delivered": delivered,
            }),
            Record::SlowConsumerClosed { socket_id, channel } => serde_json::json!({
                "type": "slow_consumer_closed", "socket_id": socket_id, "channel": channel,
            }),
            Record::Delivered { id, delivered } => serde_json::json!({
                "type": "delivered", "id": id, "delivered": delivered,
            }),
        };
        let mut record = record;
        record["t"] = t.into();
        record.to_string()
    }

    /// Whether the record is about the debug channel itself (never shown: the console would
    /// watch itself).
    pub(crate) fn is_about_the_console(&self) -> bool {
        match self {
            Record::Subscribed { channel, .. }
            | Record::Unsubscribed { channel, .. }
            | Record::Event { channel, .. }
            | Record::SlowConsumerClosed { channel, .. } => channel == DEBUG_CHANNEL,
            Record::ConnectionOpened { .. }
            | Record::ConnectionClosed { .. }
            | Record::Delivered { .. } => false,
        }
    }
}

/// Which consoles a record is for: those on this node, those on other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Audience {
    pub here: bool,
    pub elsewhere: bool,
}

impl Audience {
    pub fn is_empty(self) -> bool {
        !self.here && !self.elsewhere
    }
}

/// A record of an app, stamped when it was made, with the consoles it is for.
#[derive(Debug)]
pub struct DebugRecord {
    pub app_id: String,
    pub t: u64,
    pub record: Record,
    pub audience: Audience,
}

impl DebugRecord {
    pub(crate) fn now(app_id: &str, record: Record, audience: Audience) -> DebugRecord {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        DebugRecord {
            app_id: app_id.to_owned(),
            t,
            record,
            audience,
        }
    }

    /// The record as the console reads it.
    pub fn json(&self) -> String {
        self.record.to_json(self.t)
    }
}

/// The `record` event on the debug channel carrying a record's JSON, encoded once for every
/// console.
pub fn record_frame(json: &str) -> Frame {
    frame::encode("record", Some(DEBUG_CHANNEL), json, None).into()
}

/// What one relayed message carries at most, well under [`MAX_CONTROL_BYTES`]: records
/// queued beyond it wait for the next message.
const RELAY_BYTES: usize = MAX_CONTROL_BYTES / 2;

/// Sends each record to the consoles watching its app on this node, and relays those that
/// consoles on other nodes want, until `shutdown`.
pub async fn run_debug(
    registry: Arc<Registry>,
    mut records: mpsc::Receiver<DebugRecord>,
    shutdown: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            _ = shutdown.cancelled() => return,
            record = records.recv() => record,
        };
        let Some(mut record) = record else { return };
        let mut relay = Vec::new();
        let mut relay_bytes = 0;
        loop {
            let json = record.json();
            if record.audience.here {
                registry.send_debug(&record.app_id, &json);
            }
            if record.audience.elsewhere {
                relay_bytes += json.len() + record.app_id.len();
                relay.push(RelayedRecord {
                    app_id: record.app_id,
                    record: json,
                });
            }
            if relay_bytes >= RELAY_BYTES {
                break;
            }
            match records.try_recv() {
                Ok(next) => record = next,
                Err(_) => break,
            }
        }
        if !relay.is_empty() {
            let count = relay.len() as u64;
            let message = Control::Debug {
                node: registry.node(),
                records: relay,
            };
            if !registry.broadcast(message) {
                metrics::counter!("switchboard_debug_records_dropped_total").increment(count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_in_a_record_event_on_the_debug_channel() {
        let mut envelope = Envelope::new("app", Source::Api, "news", "flash", "é".repeat(600));
        envelope.socket_id = Some("1.2".into());
        let record = DebugRecord {
            app_id: "app".into(),
            t: 7,
            record: Record::event(&envelope, 3),
            audience: Audience::default(),
        };
        let frame: serde_json::Value = serde_json::from_str(&record_frame(&record.json())).unwrap();
        assert_eq!(frame["event"], "record");
        assert_eq!(frame["channel"], DEBUG_CHANNEL);
        let data: serde_json::Value =
            serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["type"], "api_event");
        assert_eq!(data["t"], 7);
        assert_eq!(data["delivered"], 3);
        assert_eq!(data["id"], envelope.id.to_string());
        assert_eq!(data["truncated"], true);
        assert_eq!(data["data"].as_str().unwrap().len(), DATA_PREVIEW_BYTES);
        let closed = Record::ConnectionClosed {
            socket_id: "1.2".into(),
            code: 4100,
        };
        assert_eq!(
            closed.to_json(9),
            r#"{"code":4100,"socket_id":"1.2","t":9,"type":"connection_closed"}"#
        );
        let delivered = Record::Delivered {
            id: envelope.id,
            delivered: 2,
        };
        assert_eq!(
            delivered.to_json(9),
            format!(
                r#"{{"delivered":2,"id":"{}","t":9,"type":"delivered"}}"#,
                envelope.id
            )
        );
        assert!(Record::Subscribed {
            socket_id: "1.2".into(),
            channel: DEBUG_CHANNEL.into()
        }
        .is_about_the_console());
    }
}
