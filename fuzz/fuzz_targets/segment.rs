//! A Segment Tracking API body: the first byte picks the endpoint, the rest is the body, through
//! `Request::parse` and `into_envelopes`; accepted envelopes go through the bus codec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::envelope::{decode_batch, encode_batch};
use protocol::segment::{CallType, Edge, Endpoint, Request};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = match pick % 7 {
        0 => Endpoint::Batch,
        1 => Endpoint::Call(CallType::Track),
        2 => Endpoint::Call(CallType::Identify),
        3 => Endpoint::Call(CallType::Page),
        4 => Endpoint::Call(CallType::Screen),
        5 => Endpoint::Call(CallType::Group),
        _ => Endpoint::Call(CallType::Alias),
    };
    let Ok(request) = Request::parse(endpoint, body) else {
        return;
    };
    let edge = Edge {
        received_at: "2024-05-06T07:08:09.123456789Z".parse().unwrap(),
        ip: Some([192, 0, 2, 1].into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0"),
        live_channel: Some("private-analytics"),
    };
    match request.into_envelopes("app", &edge) {
        Ok(envelopes) => {
            assert!(!envelopes.is_empty());
            for envelope in &envelopes {
                let fields = envelope.segment.as_ref().expect("Segment fields");
                assert!(fields.occurred_at <= envelope.received_at);
            }
            assert_eq!(decode_batch(&encode_batch(&envelopes)).unwrap(), envelopes);
        }
        Err(invalid) => assert!(!invalid.0.is_empty()),
    }
});
