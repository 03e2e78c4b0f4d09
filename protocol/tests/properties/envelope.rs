//! The bus batch codec: what `encode_batch` writes, `decode_batch` reads back unchanged.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use protocol::envelope::{decode_batch, encode_batch};
use protocol::{Envelope, Source};
use uuid::Uuid;

use super::config;

fn source() -> impl Strategy<Value = Source> {
    prop::sample::select(&[Source::Api, Source::Client, Source::Track][..])
}

/// Any instant chrono can represent to the nanosecond, within years 0..9999 (RFC 3339).
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap())
}

pub(crate) fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u128>(),
        any::<String>(),
        source(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        prop::option::of(any::<String>()),
        prop::option::of(any::<String>()),
        instant(),
        prop::option::of(any::<String>()),
    )
        .prop_map(
            |(
                id,
                app_id,
                source,
                channel,
                name,
                data,
                socket_id,
                user_id,
                received_at,
                idempotency_key,
            )| Envelope {
                id: Uuid::from_u128(id),
                app_id,
                source,
                channel,
                name,
                data,
                socket_id,
                user_id,
                received_at,
                segment: None,
                idempotency_key,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn batches_round_trip(batch in prop::collection::vec(envelope(), 0..8)) {
        prop_assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
    }

    #[test]
    fn decode_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_batch(&body);
    }
}
