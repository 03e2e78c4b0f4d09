//! The Segment Tracking API (PROTOCOL.md §5): request bodies, per-event validation, clock-skew
//! correction, user-agent classification and the promoted fields of an analytics event.
//!
//! Pure: the edge passes in what it knows besides the body ([`Edge`]: its clock, the client's
//! address and User-Agent header) and gets envelopes back, or the precise reason per event.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::envelope::{Envelope, Source};

/// Every analytics event is also delivered live on this channel of its app.
pub const ANALYTICS_CHANNEL: &str = "private-analytics";
/// Largest event, in bytes of its JSON text.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest request body, in bytes after decompression.
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
/// Longest `messageId`, `userId`, `anonymousId`, `groupId` or `previousId`, in characters.
pub const MAX_ID_CHARS: usize = 255;
/// Longest track `event` name, in characters (it is the Pusher event name on the live channel).
pub const MAX_EVENT_NAME_CHARS: usize = 200;

/// The six Segment calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl CallType {
    pub const ALL: [CallType; 6] = [
        CallType::Track,
        CallType::Identify,
        CallType::Page,
        CallType::Screen,
        CallType::Group,
        CallType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Track => "track",
            CallType::Identify => "identify",
            CallType::Page => "page",
            CallType::Screen => "screen",
            CallType::Group => "group",
            CallType::Alias => "alias",
        }
    }

    pub fn parse(name: &str) -> Option<CallType> {
        CallType::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

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
}

/// What a Segment call carries beyond the envelope's common fields. `user_id` is the
/// envelope's; `data` is the event's JSON text as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentFields {
    #[serde(rename = "type")]
    pub call: CallType,
    /// The sender's dedup key; generated at the edge (the envelope id) when absent.
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// The client's `timestamp` (or `originalTimestamp`) as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<DateTime<Utc>>,
    /// The client's `sentAt` (the event's, else the batch's) as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When it happened, corrected for the client's clock skew ([`occurred_at`]).
    pub occurred_at: DateTime<Utc>,
    /// The event's `context` with the batch's merged in, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    #[serde(default)]
    pub page: Page,
    #[serde(default)]
    pub campaign: Campaign,
    #[serde(default)]
    pub client: Client,
}

/// `context.page` (for `page` calls, `properties` fills what `context.page` lacks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// UTM fields: `context.campaign`, else the `utm_*` parameters of the page's query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// `utm_campaign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Who sent it: address and user agent (`context.ip` / `context.userAgent` win over the
/// request's own), with the user agent classified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub agent: UserAgent,
}

/// A classified user agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAgent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceClass>,
    /// A known crawler or bot: flagged, never dropped.
    #[serde(default)]
    pub is_bot: bool,
}

/// Device classes, from woothee's categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// woothee `pc`.
    Desktop,
    /// woothee `smartphone` (tablets included) and `mobilephone` (feature phones).
    Mobile,
    /// woothee `appliance`: game consoles, TVs, e-readers.
    Appliance,
    /// woothee `crawler`.
    Bot,
    /// woothee `misc`: HTTP libraries, feed readers, …
    Other,
}

impl DeviceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Desktop => "desktop",
            DeviceClass::Mobile => "mobile",
            DeviceClass::Appliance => "appliance",
            DeviceClass::Bot => "bot",
            DeviceClass::Other => "other",
        }
    }
}

/// Classifies a user agent with woothee; what it cannot tell is `None`.
pub fn classify_user_agent(user_agent: &str) -> UserAgent {
    let Some(parsed) = woothee::parser::Parser::new().parse(user_agent) else {
        return UserAgent::default();
    };
    let known = |value: &str| (value != woothee::woothee::VALUE_UNKNOWN).then(|| value.to_owned());
    let device = match parsed.category {
        "pc" => Some(DeviceClass::Desktop),
        "smartphone" | "mobilephone" => Some(DeviceClass::Mobile),
        "appliance" => Some(DeviceClass::Appliance),
        "crawler" => Some(DeviceClass::Bot),
        "misc" => Some(DeviceClass::Other),
        _ => None,
    };
    UserAgent {
        browser: known(parsed.name),
        browser_version: known(parsed.version),
        os: known(parsed.os),
        os_version: known(&parsed.os_version),
        device,
        is_bot: device == Some(DeviceClass::Bot),
    }
}

