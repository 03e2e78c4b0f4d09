//! Pusher webhooks (PROTOCOL.md §4): the seven event types with Pusher's payloads, the body
//! `{"time_ms": …, "events": […]}`, its headers and signature, and [`Queued`], the form a webhook
//! event travels in from the gateway to the worker.
//!
//! The signature is the hex HMAC-SHA256 of the exact body bytes sent, with the app's secret, as
//! the Pusher server SDKs check it (`pusher.webhook({headers, rawBody}).isValid()` in Node,
//! `validate_webhook` in Python). Those SDKs accept only `Content-Type: application/json`,
//! byte for byte: no `charset` parameter.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The app's key.
pub const KEY_HEADER: &str = "X-Pusher-Key";
/// [`sign`] of the body.
pub const SIGNATURE_HEADER: &str = "X-Pusher-Signature";
/// The delivery's id: the same on every retry of one batch, so a receiver can drop a batch it
/// already took.
pub const ID_HEADER: &str = "X-Switchboard-Webhook-Id";
/// The only `Content-Type` the Pusher SDKs accept.
pub const CONTENT_TYPE: &str = "application/json";

/// The kinds of webhook event, as named in a body's `name` and in `event_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::ChannelOccupied,
        EventType::ChannelVacated,
        EventType::MemberAdded,
        EventType::MemberRemoved,
        EventType::ClientEvent,
        EventType::CacheMiss,
        EventType::SubscriptionCount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ChannelOccupied => "channel_occupied",
            EventType::ChannelVacated => "channel_vacated",
            EventType::MemberAdded => "member_added",
            EventType::MemberRemoved => "member_removed",
            EventType::ClientEvent => "client_event",
            EventType::CacheMiss => "cache_miss",
            EventType::SubscriptionCount => "subscription_count",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown webhook event type {0:?} (known: channel_occupied, channel_vacated, member_added, member_removed, client_event, cache_miss, subscription_count)")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownEventType(name.to_owned()))
    }
}

/// One event of a webhook body, exactly as Pusher sends it: `name` first, then its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookEvent {
    /// The channel's first subscriber arrived.
    ChannelOccupied { channel: String },
    /// The channel's last subscriber left.
    ChannelVacated { channel: String },
    /// A user's first socket joined the presence channel.
    MemberAdded { channel: String, user_id: String },
    /// A user's last socket left the presence channel.
    MemberRemoved { channel: String, user_id: String },
    /// A `client-*` event a socket sent; `data` is the event's data as a JSON text, `user_id`
    /// the sender's presence user (presence channels only).
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// A socket subscribed to a cache channel that had no cached event.
    CacheMiss { channel: String },
    /// The number of subscriptions of a channel changed.
    SubscriptionCount {
        channel: String,
        subscription_count: u64,
    },
}

impl WebhookEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            WebhookEvent::ChannelOccupied { .. } => EventType::ChannelOccupied,
            WebhookEvent::ChannelVacated { .. } => EventType::ChannelVacated,
            WebhookEvent::MemberAdded { .. } => EventType::MemberAdded,
            WebhookEvent::MemberRemoved { .. } => EventType::MemberRemoved,
            WebhookEvent::ClientEvent { .. } => EventType::ClientEvent,
            WebhookEvent::CacheMiss { .. } => EventType::CacheMiss,
            WebhookEvent::SubscriptionCount { .. } => EventType::SubscriptionCount,
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }
}

/// Which events a webhook wants: its `event_types` and, when set, only channels whose name
/// starts with `channel_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub event_types: Vec<EventType>,
    pub channel_prefix: Option<String>,
}

impl Filter {
    /// Whether an event of `kind` on `channel` passes the filter.
    pub fn wants(&self, kind: EventType, channel: &str) -> bool {
        self.event_types.contains(&kind)
            && self
                .channel_prefix
                .as_deref()
                .is_none_or(|prefix| channel.starts_with(prefix))
    }

    pub fn matches(&self, event: &WebhookEvent) -> bool {
        self.wants(event.event_type(), event.channel())
    }
}

/// A webhook request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// Unix time in milliseconds when the batch was made (the same on every retry).
    pub time_ms: i64,
    pub events: Vec<WebhookEvent>,
}

impl Body {
    /// The exact bytes sent (and signed).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("webhook bodies always serialize")
    }
}

/// The `X-Pusher-Signature` of `body`: lower-case hex HMAC-SHA256 under the app's secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    crate::signature::sign(secret, body)
}

/// Checks an `X-Pusher-Signature` in constant time.
pub fn verify(secret: &str, body: &[u8], signature_hex: &str) -> bool {
    crate::signature::verify(secret, body, signature_hex)
}

/// A webhook event on its way from the gateway to the worker, with the app it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub app_id: String,
    pub event: WebhookEvent,
}

impl Queued {
    /// One queued event as it appears inside a message (a JSON array of them), so a publisher
    /// can size its messages before joining the parts with [`crate::envelope::join_encoded`].
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("queued webhook events always serialize")
    }
}

