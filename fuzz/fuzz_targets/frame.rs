//! A WebSocket text frame from a client, through everything the session parses of it:
//! `ClientMessage::parse`, then the channel name, presence `channel_data` and sign-in
//! `user_data` it carries, and a `switchboard:track` batch's per-event verdicts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::ClientMessage;
use protocol::presence::{Member, SignedInUser};
use protocol::segment::{readable_message_ids, Edge, Endpoint, Request};
use protocol::Channel;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    // warp hands the session text frames only, as UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Subscribe {
            channel,
            channel_data,
            ..
        }) => {
            let _ = Channel::parse(&channel);
            let _ = Member::from_channel_data(channel_data.as_deref());
        }
        Ok(ClientMessage::Signin { user_data, .. }) => {
            let _ = SignedInUser::from_user_data(&user_data);
        }
        Ok(ClientMessage::ClientEvent { channel, data, .. }) => {
            let _ = Channel::parse(&channel);
            // Relayed byte-exact: what is kept is the JSON text the client sent.
            assert!(serde_json::from_str::<&RawValue>(&data).is_ok(), "{data}");
        }
        Ok(ClientMessage::Unsubscribe { channel }) => {
            let _ = Channel::parse(&channel);
        }
        Ok(ClientMessage::Track { body }) => match Request::parse(Endpoint::Batch, body.as_bytes()) {
            Ok(request) => {
                let edge = Edge {
                    received_at: "2024-05-06T07:08:09.123456789Z".parse().unwrap(),
                    ip: None,
                    user_agent: None,
                    live_channel: Some("private-analytics"),
                };
                for verdict in request.verdicts("app", &edge) {
                    if let Ok(envelope) = verdict.outcome {
                        assert_eq!(envelope.received_at, edge.received_at);
                    }
                    assert!(verdict.message_id.is_none_or(|id| !id.is_empty()));
                }
            }
            Err(_) => {
                let _ = readable_message_ids(body.as_bytes());
            }
        },
        Ok(ClientMessage::Ping | ClientMessage::Pong | ClientMessage::Other { .. }) => {}
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
