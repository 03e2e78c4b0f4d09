//! One event's fields: what each call requires, the types and lengths of ids and names, the
//! timestamps, and the event's size with the batch's `context` merged in.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use thiserror::Error;

use super::{CallType, Request, MAX_EVENT_BYTES, MAX_EVENT_NAME_CHARS, MAX_ID_CHARS};

/// Why one event was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("event is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("`type` is required in a batch")]
    MissingType,
    #[error("`type` must be one of track, identify, page, screen, group, alias")]
    UnknownType,
    #[error("userId or anonymousId is required")]
    MissingIdentity,
    #[error("`{0}` is required for this call")]
    MissingField(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`{field}` is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("`{0}` is not an ISO-8601 date-time with a time zone")]
    BadTimestamp(&'static str),
}

/// The refused events of a request, by index (0 for a single call), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvents(pub Vec<(usize, EventError)>);

impl InvalidEvents {
    /// True when some event is refused only for its size.
    pub fn too_large(&self) -> bool {
        self.0
            .iter()
            .any(|(_, error)| matches!(error, EventError::TooLarge { .. }))
    }
}

impl fmt::Display for InvalidEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "{count} invalid event{}",
            if count == 1 { "" } else { "s" }
        )?;
        for (i, (index, error)) in self.0.iter().enumerate() {
            write!(
                f,
                "{} event {index}: {error}",
                if i == 0 { ":" } else { ";" }
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidEvents {}

/// An event that passed validation: its parsed object and the fields read from it, with the
/// batch's defaults (`sentAt`) applied.
pub(super) struct ValidEvent {
    pub(super) object: Map<String, Value>,
    pub(super) call: CallType,
    pub(super) user_id: Option<String>,
    pub(super) anonymous_id: Option<String>,
    pub(super) message_id: Option<String>,
    pub(super) group_id: Option<String>,
    pub(super) previous_id: Option<String>,
    pub(super) original_timestamp: Option<DateTime<Utc>>,
    pub(super) sent_at: Option<DateTime<Utc>>,
}

impl ValidEvent {
    /// A field that is present and not `null`.
    pub(super) fn field(&self, name: &str) -> Option<&Value> {
        field(&self.object, name)
    }

    /// The event's own `context` (an object, when present).
    pub(super) fn context(&self) -> Option<&Map<String, Value>> {
        self.field("context").and_then(Value::as_object)
    }

    /// The envelope's name: the track event's name, else the call type.
    pub(super) fn name(&self) -> &str {
        match (self.call, self.field("event")) {
            (CallType::Track, Some(Value::String(name))) => name,
            (call, _) => call.as_str(),
        }
    }
}

fn field<'o>(object: &'o Map<String, Value>, name: &str) -> Option<&'o Value> {
    object.get(name).filter(|v| !v.is_null())
}

/// Validates one event of `request`.
pub(super) fn event(raw: &RawValue, request: &Request<'_>) -> Result<ValidEvent, EventError> {
    let text = raw.get();
    let size = request.size_of(raw);
    if size > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge {
            size,
            max: MAX_EVENT_BYTES,
        });
    }
    if !text.starts_with('{') {
        return Err(EventError::NotAnObject);
    }
    let object: Map<String, Value> =
        serde_json::from_str(text).map_err(|_| EventError::NotAnObject)?;
    let field = |name: &str| field(&object, name);

    let call = match request.call {
        Some(call) => call,
        None => match field("type") {
            None => return Err(EventError::MissingType),
            Some(Value::String(name)) => CallType::parse(name).ok_or(EventError::UnknownType)?,
            Some(_) => return Err(EventError::UnknownType),
        },
    };
    let user_id = id(field("userId"), "userId")?;
    let anonymous_id = id(field("anonymousId"), "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(EventError::MissingIdentity);
    }
    let message_id = match field("messageId") {
        None => None,
        Some(Value::String(id)) if id.is_empty() => None,
        Some(Value::String(id)) if id.chars().count() > MAX_ID_CHARS => {
            return Err(EventError::TooLong {
                field: "messageId",
                max: MAX_ID_CHARS,
            })
        }
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Err(EventError::WrongType {
                field: "messageId",
                expected: "a string",
            })
        }
    };
    if call == CallType::Track {
        match field("event") {
            None => return Err(EventError::MissingField("event")),
            Some(Value::String(name)) if name.is_empty() => {
                return Err(EventError::MissingField("event"))
            }
            Some(Value::String(name)) if name.chars().count() > MAX_EVENT_NAME_CHARS => {
                return Err(EventError::TooLong {
                    field: "event",
                    max: MAX_EVENT_NAME_CHARS,
                })
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(EventError::WrongType {
                    field: "event",
                    expected: "a string",
                })
            }
        }
    }
    let group_id = id(field("groupId"), "groupId")?;
    if call == CallType::Group && group_id.is_none() {
        return Err(EventError::MissingField("groupId"));
    }
    let previous_id = id(field("previousId"), "previousId")?;
    if call == CallType::Alias {
        if previous_id.is_none() {
            return Err(EventError::MissingField("previousId"));
        }
        if user_id.is_none() {
            return Err(EventError::MissingField("userId"));
        }
    }
    for name in ["properties", "traits", "context"] {
        if field(name).is_some_and(|v| !v.is_object()) {
            return Err(EventError::WrongType {
                field: name,
                expected: "an object",
            });
        }
    }
    let original_timestamp = match field("timestamp") {
        Some(value) => {
            timestamp(Some(value)).map_err(|()| EventError::BadTimestamp("timestamp"))?
        }
        None => timestamp(field("originalTimestamp"))
            .map_err(|()| EventError::BadTimestamp("originalTimestamp"))?,
    };
    let sent_at = match field("sentAt") {
        Some(value) => timestamp(Some(value)).map_err(|()| EventError::BadTimestamp("sentAt"))?,
        None => request.sent_at,
    };
    Ok(ValidEvent {
        object,
        call,
        user_id,
        anonymous_id,
        message_id,
        group_id,
        previous_id,
        original_timestamp,
        sent_at,
    })
}

