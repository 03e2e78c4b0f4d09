//! The Envelope: one accepted event as it travels on the bus, from the edge to every consumer.
//! [`analytics`] holds what a Segment call carries beyond the common fields; this module and
//! it import nothing from the codecs that produce them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};

use thiserror::Error;
use uuid::timestamp::context::ContextV7;
use uuid::{Timestamp, Uuid};

pub mod analytics;

use analytics::SegmentFields;

/// Where an event entered Switchboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Triggered through the Pusher HTTP API.
    Api,
    /// A `client-*` event sent over a WebSocket.
    Client,
    /// A Segment Tracking API call.
    Track,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Client => "client",
            Source::Track => "track",
        }
    }
}

/// One accepted event. `id` and `received_at` are assigned once at the edge and never change,
/// so every consumer (and every redelivery) sees the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    pub app_id: String,
    pub source: Source,
    pub channel: String,
    pub name: String,
    /// The payload, byte-exact as received.
    pub data: String,
    /// The connection that must not receive its own event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The sender's dedup key for this envelope, derived from the HTTP API request's
    /// `X-Idempotency-Key`: storage keeps the first envelope of an `(app_id, idempotency_key)`
    /// within the dedup window and drops the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// What a Segment call carries beyond the common fields (`source` is `track`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Box<SegmentFields>>,
}

impl Envelope {
    /// A new envelope received now: a fresh UUIDv7 id whose timestamp is `received_at`'s
    /// millisecond (see [`stamp_now`]).
    pub fn new(app_id: &str, source: Source, channel: &str, name: &str, data: String) -> Self {
        let (id, received_at) = stamp_now();
        Envelope {
            id,
            app_id: app_id.to_owned(),
            source,
            channel: channel.to_owned(),
            name: name.to_owned(),
            data,
            socket_id: None,
            user_id: None,
            received_at,
            idempotency_key: None,
            segment: None,
        }
    }
}

/// The clock of this process's envelope ids: monotonic, so ids made one after the other are in
/// that order, even within one millisecond.
static CLOCK: Mutex<ContextV7> = Mutex::new(ContextV7::new());

/// A fresh id and the instant it names: read under one lock, so that ids follow each other in
/// the order of their instants, and the instant is the id's own (a clock that steps back keeps
/// the last instant), so the id's timestamp is always `received_at`'s millisecond.
fn stamp_now() -> (Uuid, DateTime<Utc>) {
    let clock = CLOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Utc::now();
    let secs = u64::try_from(now.timestamp()).unwrap_or(0);
    let timestamp = Timestamp::from_unix(&*clock, secs, now.timestamp_subsec_nanos());
    drop(clock);
    let (secs, nanos) = timestamp.to_unix();
    let received_at = i64::try_from(secs)
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, nanos))
        .unwrap_or(now);
    (Uuid::new_v7(timestamp), received_at)
}

/// Ids for envelopes that share one `received_at` (the events of one Segment request): each a
/// UUIDv7 of that millisecond, in the order they are made.
pub struct EnvelopeIds {
    context: ContextV7,
    secs: u64,
    nanos: u32,
}

impl EnvelopeIds {
    pub fn at(received_at: DateTime<Utc>) -> Self {
        EnvelopeIds {
            context: ContextV7::new(),
            secs: u64::try_from(received_at.timestamp()).unwrap_or(0),
            nanos: received_at.timestamp_subsec_nanos(),
        }
    }

    pub fn next_id(&mut self) -> Uuid {
        Uuid::new_v7(Timestamp::from_unix(&self.context, self.secs, self.nanos))
    }
}

/// The millisecond a UUIDv7 was made in (`None` for another kind of UUID): the
/// `received_at` of its envelope, to the millisecond.
pub fn id_time(id: &Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

#[derive(Debug, Error)]
#[error("message is not a batch of envelopes: {0}")]
pub struct EnvelopeError(#[from] serde_json::Error);

/// Encodes the body of one bus message: a JSON array of envelopes.
pub fn encode_batch(envelopes: &[Envelope]) -> Vec<u8> {
    serde_json::to_vec(envelopes).expect("envelopes always serialize")
}

/// Encodes one envelope as it appears inside a batch, so that a publisher can size its messages
/// before joining the parts with [`join_encoded`].
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    serde_json::to_vec(envelope).expect("envelopes always serialize")
}

/// Joins envelopes encoded by [`encode_envelope`] into one batch body, byte for byte what
/// [`encode_batch`] makes of the same envelopes.
pub fn join_encoded<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(part);
    }
    body.push(b']');
    body
}

