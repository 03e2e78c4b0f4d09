//! Segment bodies through the public entry points (`Request::parse`, `into_envelopes`):
//! never a panic, only `BodyError` / `InvalidEvents`, all or nothing, data byte-exact, and the
//! envelopes (with their Segment fields) survive the bus codec.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use protocol::envelope::{decode_batch, encode_batch};
use protocol::segment::{CallType, Edge, Endpoint, Request};

const LIVE_CHANNEL: &str = "private-analytics";
use protocol::Source;
use serde_json::{json, Map, Value};

use super::{config, json_value};

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        Just(Endpoint::Batch),
        prop::sample::select(
            &[
                CallType::Track,
                CallType::Identify,
                CallType::Page,
                CallType::Screen,
                CallType::Group,
                CallType::Alias,
            ][..]
        )
        .prop_map(Endpoint::Call),
    ]
}

fn timestamp_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000)
            .prop_map(|(s, n)| { json!(DateTime::from_timestamp(s, n).unwrap().to_rfc3339()) }),
        Just(json!("2024-02-30T00:00:00Z")),
        Just(json!("+275760-09-13T00:00:00Z")),
        json_value(),
    ]
}

/// A value for one field: usually of a plausible type, sometimes anything.
fn field(plausible: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop::option::weighted(0.7, prop_oneof![4 => plausible, 1 => json_value()])
}

fn text() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<String>().prop_map(Value::from),
        "[a-z0-9]{1,8}".prop_map(Value::from)
    ]
    .boxed()
}