/// Decodes one message of the webhook queue.
pub fn decode_queued(body: &[u8]) -> Result<Vec<Queued>, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::join_encoded;

    /// Key and secret of the example in Pusher's webhook documentation.
    const KEY_SECRET: &str = "7ad3773142a6692b25b8";

    fn check(event: WebhookEvent, json: &str) {
        let encoded = serde_json::to_string(&event).unwrap();
        assert_eq!(encoded, json);
        assert_eq!(serde_json::from_str::<WebhookEvent>(json).unwrap(), event);
        assert_eq!(event.channel(), "c-1");
    }

    #[test]
    fn events_are_encoded_as_pusher_sends_them() {
        let channel = || "c-1".to_owned();
        check(
            WebhookEvent::ChannelOccupied { channel: channel() },
            r#"{"name":"channel_occupied","channel":"c-1"}"#,
        );
        check(
            WebhookEvent::ChannelVacated { channel: channel() },
            r#"{"name":"channel_vacated","channel":"c-1"}"#,
        );
        check(
            WebhookEvent::MemberAdded {
                channel: channel(),
                user_id: "u1".into(),
            },
            r#"{"name":"member_added","channel":"c-1","user_id":"u1"}"#,
        );
        check(
            WebhookEvent::MemberRemoved {
                channel: channel(),
                user_id: "u1".into(),
            },
            r#"{"name":"member_removed","channel":"c-1","user_id":"u1"}"#,
        );
        check(
            WebhookEvent::ClientEvent {
                channel: channel(),
                event: "client-typing".into(),
                data: r#"{"x":1}"#.into(),
                socket_id: "1.2".into(),
                user_id: None,
            },
            r#"{"name":"client_event","channel":"c-1","event":"client-typing","data":"{\"x\":1}","socket_id":"1.2"}"#,
        );
        check(
            WebhookEvent::ClientEvent {
                channel: channel(),
                event: "client-typing".into(),
                data: "null".into(),
                socket_id: "1.2".into(),
                user_id: Some("u1".into()),
            },
            r#"{"name":"client_event","channel":"c-1","event":"client-typing","data":"null","socket_id":"1.2","user_id":"u1"}"#,
        );
        check(
            WebhookEvent::CacheMiss { channel: channel() },
            r#"{"name":"cache_miss","channel":"c-1"}"#,
        );
        check(
            WebhookEvent::SubscriptionCount {
                channel: channel(),
                subscription_count: 3,
            },
            r#"{"name":"subscription_count","channel":"c-1","subscription_count":3}"#,
        );
    }

    #[test]
    fn every_event_type_has_its_name() {
        for kind in EventType::ALL {
            assert_eq!(kind.as_str().parse::<EventType>(), Ok(kind));
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        let unknown = "channel_existence".parse::<EventType>().unwrap_err();
        assert_eq!(unknown, UnknownEventType("channel_existence".into()));
        assert!(unknown.to_string().contains("\"channel_existence\""));
    }

    /// Golden vectors: bodies and signatures checked with the npm `pusher` package (5.3.4),
    /// `pusher.webhook({headers, rawBody}).isValid()` true and `getEvents()` the events.
    #[test]
    fn signatures_match_the_pusher_sdk() {
        let documented = Body {
            time_ms: 1_327_078_148_132,
            events: vec![WebhookEvent::ChannelOccupied {
                channel: "test_channel".into(),
            }],
        };
        let body = documented.encode();
        assert_eq!(
            body,
            br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test_channel"}]}"#
        );
        assert_eq!(
            sign(KEY_SECRET, &body),
            "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa"
        );
        let client = Body {
            time_ms: 1_700_000_000_000,
            events: vec![WebhookEvent::ClientEvent {
                channel: "presence-room".into(),
                event: "client-typing".into(),
                data: r#"{"x":1}"#.into(),
                socket_id: "1.2".into(),
                user_id: Some("u1".into()),
            }],
        };
        let body = client.encode();
        let signature = "d12f2ae53110509afd4e51bda2097506df56edbc7753f8699a93699b00159347";
        assert_eq!(sign(KEY_SECRET, &body), signature);
        assert!(verify(KEY_SECRET, &body, signature));
        assert!(!verify("another-secret", &body, signature));
        let mut altered = body.clone();
        altered.push(b' ');
        assert!(!verify(KEY_SECRET, &altered, signature));
        assert!(!verify(KEY_SECRET, &body, "not hex"));
        assert_eq!(serde_json::from_slice::<Body>(&body).unwrap(), client);
    }

    #[test]
    fn filters_by_type_and_prefix() {
        let miss = |channel: &str| WebhookEvent::CacheMiss {
            channel: channel.into(),
        };
        let any = Filter {
            event_types: EventType::ALL.to_vec(),
            channel_prefix: None,
        };
        assert!(any.matches(&miss("cache-a")));
        let presence_only = Filter {
            event_types: vec![EventType::CacheMiss, EventType::MemberAdded],
            channel_prefix: Some("presence-cache-".into()),
        };
        assert!(presence_only.matches(&miss("presence-cache-a")));
        assert!(!presence_only.matches(&miss("cache-a")));
        assert!(!presence_only.wants(EventType::ClientEvent, "presence-cache-a"));
        assert!(presence_only.wants(EventType::MemberAdded, "presence-cache-a"));
        let none = Filter {
            event_types: vec![],
            channel_prefix: None,
        };
        assert!(!none.matches(&miss("cache-a")));
    }

    #[test]
    fn queued_events_round_trip_in_a_message() {
        let queued = vec![
            Queued {
                app_id: "1".into(),
                event: WebhookEvent::CacheMiss {
                    channel: "cache-a".into(),
                },
            },
            Queued {
                app_id: "2".into(),
                event: WebhookEvent::MemberAdded {
                    channel: "presence-a".into(),
                    user_id: "7".into(),
                },
            },
        ];
        let parts: Vec<Vec<u8>> = queued.iter().map(Queued::encode).collect();
        let message = join_encoded(parts.iter().map(Vec::as_slice));
        assert_eq!(decode_queued(&message).unwrap(), queued);
        assert!(decode_queued(br#"[{"app_id":"1","event":{"name":"nope"}}]"#).is_err());
    }
}