/// Segment's clock-skew correction: the client's `timestamp` shifted by how far the client's
/// clock was off when it sent the event, `received_at − (sent_at − timestamp)`. Without
/// `sent_at` the timestamp is taken as is; without a timestamp it is `received_at`. The result
/// is clamped to `received_at`: nothing happens after the edge received it, so a timestamp in
/// the future (a fast clock, a bogus value) becomes `received_at`.
pub fn occurred_at(
    received_at: DateTime<Utc>,
    timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let client_time = match (timestamp, sent_at) {
        (Some(timestamp), Some(sent_at)) => {
            received_at.checked_sub_signed(sent_at.signed_duration_since(timestamp))
        }
        (Some(timestamp), None) => Some(timestamp),
        (None, _) => None,
    };
    client_time.map_or(received_at, |time| time.min(received_at))
}

/// A request body that is not a Tracking API request at all.
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
}

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

/// A parsed request body: its events (not yet validated) and the batch-level defaults.
#[derive(Debug)]
pub struct Request<'a> {
    /// `writeKey` from the body, when given.
    pub write_key: Option<String>,
    call: Option<CallType>,
    events: Vec<&'a RawValue>,
    context: Option<Map<String, Value>>,
    sent_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    #[serde(borrow, default)]
    batch: Option<&'a RawValue>,
    #[serde(default)]
    write_key: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    sent_at: Option<Value>,
}

