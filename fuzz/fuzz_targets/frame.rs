//! A WebSocket text frame from a client, through everything the session parses of it:
//! `ClientMessage::parse`, then the channel name, presence `channel_data` and sign-in
//! `user_data` it carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::ClientMessage;
use protocol::presence::{Member, SignedInUser};
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
        Ok(ClientMessage::Ping | ClientMessage::Pong | ClientMessage::Other { .. }) => {}
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
