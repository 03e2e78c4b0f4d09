//! Pusher v7 WebSocket frames (PROTOCOL.md §1).
//!
//! Client → server frames are parsed into [`ClientMessage`]. Server → client frames are built by
//! the `encode_*` functions, and [`encode`] is the one place that turns `data` into the JSON
//! string Pusher clients expect.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;
use uuid::Uuid;

/// A frame received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is the raw JSON text the client sent.
    ClientEvent {
        event: String,
        channel: String,
        data: String,
    },
    /// `switchboard:track`: analytics events over the WebSocket. `body` is the text of `data`
    /// (`{"batch":[…]}`), unwrapped when it was sent as a JSON string; `null` when absent.
    Track {
        body: String,
    },
    /// Any other event name; ignored by the server, as Pusher does.
    Other {
        event: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame is not a JSON object with a string `event`")]
    Malformed,
    #[error("`data` of {event} is missing or not of the expected shape")]
    BadData { event: String },
    #[error("{event} needs a `channel`")]
    MissingChannel { event: String },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    event: String,
    channel: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    auth: Option<String>,
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// `pusher:*` data is an object, but some clients send it JSON-encoded in a string: accept both.
fn object_data<T: DeserializeOwned>(event: &str, raw: Option<&RawValue>) -> Result<T, FrameError> {
    let bad = || FrameError::BadData {
        event: event.to_owned(),
    };
    let raw = raw.ok_or_else(bad)?.get();
    if raw.starts_with('"') {
        let inner: String = serde_json::from_str(raw).map_err(|_| bad())?;
        serde_json::from_str(&inner).map_err(|_| bad())
    } else {
        serde_json::from_str(raw).map_err(|_| bad())
    }
}

impl ClientMessage {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let frame: RawFrame<'_> = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
        let event = frame.event;
        Ok(match event.as_str() {
            "pusher:ping" => ClientMessage::Ping,
            "pusher:pong" => ClientMessage::Pong,
            "pusher:subscribe" => {
                let d: SubscribeData = object_data(&event, frame.data)?;
                ClientMessage::Subscribe {
                    channel: d.channel,
                    auth: d.auth,
                    channel_data: d.channel_data,
                }
            }
            "pusher:unsubscribe" => {
                let d: UnsubscribeData = object_data(&event, frame.data)?;
                ClientMessage::Unsubscribe { channel: d.channel }
            }
            "pusher:signin" => {
                let d: SigninData = object_data(&event, frame.data)?;
                ClientMessage::Signin {
                    auth: d.auth,
                    user_data: d.user_data,
                }
            }
            TRACK_EVENT => {
                let raw = frame.data.map_or("null", RawValue::get);
                let body = match serde_json::from_str::<String>(raw) {
                    Ok(inner) => inner,
                    Err(_) => raw.to_owned(),
                };
                ClientMessage::Track { body }
            }
            _ if event.starts_with("client-") => {
                let channel = frame.channel.ok_or_else(|| FrameError::MissingChannel {
                    event: event.clone(),
                })?;
                let data = frame.data.map_or("null", RawValue::get).to_owned();
                ClientMessage::ClientEvent {
                    event,
                    channel,
                    data,
                }
            }
            _ => ClientMessage::Other { event },
        })
    }
}

/// The client frame carrying analytics events over the WebSocket.
pub const TRACK_EVENT: &str = "switchboard:track";

/// `switchboard:ack`: the broker confirmed these events.
pub fn encode_track_ack(message_ids: &[String]) -> String {
    let data = json(serde_json::json!({ "messageIds": message_ids }));
    encode("switchboard:ack", None, &data, None)
}

/// `switchboard:nack`: these events were refused for `reason`; `retry` says whether sending them
/// again (with the same `messageId`) may succeed.
pub fn encode_track_nack(message_ids: &[String], reason: &str, retry: bool) -> String {
    let data = json(serde_json::json!({
        "messageIds": message_ids,
        "reason": reason,
        "retry": retry,
    }));
    encode("switchboard:nack", None, &data, None)
}