impl<'a> Request<'a> {
    /// Parses the body sent to `endpoint`. Only the request's shape is checked here; the
    /// events are checked by [`Request::into_envelopes`].
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
        match endpoint {
            Endpoint::Call(call) => Ok(Request {
                write_key,
                call: Some(call),
                events: vec![whole],
                context: None,
                sent_at: None,
            }),
            Endpoint::Batch => {
                let events: Vec<&RawValue> = parsed
                    .batch
                    .and_then(|batch| serde_json::from_str(batch.get()).ok())
                    .ok_or(BodyError::NoBatch)?;
                if events.is_empty() {
                    return Err(BodyError::EmptyBatch);
                }
                let context = match parsed.context {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(context)) => Some(context),
                    Some(_) => {
                        return Err(BodyError::WrongType {
                            field: "context",
                            expected: "an object",
                        })
                    }
                };
                let sent_at = timestamp(parsed.sent_at.as_ref())
                    .map_err(|()| BodyError::BadTimestamp("sentAt"))?;
                Ok(Request {
                    write_key,
                    call: None,
                    events,
                    context,
                    sent_at,
                })
            }
        }
    }

    /// Validates every event and turns each into an envelope for `app_id` on
    /// [`ANALYTICS_CHANNEL`]. All or nothing: one invalid event refuses the request, and the
    /// error lists every invalid one.
    pub fn into_envelopes(
        self,
        app_id: &str,
        edge: &Edge<'_>,
    ) -> Result<Vec<Envelope>, InvalidEvents> {
        let mut envelopes = Vec::with_capacity(self.events.len());
        let mut invalid = Vec::new();
        for (index, raw) in self.events.iter().enumerate() {
            match self.envelope(raw, app_id, edge) {
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

    fn envelope(
        &self,
        raw: &RawValue,
        app_id: &str,
        edge: &Edge<'_>,
    ) -> Result<Envelope, EventError> {
        let text = raw.get();
        if text.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge {
                size: text.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        if !text.starts_with('{') {
            return Err(EventError::NotAnObject);
        }
        let event: Map<String, Value> =
            serde_json::from_str(text).map_err(|_| EventError::NotAnObject)?;
        let field = |name: &str| event.get(name).filter(|v| !v.is_null());

        let call = match self.call {
            Some(call) => call,
            None => match field("type") {
                None => return Err(EventError::MissingType),
                Some(Value::String(name)) => {
                    CallType::parse(name).ok_or(EventError::UnknownType)?
                }
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
        let name = match call {
            CallType::Track => match field("event") {
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
                Some(Value::String(name)) => name.as_str(),
                Some(_) => {
                    return Err(EventError::WrongType {
                        field: "event",
                        expected: "a string",
                    })
                }
            },
            other => other.as_str(),
        };
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
        for object in ["properties", "traits"] {
            if field(object).is_some_and(|v| !v.is_object()) {
                return Err(EventError::WrongType {
                    field: object,
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
            Some(value) => {
                timestamp(Some(value)).map_err(|()| EventError::BadTimestamp("sentAt"))?
            }
            None => self.sent_at,
        };
        let context = match field("context") {
            None => self.context.clone(),
            Some(Value::Object(own)) => {
                let mut merged = self.context.clone().unwrap_or_default();
                merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some(merged)
            }
            Some(_) => {
                return Err(EventError::WrongType {
                    field: "context",
                    expected: "an object",
                })
            }
        };
        let context_field = |name: &str| context.as_ref().and_then(|c| c.get(name));

        let mut page = page_of(context_field("page"));
        if call == CallType::Page {
            page.fill_from(field("properties"));
        }
        let campaign = campaign_of(context_field("campaign"), &page);
        let ip = context_field("ip")
            .and_then(Value::as_str)
            .and_then(|ip| ip.trim().parse().ok())
            .or(edge.ip);
        let user_agent = context_field("userAgent")
            .and_then(Value::as_str)
            .or(edge.user_agent)
            .filter(|ua| !ua.is_empty())
            .map(str::to_owned);
        let agent = user_agent
            .as_deref()
            .map(classify_user_agent)
            .unwrap_or_default();

        let mut envelope = Envelope::new(
            app_id,
            Source::Track,
            ANALYTICS_CHANNEL,
            name,
            text.to_owned(),
        );
        envelope.received_at = edge.received_at;
        envelope.user_id = user_id;
        envelope.segment = Some(Box::new(SegmentFields {
            call,
            message_id: message_id.unwrap_or_else(|| envelope.id.to_string()),
            anonymous_id,
            original_timestamp,
            sent_at,
            occurred_at: occurred_at(edge.received_at, original_timestamp, sent_at),
            context: context.map(|c| Value::Object(c).to_string()),
            group_id,
            previous_id,
            page,
            campaign,
            client: Client {
                ip,
                user_agent,
                agent,
            },
        }));
        Ok(envelope)
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
fn timestamp(value: Option<&Value>) -> Result<Option<DateTime<Utc>>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| ()),
        Some(_) => Err(()),
    }
}

/// A string field of an object, when it is a non-empty string.
fn text_of(object: Option<&Value>, name: &str) -> Option<String> {
    object
        .and_then(|o| o.get(name))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn page_of(page: Option<&Value>) -> Page {
    Page {
        url: text_of(page, "url"),
        path: text_of(page, "path"),
        referrer: text_of(page, "referrer"),
        search: text_of(page, "search"),
        title: text_of(page, "title"),
    }
}

impl Page {
    /// Fills the fields still missing from a `page` call's `properties` (analytics.js and the
    /// server libraries put url, path, referrer, search and title there).
    fn fill_from(&mut self, properties: Option<&Value>) {
        let from = page_of(properties);
        self.url = self.url.take().or(from.url);
        self.path = self.path.take().or(from.path);
        self.referrer = self.referrer.take().or(from.referrer);
        self.search = self.search.take().or(from.search);
        self.title = self.title.take().or(from.title);
    }
}

/// `context.campaign`, else the `utm_*` parameters of the page's search (or URL query).
fn campaign_of(campaign: Option<&Value>, page: &Page) -> Campaign {
    if campaign.is_some_and(Value::is_object) {
        return Campaign {
            source: text_of(campaign, "source"),
            medium: text_of(campaign, "medium"),
            name: text_of(campaign, "name"),
            term: text_of(campaign, "term"),
            content: text_of(campaign, "content"),
        };
    }
    let query = page.search.as_deref().or_else(|| {
        page.url
            .as_deref()
            .and_then(|url| url.split_once('?'))
            .map(|(_, query)| query)
    });
    let Some(query) = query else {
        return Campaign::default();
    };
    let query = query.trim_start_matches('?');
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let utm = |name: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Campaign {
        source: utm("utm_source"),
        medium: utm("utm_medium"),
        name: utm("utm_campaign"),
        term: utm("utm_term"),
        content: utm("utm_content"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode_batch, encode_batch};
    use chrono::TimeZone;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    const RECEIVED: &str = "2025-03-01T12:00:00Z";

    fn edge() -> Edge<'static> {
        Edge {
            received_at: at(RECEIVED),
            ip: Some("203.0.113.9".parse().unwrap()),
            user_agent: Some("curl/8.0"),
        }
    }

    fn envelopes(endpoint: Endpoint, body: &str) -> Result<Vec<Envelope>, InvalidEvents> {
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
    fn skew_correction_and_clamping() {
        let check = |timestamp: Option<&str>, sent_at: Option<&str>, expected: &str| {
            assert_eq!(
                occurred_at(at(RECEIVED), timestamp.map(at), sent_at.map(at)),
                at(expected),
                "{timestamp:?} {sent_at:?}"
            )
        };
        // Client clock 1 h behind: sent "10:59:30" for an event 30 s before sending.
        check(
            Some("2025-03-01T10:59:00Z"),
            Some("2025-03-01T10:59:30Z"),
            "2025-03-01T11:59:30Z",
        );
        // Client clock 1 day ahead: corrected back.
        check(
            Some("2025-03-02T11:58:00Z"),
            Some("2025-03-02T12:00:00Z"),
            "2025-03-01T11:58:00Z",
        );
        // No sentAt: the timestamp as is; a future one is clamped.
        check(Some("2025-02-01T00:00:00Z"), None, "2025-02-01T00:00:00Z");
        check(Some("2030-01-01T00:00:00Z"), None, RECEIVED);
        // Timestamp after sentAt (impossible): clamped.
        check(
            Some("2025-03-01T12:00:10Z"),
            Some("2025-03-01T12:00:00Z"),
            RECEIVED,
        );
        check(None, Some("2025-03-01T10:00:00Z"), RECEIVED);
        check(None, None, RECEIVED);
        // Offsets are honoured.
        check(
            Some("2025-03-01T13:00:00+02:00"),
            None,
            "2025-03-01T11:00:00Z",
        );
    }

    #[test]
    fn user_agents_are_classified() {
        let check = |ua: &str, browser: Option<&str>, os: Option<&str>, device, bot| {
            let agent = classify_user_agent(ua);
            assert_eq!(agent.browser.as_deref(), browser, "{ua}");
            assert_eq!(agent.os.as_deref(), os, "{ua}");
            assert_eq!(agent.device, device, "{ua}");
            assert_eq!(agent.is_bot, bot, "{ua}");
        };
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            Some("Chrome"),
            Some("Windows 10"),
            Some(DeviceClass::Desktop),
            false,
        );
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            Some("Safari"),
            Some("iPhone"),
            Some(DeviceClass::Mobile),
            false,
        );
        check(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            Some("Googlebot"),
            None,
            Some(DeviceClass::Bot),
            true,
        );
        check("", None, None, None, false);
        check("something nobody knows", None, None, None, false);
        let chrome = classify_user_agent(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.105 Safari/537.36",
        );
        assert_eq!(chrome.browser_version.as_deref(), Some("119.0.6045.105"));
        assert_eq!(chrome.os.as_deref(), Some("Linux"));
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
        assert_eq!(envelope.channel, ANALYTICS_CHANNEL);
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
              {"type":"page","anonymousId":"a","timestamp":"2025-03-01T10:59:00Z","properties":{"path":"/p","url":"https://x.example/p?utm_campaign=c1","title":"P"},"context":{"locale":"de"}},
              {"type":"group","userId":"u","groupId":7},
              {"type":"alias","userId":"u","previousId":"a","sentAt":"2025-03-01T11:00:30Z","timestamp":"2025-03-01T11:00:30Z"},
              {"type":"screen","userId":"u","name":"Home"}
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
        let context: Value = serde_json::from_str(page.context.as_deref().unwrap()).unwrap();
        assert_eq!(context["locale"], "de", "the event's context wins");
        assert_eq!(fields(&all[1]).group_id.as_deref(), Some("7"));
        assert_eq!(fields(&all[2]).previous_id.as_deref(), Some("a"));
        assert_eq!(fields(&all[2]).occurred_at, at(RECEIVED));
        assert!(all.iter().all(|e| e.received_at == at(RECEIVED)));
    }

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
              {big}
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
        ];
        assert_eq!(error.0, expected);
        assert!(error.too_large());
        let shown = error.to_string();
        assert!(
            shown.starts_with("12 invalid events: event 1: `event` is required"),
            "{shown}"
        );
        assert!(
            shown.contains("; event 4: userId or anonymousId is required"),
            "{shown}"
        );
    }

    #[test]
    fn bodies_that_are_not_requests() {
        let check = |endpoint, body: &str, expected: &str| {
            let error = Request::parse(endpoint, body.as_bytes()).unwrap_err();
            assert!(error.to_string().contains(expected), "{body}: {error}");
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
    fn envelopes_without_segment_fields_still_decode() {
        let old = r#"[{"id":"0190b3a0-0000-7000-8000-000000000000","app_id":"1","source":"api","channel":"c","name":"e","data":"{}","received_at":"2025-03-01T12:00:00Z"}]"#;
        let decoded = decode_batch(old.as_bytes()).unwrap();
        assert_eq!(decoded[0].segment, None);
        assert_eq!(
            decoded[0].received_at,
            Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
        );
    }
}