fn context() -> BoxedStrategy<Value> {
    (
        field(
            prop_oneof![
                "https?://[a-z]{1,8}/[a-z]{0,5}(\\?utm_source=[a-z]{1,5}&utm_medium=[a-z]{0,5})?"
                    .prop_map(|url| json!({ "url": url })),
                json_value(),
            ]
            .boxed(),
        ),
        field(json!({ "source": "news", "name": "spring" }).boxed_just()),
        field(prop_oneof!["[0-9]{1,3}(\\.[0-9]{1,3}){3}", "[0-9a-f:]{2,20}"].prop_map(Value::from).boxed()),
        field(prop_oneof![
            Just(json!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36")),
            Just(json!("Googlebot/2.1 (+http://www.google.com/bot.html)")),
            any::<String>().prop_map(Value::from),
        ].boxed()),
    )
        .prop_map(|(page, campaign, ip, user_agent)| {
            let mut context = Map::new();
            for (name, value) in [("page", page), ("campaign", campaign), ("ip", ip), ("userAgent", user_agent)] {
                if let Some(value) = value {
                    context.insert(name.into(), value);
                }
            }
            Value::Object(context)
        })
        .boxed()
}

trait BoxedJust {
    fn boxed_just(self) -> BoxedStrategy<Value>;
}

impl BoxedJust for Value {
    fn boxed_just(self) -> BoxedStrategy<Value> {
        Just(self).boxed()
    }
}

/// An event object whose fields are usually of the right type and sometimes not.
fn event() -> impl Strategy<Value = Value> {
    (
        field(
            prop::sample::select(
                &[
                    "track", "identify", "page", "screen", "group", "alias", "nope",
                ][..],
            )
            .prop_map(Value::from)
            .boxed(),
        ),
        field(prop_oneof![text(), any::<i64>().prop_map(Value::from).boxed()].boxed()),
        field(text()),
        field(text()),
        field(text()),
        field(timestamp_text().boxed()),
        field(timestamp_text().boxed()),
        field(context()),
        field(json!({ "total": 42 }).boxed_just()),
        (field(text()), field(text())),
    )
        .prop_map(
            |(
                kind,
                user_id,
                anonymous_id,
                event,
                message_id,
                timestamp,
                sent_at,
                context,
                properties,
                (group_id, previous_id),
            )| {
                let mut object = Map::new();
                for (name, value) in [
                    ("type", kind),
                    ("userId", user_id),
                    ("anonymousId", anonymous_id),
                    ("event", event),
                    ("messageId", message_id),
                    ("timestamp", timestamp),
                    ("sentAt", sent_at),
                    ("context", context),
                    ("properties", properties),
                    ("groupId", group_id),
                    ("previousId", previous_id),
                ] {
                    if let Some(value) = value {
                        object.insert(name.into(), value);
                    }
                }
                Value::Object(object)
            },
        )
}

/// A request body, with the text of each event as sent.
fn body() -> impl Strategy<Value = (Endpoint, String, Vec<String>)> {
    prop_oneof![
        event().prop_map(|e| (
            Endpoint::Call(CallType::Track),
            e.to_string(),
            vec![e.to_string()]
        )),
        (
            prop::collection::vec(prop_oneof![8 => event(), 1 => json_value()], 0..6),
            field(context()),
            field(timestamp_text().boxed()),
        )
            .prop_map(|(batch, context, sent_at)| {
                let events = batch.iter().map(Value::to_string).collect();
                let mut body = json!({ "batch": batch });
                if let Some(context) = context {
                    body["context"] = context;
                }
                if let Some(sent_at) = sent_at {
                    body["sentAt"] = sent_at;
                }
                (Endpoint::Batch, body.to_string(), events)
            }),
    ]
}

fn edge(user_agent: &str) -> Edge<'_> {
    Edge {
        received_at: DateTime::<Utc>::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
        ip: Some([192, 0, 2, 1].into()),
        user_agent: Some(user_agent),
        live_channel: Some(LIVE_CHANNEL),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_on_any_bytes(
        endpoint in endpoint(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(request) = Request::parse(endpoint, &body) {
            let _ = request.into_envelopes("app", &edge("curl/8"));
        }
    }

    #[test]
    fn accepted_requests_keep_every_event_byte_exact_and_survive_the_bus(
        (endpoint, body, events) in body(),
        user_agent in any::<String>(),
    ) {
        let edge = edge(&user_agent);
        let Ok(request) = Request::parse(endpoint, body.as_bytes()) else {
            return Ok(());
        };
        match request.into_envelopes("app", &edge) {
            Ok(envelopes) => {
                prop_assert_eq!(envelopes.len(), events.len());
                for (envelope, sent) in envelopes.iter().zip(&events) {
                    prop_assert_eq!(&envelope.data, sent);
                    prop_assert_eq!(envelope.source, Source::Track);
                    prop_assert_eq!(envelope.channel.as_str(), LIVE_CHANNEL);
                    prop_assert_eq!(envelope.received_at, edge.received_at);
                    let fields = envelope.segment.as_ref().expect("Segment fields");
                    prop_assert!(fields.occurred_at <= envelope.received_at);
                    prop_assert!(envelope.user_id.is_some() || fields.anonymous_id.is_some());
                }
                prop_assert_eq!(decode_batch(&encode_batch(&envelopes)).unwrap(), envelopes);
            }
            Err(invalid) => {
                // Each refused event listed once, in order, by its index in the request.
                prop_assert!(!invalid.0.is_empty());
                let indices: Vec<usize> = invalid.0.iter().map(|(i, _)| *i).collect();
                prop_assert!(indices.windows(2).all(|w| w[0] < w[1]), "{:?}", indices);
                prop_assert!(indices.iter().all(|&i| i < events.len()));
                prop_assert!(!invalid.to_string().is_empty());
            }
        }
    }

    #[test]
    fn a_valid_track_batch_is_accepted_whole(
        names in prop::collection::vec("[A-Za-z ]{1,20}", 1..6),
        user in "[a-z0-9]{1,12}",
    ) {
        let batch: Vec<Value> = names
            .iter()
            .map(|name| json!({ "type": "track", "event": name, "userId": user }))
            .collect();
        let body = json!({ "batch": batch }).to_string();
        let envelopes = Request::parse(Endpoint::Batch, body.as_bytes())
            .unwrap()
            .into_envelopes("app", &edge("curl/8"))
            .unwrap();
        let got: Vec<&str> = envelopes.iter().map(|e| e.name.as_str()).collect();
        prop_assert_eq!(got, names.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
