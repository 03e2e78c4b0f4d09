//! The debug console's records: what happens to an app's sockets and events on this node,
//! published on the app's reserved [`DEBUG_CHANNEL`] — only while a console watches it, through
//! a bounded queue (when full, records are dropped and counted in
//! `switchboard_debug_records_dropped_total`), never waiting on the path that makes them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::channel::DEBUG_CHANNEL;
use protocol::{frame, Envelope, Source};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
}

impl Record {
    /// The record of an envelope fanned out to `delivered` sockets.
    pub fn event(envelope: &Envelope, delivered: usize) -> Record {
        let mut end = envelope.data.len().min(DATA_PREVIEW_BYTES);
        while !envelope.data.is_char_boundary(end) {
            end -= 1;
        }
        Record::Event {
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
            Record::ConnectionOpened { .. } | Record::ConnectionClosed { .. } => false,
        }
    }
}

/// A record of an app, stamped when it was made.
#[derive(Debug)]
pub struct DebugRecord {
    pub app_id: String,
    pub t: u64,
    pub record: Record,
}

impl DebugRecord {
    pub(crate) fn now(app_id: &str, record: Record) -> DebugRecord {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        DebugRecord {
            app_id: app_id.to_owned(),
            t,
            record,
        }
    }

    /// The `record` event on the debug channel, encoded once for every console.
    pub fn frame(&self) -> Frame {
        frame::encode(
            "record",
            Some(DEBUG_CHANNEL),
            &self.record.to_json(self.t),
            None,
        )
        .into()
    }
}

/// Sends each record to the consoles watching its app on this node, until `shutdown`.
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
        let Some(record) = record else { return };
        registry.send_debug(&record);
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
        };
        let frame: serde_json::Value = serde_json::from_str(&record.frame()).unwrap();
        assert_eq!(frame["event"], "record");
        assert_eq!(frame["channel"], DEBUG_CHANNEL);
        let data: serde_json::Value =
            serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["type"], "api_event");
        assert_eq!(data["t"], 7);
        assert_eq!(data["delivered"], 3);
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
        assert!(Record::Subscribed {
            socket_id: "1.2".into(),
            channel: DEBUG_CHANNEL.into()
        }
        .is_about_the_console());
    }
}
