//! The Segment Tracking API (PROTOCOL.md §5), in three steps of one module each:
//!
//! - `parse`: the body's shape and the request-wide limits ([`Request::parse`]);
//! - `validate`: each event's fields, refused with a precise reason by index ([`EventError`]);
//! - `enrich`: clock-skew correction ([`occurred_at`]), user-agent classification
//!   ([`classify_user_agent`], once per distinct agent per request), page and campaign fields.
//!
//! The entry points are [`Request::parse`]`(endpoint, body)` and
//! [`Request::into_envelopes`]`(app_id, &edge)`. What they produce, [`SegmentFields`], belongs to
//! the envelope ([`crate::envelope::analytics`]): this module depends on `envelope`, never the
//! other way round.
//!
//! Pure: the edge passes in what it knows besides the body ([`Edge`]: its clock, the client's
//! address and User-Agent header, the app's live channel) and gets envelopes back, or the
//! precise reason per event.
//!
//! **Bounded work.** A batch's `context` is merged into every one of its events, so it counts
//! as if it had been sent inside each: against [`MAX_EVENT_BYTES`] per event and, once per
//! event, against [`MAX_REQUEST_BYTES`] for the request. With at most [`MAX_BATCH_EVENTS`]
//! events, what one request expands into is never more than the body limit, whatever the body.

mod enrich;
mod parse;
mod validate;

use std::net::IpAddr;

use chrono::{DateTime, Utc};

pub use crate::envelope::analytics::{CallType, SegmentFields};
pub use enrich::{classify_user_agent, occurred_at};
pub use parse::{BodyError, Request};
pub use validate::{EventError, InvalidEvents};

use crate::envelope::{Envelope, EnvelopeIds, Source};

/// Largest event, in bytes of its JSON text plus, in a batch, the batch's `context` as sent.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest request body, in bytes after decompression; also the largest expanded size of a
/// request (its events' JSON text, each with the batch's `context` counted again).
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
/// Most events in one `/v1/batch` request.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Longest `messageId`, `userId`, `anonymousId`, `groupId` or `previousId`, in characters.
pub const MAX_ID_CHARS: usize = 255;
/// Longest track `event` name, in characters (it is the Pusher event name on the live channel).
pub const MAX_EVENT_NAME_CHARS: usize = 200;
/// The envelope channel of an analytics event that has no live channel. Channel names are never
/// empty, so no socket can subscribe to it: the event is stored and shown to nobody.
pub const NO_LIVE_CHANNEL: &str = "";

/// Which endpoint a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/{type}`: the body is one event of that type.
    Call(CallType),
    /// `/v1/batch`: `{"batch": [...], "context"?, "sentAt"?, "writeKey"?}`.
    Batch,
}

impl Endpoint {
    pub fn parse(path: &str) -> Option<Endpoint> {
        match path {
            "batch" => Some(Endpoint::Batch),
            other => CallType::parse(other).map(Endpoint::Call),
        }
    }
}

/// What the edge knows about a request besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Edge<'a> {
    /// When the edge accepted the request; every event of it shares this `received_at`.
    pub received_at: DateTime<Utc>,
    /// The client's address: the socket's, or `X-Forwarded-For` from a trusted proxy.
    pub ip: Option<IpAddr>,
    /// The request's `User-Agent` header.
    pub user_agent: Option<&'a str>,
    /// The app's channel for live copies of its analytics events; `None`: stored only
    /// (the envelopes' channel is [`NO_LIVE_CHANNEL`]).
    pub live_channel: Option<&'a str>,
}

/// The `messageId`s that can be read from a body that was refused as a whole ([`BodyError`]):
/// those of the events of its `batch`, when it has one; none otherwise.
pub fn readable_message_ids(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Batch<'_>>(body)
        .map(|b| {
            b.batch
                .into_iter()
                .filter_map(validate::message_id_of)
                .collect()
        })
        .unwrap_or_default()
}