#[derive(Serialize)]
struct OutFrame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    /// The event's id, only for connections that opted in to Switchboard's extensions.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// Encodes a server → client frame. `data` is sent as a JSON string, byte-for-byte.
pub fn encode(event: &str, channel: Option<&str>, data: &str, user_id: Option<&str>) -> String {
    encode_frame(event, channel, Some(data), user_id, None)
}

/// A channel event's frame for a connection that opted in to Switchboard's extensions
/// (`/switchboard/app/{key}`): [`encode`]'s frame with the event's id as a last top-level
/// field, `"id":"0192f1c4-…"`.
pub fn encode_with_id(
    event: &str,
    channel: &str,
    data: &str,
    user_id: Option<&str>,
    id: Uuid,
) -> String {
    let mut buffer = Uuid::encode_buffer();
    let id = id.hyphenated().encode_lower(&mut buffer);
    encode_frame(event, Some(channel), Some(data), user_id, Some(id))
}

fn encode_frame(
    event: &str,
    channel: Option<&str>,
    data: Option<&str>,
    user_id: Option<&str>,
    id: Option<&str>,
) -> String {
    serde_json::to_string(&OutFrame {
        event,
        channel,
        data,
        user_id,
        id,
    })
    .expect("serializing strings cannot fail")
}

fn json(value: serde_json::Value) -> String {
    value.to_string()
}

pub fn encode_connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = json(serde_json::json!({
        "socket_id": socket_id,
        "activity_timeout": activity_timeout_secs,
    }));
    encode("pusher:connection_established", None, &data, None)
}

/// `pusher:error`; `code` is one of the Pusher error codes, or None.
pub fn encode_error(message: &str, code: Option<u16>) -> String {
    let data = json(serde_json::json!({ "message": message, "code": code }));
    encode("pusher:error", None, &data, None)
}

pub fn encode_ping() -> String {
    encode("pusher:ping", None, "{}", None)
}

pub fn encode_pong() -> String {
    encode("pusher:pong", None, "{}", None)
}

/// `pusher_internal:subscription_succeeded` with `data` (`{}` for non-presence channels).
pub fn encode_subscription_succeeded(channel: &str, data: &str) -> String {
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
        None,
    )
}

/// `pusher:subscription_error`, the channel-scoped failure Laravel Echo's `.error()` hears.
pub fn encode_subscription_error(
    channel: &str,
    error_type: &str,
    error: &str,
    status: u16,
) -> String {
    let data = json(serde_json::json!({ "type": error_type, "error": error, "status": status }));
    encode("pusher:subscription_error", Some(channel), &data, None)
}

/// `pusher_internal:subscription_succeeded` for a presence channel: unique members.
pub fn encode_presence_succeeded(channel: &str, members: &[crate::presence::Member]) -> String {
    let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    let hash: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .map(|m| (m.user_id.clone(), user_info_value(m.user_info.as_deref())))
        .collect();
    let data = json(serde_json::json!({
        "presence": { "ids": ids, "hash": hash, "count": members.len() }
    }));
    encode_subscription_succeeded(channel, &data)
}

