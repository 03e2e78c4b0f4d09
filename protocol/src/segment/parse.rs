//! A request body's shape and the limits of the request as a whole: how many events, and what
//! they expand into once the batch's `context` is merged into each of them.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use thiserror::Error;

use super::validate::timestamp;
use super::{CallType, Endpoint, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_REQUEST_BYTES};

/// A request body that is not a Tracking API request at all, or too big a one.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("`batch` must be an array of events")]
    NoBatch,
    #[error("`batch` is empty")]
    EmptyBatch,
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`{0}` is not an ISO-8601 date-time with a time zone")]
    BadTimestamp(&'static str),
    #[error("{count} events in the batch; at most {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error(
        "the batch `context` is {size} bytes; it is merged into every event, and an event \
         with it must fit in {max} bytes"
    )]
    ContextTooLarge { size: usize, max: usize },
    #[error(
        "the batch is {size} bytes with its `context` counted in each of its {events} events; \
         the limit is {max}"
    )]
    ExpandedTooLarge {
        size: usize,
        events: usize,
        max: usize,
    },
}

impl BodyError {
    /// True when the request is refused for its size (413), not its shape.
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            BodyError::TooManyEvents { .. }
                | BodyError::ContextTooLarge { .. }
                | BodyError::ExpandedTooLarge { .. }
        )
    }
}

/// A parsed request body: its events (not yet validated) and the batch-level defaults.
#[derive(Debug)]
pub struct Request<'a> {
    /// `writeKey` from the body, when given.
    pub write_key: Option<String>,
    /// The endpoint's call type; `None` for a batch, whose events name their own.
    pub(super) call: Option<CallType>,
    pub(super) events: Vec<&'a RawValue>,
    pub(super) context: Option<BatchContext>,
    pub(super) sent_at: Option<DateTime<Utc>>,
}

/// A batch's `context`, parsed once for all its events.
#[derive(Debug)]
pub(super) struct BatchContext {
    pub(super) fields: Map<String, Value>,
    /// Its JSON text as sent, in bytes: what it adds to the size of each event.
    pub(super) sent_bytes: usize,
    /// Its compact JSON text: the stored `context` of an event that has none of its own.
    pub(super) text: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    #[serde(borrow, default)]
    batch: Option<&'a RawValue>,
    #[serde(default)]
    write_key: Option<Value>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(default)]
    sent_at: Option<Value>,
}

impl<'a> Request<'a> {
    /// Parses the body sent to `endpoint`. The request's shape and size are checked here (a
    /// batch: at most [`MAX_BATCH_EVENTS`] events, its `context` counted in each of them within
    /// [`MAX_REQUEST_BYTES`]); the events themselves by [`Request::into_envelopes`].
    pub fn parse(endpoint: Endpoint, body: &'a [u8]) -> Result<Request<'a>, BodyError> {
        let whole: &RawValue = serde_json::from_slice(body).map_err(BodyError::NotJson)?;
        if !whole.get().starts_with('{') {
            return Err(BodyError::NotAnObject);
        }
        let parsed: Body = serde_json::from_str(whole.get()).map_err(BodyError::NotJson)?;
        let write_key = match parsed.write_key {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) => Some(key),
            Some(_) => {
                return Err(BodyError::WrongType {
                    field: "writeKey",
                    expected: "a string",
                })
            }
        };
        if let Endpoint::Call(call) = endpoint {
            return Ok(Request {
                write_key,
                call: Some(call),
                events: vec![whole],
                context: None,
                sent_at: None,
            });
        }
        let events: Vec<&RawValue> = parsed
            .batch
            .and_then(|batch| serde_json::from_str(batch.get()).ok())
            .ok_or(BodyError::NoBatch)?;
        if events.is_empty() {
            return Err(BodyError::EmptyBatch);
        }
        if events.len() > MAX_BATCH_EVENTS {
            return Err(BodyError::TooManyEvents {
                count: events.len(),
                max: MAX_BATCH_EVENTS,
            });
        }
        let context = parsed
            .context
            .map(|raw| batch_context(raw, &events))
            .transpose()?
            .flatten();
        let sent_at =
            timestamp(parsed.sent_at.as_ref()).map_err(|()| BodyError::BadTimestamp("sentAt"))?;
        Ok(Request {
            write_key,
            call: None,
            events,
            context,
            sent_at,
        })
    }

    /// An event's size: its JSON text plus the batch's `context` as sent, which is merged into it.
    pub(super) fn size_of(&self, event: &RawValue) -> usize {
        event.get().len() + self.context.as_ref().map_or(0, |c| c.sent_bytes)
    }
}

