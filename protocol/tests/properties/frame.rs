//! WebSocket frames: `ClientMessage::parse` and the server's `encode_*` builders.

use proptest::prelude::*;
use protocol::frame::{self, ClientMessage, FrameError};
use protocol::presence::Member;
use serde_json::{json, Value};

use super::{config, json_value};

/// The event names the parser treats specially, and a few it must ignore.
fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pusher:ping".to_owned()),
        Just("pusher:pong".to_owned()),
        Just("pusher:subscribe".to_owned()),
        Just("pusher:unsubscribe".to_owned()),
        Just("pusher:signin".to_owned()),
        any::<String>().prop_map(|s| format!("client-{s}")),
        any::<String>(),
    ]
}

/// A frame-shaped JSON object whose fields may have any type, with `data` sometimes
/// JSON-encoded in a string as some clients send it.
fn frame_like() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop_oneof![
            event_name().prop_map(Value::String),
            json_value()
        ]),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(event, channel, data, data_as_string)| {
            let mut frame = serde_json::Map::new();
            if let Some(event) = event {
                frame.insert("event".into(), event);
            }
            if let Some(channel) = channel {
                frame.insert("channel".into(), channel);
            }
            if let Some(data) = data {
                let data = if data_as_string {
                    Value::String(data.to_string())
                } else {
                    data
                };
                frame.insert("data".into(), data);
            }
            Value::Object(frame).to_string()
        })
}