fn user_info_value(info: Option<&str>) -> serde_json::Value {
    info.and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub fn encode_member_added(channel: &str, member: &crate::presence::Member) -> String {
    let data = json(serde_json::json!({
        "user_id": member.user_id,
        "user_info": user_info_value(member.user_info.as_deref()),
    }));
    encode("pusher_internal:member_added", Some(channel), &data, None)
}

pub fn encode_member_removed(channel: &str, user_id: &str) -> String {
    let data = json(serde_json::json!({ "user_id": user_id }));
    encode("pusher_internal:member_removed", Some(channel), &data, None)
}

/// `pusher:cache_miss`: the event and the channel only, no `data` (as Pusher sends it).
pub fn encode_cache_miss(channel: &str) -> String {
    encode_frame("pusher:cache_miss", Some(channel), None, None, None)
}

pub fn encode_subscription_count(channel: &str, count: usize) -> String {
    let data = json(serde_json::json!({ "subscription_count": count }));
    encode(
        "pusher_internal:subscription_count",
        Some(channel),
        &data,
        None,
    )
}

pub fn encode_signin_success(user_data: &str) -> String {
    let data = json(serde_json::json!({ "user_data": user_data }));
    encode("pusher:signin_success", None, &data, None)
}

/// `pusher_internal:watchlist_events`: `online` / `offline` user ids.
pub fn encode_watchlist_events(online: &[String], offline: &[String]) -> String {
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(serde_json::json!({ "name": "online", "user_ids": online }));
    }
    if !offline.is_empty() {
        events.push(serde_json::json!({ "name": "offline", "user_ids": offline }));
    }
    let data = json(serde_json::json!({ "events": events }));
    encode("pusher_internal:watchlist_events", None, &data, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<ClientMessage, FrameError>) {
        assert_eq!(ClientMessage::parse(text), expected, "{text}");
    }

    #[test]
    fn parses_pusher_events() {
        check(
            r#"{"event":"pusher:ping","data":{}}"#,
            Ok(ClientMessage::Ping),
        );
        check(r#"{"event":"pusher:pong"}"#, Ok(ClientMessage::Pong));
        check(
            r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"news"}}"#,
            Ok(ClientMessage::Subscribe {
                channel: "news".into(),
                auth: Some(String::new()),
                channel_data: None,
            }),
        );
        check(
            r#"{"event":"pusher:subscribe","data":"{\"channel\":\"presence-a\",\"auth\":\"k:s\",\"channel_data\":\"{\\\"user_id\\\":1}\"}"}"#,
            Ok(ClientMessage::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":1}"#.into()),
            }),
        );
        check(
            r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#,
            Ok(ClientMessage::Unsubscribe {
                channel: "news".into(),
            }),
        );
        check(
            r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#,
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: r#"{"id":"1"}"#.into(),
            }),
        );
        check(
            r#"{"event":"something-else","data":1}"#,
            Ok(ClientMessage::Other {
                event: "something-else".into(),
            }),
        );
    }

    #[test]
    fn client_events_keep_raw_data() {
        check(
            r#"{"event":"client-typing","channel":"private-a","data":{ "x" : [1, 2] }}"#,
            Ok(ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-a".into(),
                data: r#"{ "x" : [1, 2] }"#.into(),
            }),
        );
        check(
            r#"{"event":"client-typing","data":{}}"#,
            Err(FrameError::MissingChannel {
                event: "client-typing".into(),
            }),
        );
    }

    #[test]
    fn rejects_malformed() {
        check("not json", Err(FrameError::Malformed));
        check(r#"{"data":{}}"#, Err(FrameError::Malformed));
        check(r#"{"event":5}"#, Err(FrameError::Malformed));
        check(
            r#"{"event":"pusher:subscribe","data":{}}"#,
            Err(FrameError::BadData {
                event: "pusher:subscribe".into(),
            }),
        );
        check(
            r#"{"event":"pusher:subscribe"}"#,
            Err(FrameError::BadData {
                event: "pusher:subscribe".into(),
            }),
        );
    }

    #[test]
    fn golden_presence_and_user_frames() {
        use crate::presence::Member;
        let members = [
            Member {
                user_id: "1".into(),
                user_info: Some(r#"{"name":"Ann"}"#.into()),
            },
            Member {
                user_id: "2".into(),
                user_info: None,
            },
        ];
        assert_eq!(
            encode_presence_succeeded("presence-a", &members),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-a","data":"{\"presence\":{\"count\":2,\"hash\":{\"1\":{\"name\":\"Ann\"},\"2\":null},\"ids\":[\"1\",\"2\"]}}"}"#
        );
        assert_eq!(
            encode_member_added("presence-a", &members[0]),
            r#"{"event":"pusher_internal:member_added","channel":"presence-a","data":"{\"user_id\":\"1\",\"user_info\":{\"name\":\"Ann\"}}"}"#
        );
        assert_eq!(
            encode_member_removed("presence-a", "1"),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-a","data":"{\"user_id\":\"1\"}"}"#
        );
        assert_eq!(
            encode_cache_miss("cache-a"),
            r#"{"event":"pusher:cache_miss","channel":"cache-a"}"#
        );
        assert_eq!(
            encode_subscription_count("a", 3),
            r#"{"event":"pusher_internal:subscription_count","channel":"a","data":"{\"subscription_count\":3}"}"#
        );
        assert_eq!(
            encode_signin_success(r#"{"id":"1"}"#),
            r#"{"event":"pusher:signin_success","data":"{\"user_data\":\"{\\\"id\\\":\\\"1\\\"}\"}"}"#
        );
        assert_eq!(
            encode_watchlist_events(&["1".into()], &[]),
            r#"{"event":"pusher_internal:watchlist_events","data":"{\"events\":[{\"name\":\"online\",\"user_ids\":[\"1\"]}]}"}"#
        );
    }

    #[test]
    fn golden_server_frames() {
        assert_eq!(
            encode_connection_established("123.456", 120),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":120,\"socket_id\":\"123.456\"}"}"#
        );
        assert_eq!(
            encode_error("Unknown app", Some(4001)),
            r#"{"event":"pusher:error","data":"{\"code\":4001,\"message\":\"Unknown app\"}"}"#
        );
        assert_eq!(
            encode_error("Bad frame", None),
            r#"{"event":"pusher:error","data":"{\"code\":null,\"message\":\"Bad frame\"}"}"#
        );
        assert_eq!(encode_pong(), r#"{"event":"pusher:pong","data":"{}"}"#);
        assert_eq!(encode_ping(), r#"{"event":"pusher:ping","data":"{}"}"#);
        assert_eq!(
            encode_subscription_succeeded("news", "{}"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}"#
        );
        assert_eq!(
            encode_subscription_error("private-a", "AuthError", "bad auth", 401),
            r#"{"event":"pusher:subscription_error","channel":"private-a","data":"{\"error\":\"bad auth\",\"status\":401,\"type\":\"AuthError\"}"}"#
        );
        assert_eq!(
            encode("client-x", Some("presence-a"), r#"{"a":"b"}"#, Some("7")),
            r#"{"event":"client-x","channel":"presence-a","data":"{\"a\":\"b\"}","user_id":"7"}"#
        );
    }

    #[test]
    fn track_frames() {
        let body = r#"{"batch":[{"messageId":"m1"}]}"#;
        let sent_as_object = format!(r#"{{"event":"switchboard:track","data":{body}}}"#);
        let sent_as_string = serde_json::json!({"event": "switchboard:track", "data": body});
        for text in [sent_as_object, sent_as_string.to_string()] {
            check(
                &text,
                Ok(ClientMessage::Track {
                    body: body.to_owned(),
                }),
            );
        }
        check(
            r#"{"event":"switchboard:track"}"#,
            Ok(ClientMessage::Track {
                body: "null".to_owned(),
            }),
        );
        assert_eq!(
            encode_track_ack(&["m1".into(), "m2".into()]),
            r#"{"event":"switchboard:ack","data":"{\"messageIds\":[\"m1\",\"m2\"]}"}"#
        );
        assert_eq!(
            encode_track_nack(&["m3".into()], "userId or anonymousId is required", false),
            r#"{"event":"switchboard:nack","data":"{\"messageIds\":[\"m3\"],\"reason\":\"userId or anonymousId is required\",\"retry\":false}"}"#
        );
    }

    #[test]
    fn golden_frames_with_an_id() {
        let id: Uuid = "0192f1c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6".parse().unwrap();
        assert_eq!(
            encode_with_id("e", "c", "x", None, id),
            r#"{"event":"e","channel":"c","data":"x","id":"0192f1c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6"}"#
        );
        // `user_id` stays where Pusher puts it; the id comes last.
        assert_eq!(
            encode_with_id("client-x", "presence-a", r#"{"a":"b"}"#, Some("7"), id),
            r#"{"event":"client-x","channel":"presence-a","data":"{\"a\":\"b\"}","user_id":"7","id":"0192f1c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6"}"#
        );
    }
}