/// The `messageId` of an event that may be invalid: a non-empty string, when the event is a JSON
/// object that has one.
pub(super) fn message_id_of(raw: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "messageId", default)]
        message_id: Option<Value>,
    }
    if !raw.get().starts_with('{') {
        return None;
    }
    match serde_json::from_str::<Id>(raw.get()).ok()?.message_id? {
        Value::String(id) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// An id field: a non-empty string or a number (kept as its decimal text); `None` when absent
/// or empty.
fn id(value: Option<&Value>, field: &'static str) -> Result<Option<String>, EventError> {
    let text = match value {
        None => return Ok(None),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(_) => {
            return Err(EventError::WrongType {
                field,
                expected: "a string or a number",
            })
        }
    };
    if text.is_empty() {
        Ok(None)
    } else if text.chars().count() > MAX_ID_CHARS {
        Err(EventError::TooLong {
            field,
            max: MAX_ID_CHARS,
        })
    } else {
        Ok(Some(text))
    }
}

/// An RFC 3339 date-time (what JSON-serialized JavaScript dates are); `Err` when present but
/// not one.
pub(super) fn timestamp(value: Option<&Value>) -> Result<Option<DateTime<Utc>>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| ()),
        Some(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::envelopes;
    use super::super::Endpoint;
    use super::*;

    #[test]
    fn invalid_events_are_listed_by_index() {
        let big = format!(
            r#"{{"type":"track","event":"e","userId":"u","properties":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_EVENT_BYTES)
        );
        let body = format!(
            r#"{{"batch":[
              {{"type":"track","event":"ok","userId":"u"}},
              {{"type":"track","userId":"u"}},
              {{"event":"no type","userId":"u"}},
              {{"type":"nope","userId":"u"}},
              {{"type":"track","event":"e"}},
              {{"type":"group","userId":"u"}},
              {{"type":"alias","anonymousId":"a","previousId":"p"}},
              {{"type":"track","event":"e","userId":"u","timestamp":"yesterday"}},
              {{"type":"track","event":"e","userId":{{"id":1}}}},
              {{"type":"identify","userId":"u","traits":[1]}},
              {{"type":"track","event":"{}","userId":"u"}},
              "text",
              {big},
              {{"type":"page","userId":"u","context":"web"}}
            ]}}"#,
            "n".repeat(MAX_EVENT_NAME_CHARS + 1)
        );
        let error = envelopes(Endpoint::Batch, &body).unwrap_err();
        let expected = vec![
            (1, EventError::MissingField("event")),
            (2, EventError::MissingType),
            (3, EventError::UnknownType),
            (4, EventError::MissingIdentity),
            (5, EventError::MissingField("groupId")),
            (6, EventError::MissingField("userId")),
            (7, EventError::BadTimestamp("timestamp")),
            (
                8,
                EventError::WrongType {
                    field: "userId",
                    expected: "a string or a number",
                },
            ),
            (
                9,
                EventError::WrongType {
                    field: "traits",
                    expected: "an object",
                },
            ),
            (
                10,
                EventError::TooLong {
                    field: "event",
                    max: MAX_EVENT_NAME_CHARS,
                },
            ),
            (11, EventError::NotAnObject),
            (
                12,
                EventError::TooLarge {
                    size: big.len(),
                    max: MAX_EVENT_BYTES,
                },
            ),
            (
                13,
                EventError::WrongType {
                    field: "context",
                    expected: "an object",
                },
            ),
        ];
        assert_eq!(error.0, expected);
        assert!(error.too_large());
        let shown = error.to_string();
        assert!(
            shown.starts_with("13 invalid events: event 1: `event` is required"),
            "{shown}"
        );
        assert!(
            shown.contains("; event 4: userId or anonymousId is required"),
            "{shown}"
        );
    }

    #[test]
    fn an_event_is_measured_with_the_batch_context_merged_in() {
        let context = format!(r#"{{"p":"{}"}}"#, "x".repeat(20_000));
        let small = r#"{"type":"track","event":"e","userId":"u"}"#;
        // A track event of exactly `bytes` bytes.
        let event_of = |bytes: usize| {
            let frame = r#"{"type":"track","event":"e","userId":"u","properties":{"x":""}}"#;
            format!(
                r#"{{"type":"track","event":"e","userId":"u","properties":{{"x":"{}"}}}}"#,
                "a".repeat(bytes - frame.len())
            )
        };
        let fits = event_of(MAX_EVENT_BYTES - context.len());
        let over = event_of(MAX_EVENT_BYTES - context.len() + 1);
        assert_eq!(fits.len() + context.len(), MAX_EVENT_BYTES);
        assert!(over.len() + context.len() > MAX_EVENT_BYTES);
        assert!(over.len() < MAX_EVENT_BYTES, "under the limit on its own");
        let body = format!(r#"{{"batch":[{small},{fits},{over}],"context":{context}}}"#);
        let error = envelopes(Endpoint::Batch, &body).unwrap_err();
        assert_eq!(
            error.0,
            vec![(
                2,
                EventError::TooLarge {
                    size: over.len() + context.len(),
                    max: MAX_EVENT_BYTES
                }
            )]
        );
        // Without the batch context, the same events are accepted.
        let body = format!(r#"{{"batch":[{small},{fits},{over}]}}"#);
        assert_eq!(envelopes(Endpoint::Batch, &body).unwrap().len(), 3);
    }
}