/// The error for a frame, when it is one: each documented variant is reachable and nothing else.
fn check_error(text: &str, error: &FrameError) -> Result<(), TestCaseError> {
    let shown = error.to_string();
    prop_assert!(!shown.is_empty());
    if let FrameError::BadData { event } | FrameError::MissingChannel { event } = error {
        // The event named in the error is the frame's own.
        let frame: Value = serde_json::from_str(text).expect("only a JSON frame has an event");
        prop_assert_eq!(frame["event"].as_str(), Some(event.as_str()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_on_any_text(text in any::<String>()) {
        if let Err(error) = ClientMessage::parse(&text) {
            check_error(&text, &error)?;
        }
    }

    #[test]
    fn parse_never_panics_on_frame_shaped_json(text in frame_like()) {
        match ClientMessage::parse(&text) {
            Ok(ClientMessage::ClientEvent { data, .. }) => {
                // The raw data is kept as valid JSON text (or `null` when absent).
                prop_assert!(serde_json::from_str::<Value>(&data).is_ok(), "{}", data);
            }
            Ok(_) => {}
            Err(error) => check_error(&text, &error)?,
        }
    }

    #[test]
    fn subscribe_frames_parse_to_what_was_sent(
        channel in any::<String>(),
        auth in prop::option::of(any::<String>()),
        channel_data in prop::option::of(any::<String>()),
        as_string in any::<bool>(),
    ) {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = &auth {
            data["auth"] = json!(auth);
        }
        if let Some(channel_data) = &channel_data {
            data["channel_data"] = json!(channel_data);
        }
        let data = if as_string { json!(data.to_string()) } else { data };
        let text = json!({ "event": "pusher:subscribe", "data": data }).to_string();
        prop_assert_eq!(
            ClientMessage::parse(&text),
            Ok(ClientMessage::Subscribe { channel, auth, channel_data })
        );
    }

    #[test]
    fn signin_and_unsubscribe_frames_parse_to_what_was_sent(
        auth in any::<String>(),
        user_data in any::<String>(),
        channel in any::<String>(),
    ) {
        let signin = json!({
            "event": "pusher:signin",
            "data": { "auth": auth, "user_data": user_data },
        });
        prop_assert_eq!(
            ClientMessage::parse(&signin.to_string()),
            Ok(ClientMessage::Signin { auth, user_data })
        );
        let unsubscribe = json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } });
        prop_assert_eq!(
            ClientMessage::parse(&unsubscribe.to_string()),
            Ok(ClientMessage::Unsubscribe { channel })
        );
    }

    #[test]
    fn client_events_keep_their_data_byte_exact(
        name in any::<String>(),
        channel in any::<String>(),
        data in json_value(),
    ) {
        let event = format!("client-{name}");
        let text = json!({ "event": event, "channel": channel, "data": data }).to_string();
        prop_assert_eq!(
            ClientMessage::parse(&text),
            Ok(ClientMessage::ClientEvent { event, channel, data: data.to_string() })
        );
    }

    /// Every server frame is a JSON object whose `data` is the given text as a JSON string; a
    /// relayed client event parses back as the same event (with its data now a JSON string).
    #[test]
    fn server_frames_parse_back(
        event in event_name(),
        channel in prop::option::of(any::<String>()),
        data in any::<String>(),
        user_id in prop::option::of(any::<String>()),
    ) {
        let text = frame::encode(&event, channel.as_deref(), &data, user_id.as_deref());
        let frame: Value = serde_json::from_str(&text).expect("server frames are JSON");
        prop_assert_eq!(frame["event"].as_str(), Some(event.as_str()));
        prop_assert_eq!(frame["data"].as_str(), Some(data.as_str()));
        prop_assert_eq!(frame.get("channel").and_then(Value::as_str), channel.as_deref());
        prop_assert_eq!(frame.get("user_id").and_then(Value::as_str), user_id.as_deref());
        if let (true, Some(channel)) = (event.starts_with("client-"), channel) {
            prop_assert_eq!(
                ClientMessage::parse(&text),
                Ok(ClientMessage::ClientEvent { event, channel, data: json!(data).to_string() })
            );
        }
    }

    #[test]
    fn server_builders_carry_their_fields(
        message in any::<String>(),
        code in prop::option::of(any::<u16>()),
        channel in any::<String>(),
        status in any::<u16>(),
        user_data in any::<String>(),
        socket_id in any::<String>(),
        activity_timeout in any::<u64>(),
    ) {
        let data = |text: String| -> Value {
            let frame: Value = serde_json::from_str(&text).expect("server frames are JSON");
            serde_json::from_str(frame["data"].as_str().expect("data is a string"))
                .expect("data is JSON")
        };
        prop_assert_eq!(
            data(frame::encode_error(&message, code)),
            json!({ "message": message, "code": code })
        );
        prop_assert_eq!(
            data(frame::encode_subscription_error(&channel, "AuthError", &message, status)),
            json!({ "type": "AuthError", "error": message, "status": status })
        );
        prop_assert_eq!(
            data(frame::encode_signin_success(&user_data)),
            json!({ "user_data": user_data })
        );
        prop_assert_eq!(
            data(frame::encode_connection_established(&socket_id, activity_timeout)),
            json!({ "socket_id": socket_id, "activity_timeout": activity_timeout })
        );
        let miss: Value = serde_json::from_str(&frame::encode_cache_miss(&channel)).unwrap();
        prop_assert_eq!(miss, json!({ "event": "pusher:cache_miss", "channel": channel }));
    }

    #[test]
    fn presence_frames_list_each_member_once(
        members in prop::collection::btree_map(any::<String>(), prop::option::of(json_value()), 0..8),
        channel in any::<String>(),
    ) {
        let members: Vec<Member> = members
            .into_iter()
            .map(|(user_id, info)| Member { user_id, user_info: info.map(|v| v.to_string()) })
            .collect();
        let text = frame::encode_presence_succeeded(&channel, &members);
        let frame: Value = serde_json::from_str(&text).unwrap();
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        let presence = &data["presence"];
        prop_assert_eq!(presence["count"].as_u64(), Some(members.len() as u64));
        let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        prop_assert_eq!(presence["ids"].clone(), json!(ids));
        for member in &members {
            let info = member
                .user_info
                .as_deref()
                .map_or(Value::Null, |text| serde_json::from_str(text).unwrap());
            prop_assert_eq!(&presence["hash"][&member.user_id], &info);
            let added: Value = serde_json::from_str(&frame::encode_member_added(&channel, member)).unwrap();
            let added: Value = serde_json::from_str(added["data"].as_str().unwrap()).unwrap();
            prop_assert_eq!(added, json!({ "user_id": member.user_id, "user_info": info }));
        }
    }
}