pub fn decode_batch(body: &[u8]) -> Result<Vec<Envelope>, EnvelopeError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_keeps_data_byte_exact() {
        let mut a = Envelope::new("1", Source::Api, "news", "update", r#"{ "a" : 1 }"#.into());
        a.socket_id = Some("1.2".into());
        let b = Envelope::new(
            "1",
            Source::Client,
            "private-x",
            "client-y",
            "not json \u{1F600}".into(),
        );
        let decoded = decode_batch(&encode_batch(&[a.clone(), b.clone()])).unwrap();
        assert_eq!(decoded, vec![a, b]);
    }

    #[test]
    fn joined_parts_are_the_batch_encoding() {
        let mut keyed = Envelope::new("1", Source::Api, "a", "e", "{}".into());
        keyed.idempotency_key = Some("key-1 a".into());
        let plain = Envelope::new("1", Source::Api, "b", "e", "x".into());
        for batch in [vec![], vec![plain.clone()], vec![keyed, plain]] {
            let parts: Vec<Vec<u8>> = batch.iter().map(encode_envelope).collect();
            let joined = join_encoded(parts.iter().map(Vec::as_slice));
            assert_eq!(joined, encode_batch(&batch));
            assert_eq!(decode_batch(&joined).unwrap(), batch);
        }
    }

    #[test]
    fn envelopes_without_a_key_decode_as_before() {
        let old = br#"[{"id":"01890a5d-ac96-774b-bcce-b302099a8057","app_id":"1","source":"api","channel":"c","name":"e","data":"d","received_at":"2024-01-01T00:00:00Z"}]"#;
        let decoded = decode_batch(old).unwrap();
        assert_eq!(decoded[0].idempotency_key, None);
        assert!(!String::from_utf8(encode_batch(&decoded))
            .unwrap()
            .contains("idempotency_key"));
    }

    #[test]
    fn an_ids_time_is_its_received_at_to_the_millisecond() {
        let millis = |t: DateTime<Utc>| t.timestamp_millis();
        let mut previous = Uuid::nil();
        for _ in 0..2000 {
            let e = Envelope::new("1", Source::Api, "c", "e", String::new());
            assert_eq!(millis(id_time(&e.id).unwrap()), millis(e.received_at));
            assert!(e.id > previous, "ids follow each other in order");
            previous = e.id;
        }
        let received_at = DateTime::parse_from_rfc3339("2025-03-01T12:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut ids = EnvelopeIds::at(received_at);
        let made: Vec<Uuid> = (0..1000).map(|_| ids.next_id()).collect();
        assert!(made.windows(2).all(|pair| pair[0] < pair[1]), "in order");
        assert!(made
            .iter()
            .all(|id| id_time(id).map(millis) == Some(millis(received_at))));
        assert_eq!(id_time(&Uuid::new_v4()), None);
    }

    #[test]
    fn ids_are_v7_and_unique() {
        let a = Envelope::new("1", Source::Api, "c", "e", String::new());
        let b = Envelope::new("1", Source::Api, "c", "e", String::new());
        assert_eq!(a.id.get_version_num(), 7);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn envelopes_without_segment_fields_still_decode() {
        let old = r#"[{"id":"0190b3a0-0000-7000-8000-000000000000","app_id":"1","source":"api","channel":"c","name":"e","data":"{}","received_at":"2025-03-01T12:00:00Z"}]"#;
        let decoded = decode_batch(old.as_bytes()).unwrap();
        assert_eq!(decoded[0].segment, None);
        assert_eq!(
            decoded[0].received_at.to_rfc3339(),
            "2025-03-01T12:00:00+00:00"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_batch(b"not json").is_err());
        assert!(decode_batch(br#"[{"id":"x"}]"#).is_err());
        assert!(decode_batch(br#"{"id":"x"}"#).is_err());
    }
}