/// One event's verdict: its envelope, or why it was refused; with the `messageId` it carries,
/// read even from a refused event when it can be (the WebSocket names events by it).
#[derive(Debug)]
pub struct Verdict {
    /// The event's own `messageId`: a non-empty string as sent; `None` when absent, empty, of
    /// another type, or unreadable (the event is not a JSON object).
    pub message_id: Option<String>,
    pub outcome: Result<Envelope, EventError>,
}

impl Request<'_> {
    /// Validates every event and turns each into an envelope for `app_id` on the edge's live
    /// channel. All or nothing: one invalid event refuses the request, and the error lists every
    /// invalid one. Each distinct user agent is classified once.
    pub fn into_envelopes(
        self,
        app_id: &str,
        edge: &Edge<'_>,
    ) -> Result<Vec<Envelope>, InvalidEvents> {
        let mut envelopes = Vec::with_capacity(self.events.len());
        let mut invalid = Vec::new();
        for (index, verdict) in self.verdicts(app_id, edge).into_iter().enumerate() {
            match verdict.outcome {
                Ok(envelope) => envelopes.push(envelope),
                Err(error) => invalid.push((index, error)),
            }
        }
        if invalid.is_empty() {
            Ok(envelopes)
        } else {
            Err(InvalidEvents(invalid))
        }
    }

    /// Each event's [`Verdict`], in order: the valid ones become envelopes whatever the others
    /// are (analytics over the WebSocket accepts and refuses per event).
    pub fn verdicts(self, app_id: &str, edge: &Edge<'_>) -> Vec<Verdict> {
        let channel = edge.live_channel.unwrap_or(NO_LIVE_CHANNEL);
        let mut agents = enrich::Agents::default();
        let mut ids = EnvelopeIds::at(edge.received_at);
        let mut verdicts = Vec::with_capacity(self.events.len());
        for raw in &self.events {
            let event = match validate::event(raw, &self) {
                Ok(event) => event,
                Err(error) => {
                    verdicts.push(Verdict {
                        message_id: validate::message_id_of(raw),
                        outcome: Err(error),
                    });
                    continue;
                }
            };
            let mut envelope = Envelope::new(
                app_id,
                Source::Track,
                channel,
                event.name(),
                raw.get().to_owned(),
            );
            (envelope.id, envelope.received_at) = (ids.next_id(), edge.received_at);
            envelope.user_id.clone_from(&event.user_id);
            let sent_id = event.message_id.clone();
            let message_id = sent_id.clone().unwrap_or_else(|| envelope.id.to_string());
            envelope.segment = Some(Box::new(enrich::fields(
                event,
                self.context.as_ref(),
                message_id,
                edge,
                &mut agents,
            )));
            verdicts.push(Verdict {
                message_id: sent_id,
                outcome: Ok(envelope),
            });
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::analytics::Campaign;
    use crate::envelope::{decode_batch, encode_batch};
    use serde_json::Value;

    pub(super) fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    pub(super) const RECEIVED: &str = "2025-03-01T12:00:00Z";

    pub(super) fn edge() -> Edge<'static> {
        Edge {
            received_at: at(RECEIVED),
            ip: Some("203.0.113.9".parse().unwrap()),
            user_agent: Some("curl/8.0"),
            live_channel: Some("private-analytics"),
        }
    }

    pub(super) fn envelopes(
        endpoint: Endpoint,
        body: &str,
    ) -> Result<Vec<Envelope>, InvalidEvents> {
        Request::parse(endpoint, body.as_bytes())
            .unwrap()
            .into_envelopes("app-1", &edge())
    }

    fn one(endpoint: Endpoint, body: &str) -> Envelope {
        let mut all = envelopes(endpoint, body).unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn fields(envelope: &Envelope) -> &SegmentFields {
        envelope.segment.as_deref().unwrap()
    }

    #[test]
    fn a_track_call_becomes_one_envelope() {
        let body = r#"{"type":"track","event":"Order Completed","userId":42,"anonymousId":"a-1",
            "messageId":"m-1","properties":{"total":9.5},"timestamp":"2025-03-01T10:59:00Z",
            "sentAt":"2025-03-01T10:59:30Z","writeKey":"k",
            "context":{"ip":"198.51.100.7","userAgent":"Googlebot/2.1 (+http://www.google.com/bot.html)",
            "page":{"url":"https://shop.example/cart?utm_source=news","path":"/cart",
            "referrer":"https://www.google.com/","search":"?utm_source=news&utm_medium=email&utm_campaign=spring","title":"Cart"}}}"#;
        let envelope = one(Endpoint::Call(CallType::Track), body);
        assert_eq!(envelope.app_id, "app-1");
        assert_eq!(envelope.source, Source::Track);
        assert_eq!(envelope.channel, "private-analytics");
        assert_eq!(envelope.name, "Order Completed");
        assert_eq!(envelope.data, body, "data is the event byte-exact");
        assert_eq!(envelope.user_id.as_deref(), Some("42"));
        assert_eq!(envelope.received_at, at(RECEIVED));
        let f = fields(&envelope);
        assert_eq!(f.call, CallType::Track);
        assert_eq!(f.message_id, "m-1");
        assert_eq!(f.anonymous_id.as_deref(), Some("a-1"));
        assert_eq!(f.original_timestamp, Some(at("2025-03-01T10:59:00Z")));
        assert_eq!(f.sent_at, Some(at("2025-03-01T10:59:30Z")));
        assert_eq!(f.occurred_at, at("2025-03-01T11:59:30Z"));
        assert_eq!(f.page.path.as_deref(), Some("/cart"));
        assert_eq!(f.page.title.as_deref(), Some("Cart"));
        assert_eq!(f.page.referrer.as_deref(), Some("https://www.google.com/"));
        assert_eq!(f.campaign.source.as_deref(), Some("news"));
        assert_eq!(f.campaign.medium.as_deref(), Some("email"));
        assert_eq!(f.campaign.name.as_deref(), Some("spring"));
        assert_eq!(f.client.ip, Some("198.51.100.7".parse().unwrap()));
        assert!(f.client.agent.is_bot);
        let context: Value = serde_json::from_str(f.context.as_deref().unwrap()).unwrap();
        assert_eq!(context["page"]["path"], "/cart");
        // Round trip through the bus codec.
        assert_eq!(
            decode_batch(&encode_batch(std::slice::from_ref(&envelope))).unwrap(),
            vec![envelope]
        );
    }

    #[test]
    fn edge_ip_and_user_agent_fill_in_and_message_id_is_generated() {
        let envelope = one(
            Endpoint::Call(CallType::Identify),
            r#"{"userId":"u","traits":{"plan":"pro"}}"#,
        );
        assert_eq!(envelope.name, "identify");
        let f = fields(&envelope);
        assert_eq!(f.message_id, envelope.id.to_string());
        assert_eq!(f.client.ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(f.client.user_agent.as_deref(), Some("curl/8.0"));
        assert_eq!(f.occurred_at, at(RECEIVED));
        assert_eq!(f.context, None);
        assert_eq!(f.campaign, Campaign::default());
    }

    #[test]
    fn batches_merge_context_and_sent_at_and_take_the_type_from_each_event() {
        let body = r#"{"writeKey":"wk","sentAt":"2025-03-01T11:00:00Z","context":{"locale":"fr","ip":"192.0.2.1"},
            "batch":[
              {"type":"page","anonymousId":"a","timestamp":"2025-03-01T10:59:00Z","properties":{"path":"/p","url":"https://x.example/p?utm_campaign=c1","title":"P"},"context":{"locale":"de","screen":{"width":9}}},
              {"type":"group","userId":"u","groupId":7},
              {"type":"alias","userId":"u","previousId":"a","sentAt":"2025-03-01T11:00:30Z","timestamp":"2025-03-01T11:00:30Z"},
              {"type":"screen","userId":"u","name":"Home","context":{"ip":null}}
            ]}"#;
        let request = Request::parse(Endpoint::Batch, body.as_bytes()).unwrap();
        assert_eq!(request.write_key.as_deref(), Some("wk"));
        let all = request.into_envelopes("app-1", &edge()).unwrap();
        let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["page", "group", "alias", "screen"]);
        let page = fields(&all[0]);
        assert_eq!(page.sent_at, Some(at("2025-03-01T11:00:00Z")));
        assert_eq!(page.occurred_at, at("2025-03-01T11:59:00Z"));
        assert_eq!(page.page.path.as_deref(), Some("/p"));
        assert_eq!(page.campaign.name.as_deref(), Some("c1"));
        assert_eq!(page.client.ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            page.context.as_deref(),
            Some(r#"{"ip":"192.0.2.1","locale":"de","screen":{"width":9}}"#),
            "the event's context wins, key by key"
        );
        let group = fields(&all[1]);
        assert_eq!(group.group_id.as_deref(), Some("7"));
        assert_eq!(
            group.context.as_deref(),
            Some(r#"{"ip":"192.0.2.1","locale":"fr"}"#),
            "the batch's context alone"
        );
        assert_eq!(fields(&all[2]).previous_id.as_deref(), Some("a"));
        assert_eq!(fields(&all[2]).occurred_at, at(RECEIVED));
        let screen = fields(&all[3]);
        assert_eq!(
            screen.client.ip,
            Some("203.0.113.9".parse().unwrap()),
            "an event's null ip overrides the batch's: the edge's address"
        );
        assert_eq!(
            screen.context.as_deref(),
            Some(r#"{"ip":null,"locale":"fr"}"#)
        );
        assert!(all.iter().all(|e| e.received_at == at(RECEIVED)));
    }

    #[test]
    fn verdicts_are_per_event_with_the_message_ids_as_sent() {
        let body = r#"{"batch":[
            {"type":"track","event":"ok","userId":"u","messageId":"m1"},
            {"type":"track","userId":"u","messageId":"m2"},
            {"type":"track","event":"no id","userId":"u"},
            "text",
            {"type":"page","anonymousId":"a","messageId":7},
            {"type":"identify","userId":"u","messageId":"m5"}
        ]}"#;
        let verdicts = Request::parse(Endpoint::Batch, body.as_bytes())
            .unwrap()
            .verdicts("app-1", &edge());
        let ids: Vec<Option<&str>> = verdicts.iter().map(|v| v.message_id.as_deref()).collect();
        assert_eq!(ids, [Some("m1"), Some("m2"), None, None, None, Some("m5")]);
        let outcomes: Vec<Result<&str, &EventError>> = verdicts
            .iter()
            .map(|v| v.outcome.as_ref().map(|e| e.name.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [
                Ok("ok"),
                Err(&EventError::MissingField("event")),
                Ok("no id"),
                Err(&EventError::NotAnObject),
                Err(&EventError::WrongType {
                    field: "messageId",
                    expected: "a string"
                }),
                Ok("identify"),
            ]
        );
        let accepted: Vec<&Envelope> = verdicts
            .iter()
            .filter_map(|v| v.outcome.as_ref().ok())
            .collect();
        // Stored with the generated id as messageId when none was sent, as over HTTP.
        assert_eq!(fields(accepted[1]).message_id, accepted[1].id.to_string());
        assert!(accepted.windows(2).all(|pair| pair[0].id < pair[1].id));
        for envelope in accepted {
            assert_eq!(envelope.received_at, at(RECEIVED));
            assert_eq!(crate::envelope::id_time(&envelope.id), Some(at(RECEIVED)));
        }
        // The same body over HTTP is refused as a whole, listing the same events.
        let all = envelopes(Endpoint::Batch, body).unwrap_err();
        let refused: Vec<usize> = all.0.iter().map(|(index, _)| *index).collect();
        assert_eq!(refused, [1, 3, 4]);
    }

    #[test]
    fn message_ids_of_a_refused_body() {
        let many: Vec<String> = (0..=MAX_BATCH_EVENTS)
            .map(|i| format!(r#"{{"type":"track","event":"e","userId":"u","messageId":"m{i}"}}"#))
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, many.join(","));
        assert!(Request::parse(Endpoint::Batch, body.as_bytes()).is_err());
        let ids = readable_message_ids(body.as_bytes());
        assert_eq!(ids.len(), MAX_BATCH_EVENTS + 1);
        assert_eq!(ids[7], "m7");
        for unreadable in [
            "not json",
            "{}",
            r#"{"batch":{}}"#,
            r#"[{"messageId":"m"}]"#,
        ] {
            assert!(
                readable_message_ids(unreadable.as_bytes()).is_empty(),
                "{unreadable}"
            );
        }
    }

    #[test]
    fn endpoints_and_call_types() {
        assert_eq!(Endpoint::parse("batch"), Some(Endpoint::Batch));
        for call in CallType::ALL {
            assert_eq!(Endpoint::parse(call.as_str()), Some(Endpoint::Call(call)));
        }
        assert_eq!(Endpoint::parse("import"), None);
        // The path decides a single call's type, whatever the body says.
        let envelope = one(
            Endpoint::Call(CallType::Page),
            r#"{"type":"track","anonymousId":"a"}"#,
        );
        assert_eq!(fields(&envelope).call, CallType::Page);
    }

    #[test]
    fn the_live_channel_is_the_edges_and_none_means_stored_only() {
        let body = br#"{"userId":"u","event":"e"}"#;
        let track = Endpoint::Call(CallType::Track);
        let on = |live_channel| {
            let edge = Edge {
                live_channel,
                ..edge()
            };
            let envelopes = Request::parse(track, body)
                .unwrap()
                .into_envelopes("app-1", &edge)
                .unwrap();
            envelopes[0].channel.clone()
        };
        assert_eq!(on(Some("private-staff")), "private-staff");
        assert_eq!(on(None), NO_LIVE_CHANNEL);
        assert!(crate::Channel::parse(NO_LIVE_CHANNEL).is_err());
    }

    #[test]
    fn each_distinct_user_agent_is_classified_once_per_request() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.105 Safari/537.36";
        let mut events: Vec<String> = (0..500)
            .map(|i| format!(r#"{{"type":"track","event":"e{i}","userId":"u"}}"#))
            .collect();
        events
            .push(r#"{"type":"page","userId":"u","context":{"userAgent":"Googlebot/2.1"}}"#.into());
        events
            .push(r#"{"type":"page","userId":"u","context":{"userAgent":"Googlebot/2.1"}}"#.into());
        let body = format!(
            r#"{{"batch":[{}],"context":{{"userAgent":"{chrome}"}}}}"#,
            events.join(",")
        );
        let runs = enrich::woothee_runs();
        let all = envelopes(Endpoint::Batch, &body).unwrap();
        assert_eq!(
            enrich::woothee_runs() - runs,
            2,
            "Chrome and Googlebot, once each"
        );
        assert_eq!(all.len(), 502);
        let agent = |i: usize| &fields(&all[i]).client.agent;
        assert!((0..500).all(|i| agent(i).browser.as_deref() == Some("Chrome")));
        assert!(agent(500).is_bot && agent(501).is_bot);
        // The next request classifies again: the memory is per request.
        envelopes(Endpoint::Batch, &body).unwrap();
        assert_eq!(enrich::woothee_runs() - runs, 4);
    }
}