/// Checks a batch's `context` against the limits before it is parsed: as if it had been sent
/// inside every event. `None` when it is `null`.
fn batch_context(raw: &RawValue, events: &[&RawValue]) -> Result<Option<BatchContext>, BodyError> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('{') {
        return Err(BodyError::WrongType {
            field: "context",
            expected: "an object",
        });
    }
    let sent_bytes = text.len();
    if sent_bytes >= MAX_EVENT_BYTES {
        return Err(BodyError::ContextTooLarge {
            size: sent_bytes,
            max: MAX_EVENT_BYTES,
        });
    }
    let expanded: usize = events.iter().map(|e| e.get().len() + sent_bytes).sum();
    if expanded > MAX_REQUEST_BYTES {
        return Err(BodyError::ExpandedTooLarge {
            size: expanded,
            events: events.len(),
            max: MAX_REQUEST_BYTES,
        });
    }
    let fields: Map<String, Value> = serde_json::from_str(text).map_err(BodyError::NotJson)?;
    let text = serde_json::to_string(&fields).expect("a JSON object always serializes");
    Ok(Some(BatchContext {
        fields,
        sent_bytes,
        text,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(endpoint: Endpoint, body: &str) -> BodyError {
        Request::parse(endpoint, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn bodies_that_are_not_requests() {
        let check = |endpoint, body: &str, expected: &str| {
            let error = refused(endpoint, body);
            assert!(error.to_string().contains(expected), "{body}: {error}");
            assert!(!error.too_large(), "{body}");
        };
        let track = Endpoint::Call(CallType::Track);
        check(track, "", "not JSON");
        check(track, "{\"a\":", "not JSON");
        check(track, "[1]", "JSON object");
        check(track, "{\"writeKey\":1}", "`writeKey` must be a string");
        check(Endpoint::Batch, "{}", "`batch` must be an array");
        check(
            Endpoint::Batch,
            "{\"batch\":{}}",
            "`batch` must be an array",
        );
        check(Endpoint::Batch, "{\"batch\":[]}", "`batch` is empty");
        check(
            Endpoint::Batch,
            "{\"batch\":[{}],\"context\":[]}",
            "`context` must be an object",
        );
        check(
            Endpoint::Batch,
            "{\"batch\":[{}],\"sentAt\":\"soon\"}",
            "`sentAt` is not",
        );
        // A single call's own `context` is its business (checked per event), not the body's.
        assert!(Request::parse(track, b"{\"context\":[]}").is_ok());
        assert!(
            Request::parse(Endpoint::Batch, b"{\"batch\":[{}],\"context\":null}")
                .unwrap()
                .context
                .is_none()
        );
    }

    fn batch(events: usize, event: &str, context: Option<&str>) -> String {
        let events = vec![event; events].join(",");
        match context {
            Some(context) => format!(r#"{{"batch":[{events}],"context":{context}}}"#),
            None => format!(r#"{{"batch":[{events}]}}"#),
        }
    }

    #[test]
    fn at_most_max_batch_events() {
        let event = r#"{"type":"track","event":"e","userId":"u"}"#;
        let full = batch(MAX_BATCH_EVENTS, event, None);
        assert_eq!(
            Request::parse(Endpoint::Batch, full.as_bytes())
                .unwrap()
                .events
                .len(),
            MAX_BATCH_EVENTS
        );
        let error = refused(Endpoint::Batch, &batch(MAX_BATCH_EVENTS + 1, event, None));
        assert!(matches!(
            error,
            BodyError::TooManyEvents { count, max: MAX_BATCH_EVENTS } if count == MAX_BATCH_EVENTS + 1
        ));
        assert!(error.too_large());
        assert_eq!(error.to_string(), "1001 events in the batch; at most 1000");
    }

    /// A `context` object of exactly `bytes` bytes of JSON text.
    fn context_of(bytes: usize) -> String {
        let padding = bytes - r#"{"p":""}"#.len();
        format!(r#"{{"p":"{}"}}"#, "x".repeat(padding))
    }

    #[test]
    fn the_batch_context_counts_in_every_event() {
        let event = r#"{"type":"track","event":"e","userId":"u"}"#;
        // The issue's attack: a 380 KB context and 1,500 tiny events (inside the body limit).
        let attack = batch(1500, event, Some(&context_of(380_000)));
        assert!(attack.len() < MAX_REQUEST_BYTES);
        assert!(refused(Endpoint::Batch, &attack).too_large());
        // Within the event count, the context alone cannot fit in an event.
        let error = refused(
            Endpoint::Batch,
            &batch(10, event, Some(&context_of(380_000))),
        );
        assert!(matches!(
            error,
            BodyError::ContextTooLarge {
                size: 380_000,
                max: MAX_EVENT_BYTES
            }
        ));
        assert!(error.too_large());
        let largest = context_of(MAX_EVENT_BYTES - 1);
        assert!(refused(
            Endpoint::Batch,
            &batch(1, event, Some(&context_of(MAX_EVENT_BYTES)))
        )
        .too_large());
        // Counted once per event against the request limit: 500 KB of expanded events at most.
        let per_event = event.len() + 20_000;
        let fit = MAX_REQUEST_BYTES / per_event;
        let context = context_of(20_000);
        let request = batch(fit, event, Some(&context));
        let parsed = Request::parse(Endpoint::Batch, request.as_bytes()).unwrap();
        assert_eq!(parsed.size_of(parsed.events[0]), per_event);
        assert_eq!(parsed.context.as_ref().unwrap().text, context);
        let error = refused(Endpoint::Batch, &batch(fit + 1, event, Some(&context)));
        let BodyError::ExpandedTooLarge { size, events, max } = error else {
            panic!("expected ExpandedTooLarge, got {error}");
        };
        assert_eq!(
            (size, events, max),
            ((fit + 1) * per_event, fit + 1, MAX_REQUEST_BYTES)
        );
        // A context that leaves one byte for the event is accepted here (its events are then
        // refused one by one for their size).
        assert!(
            Request::parse(Endpoint::Batch, batch(1, event, Some(&largest)).as_bytes()).is_ok()
        );
    }
}
