//! What an analytics (Segment) event carries on the bus beyond the envelope's common fields:
//! the call type, the dedup key, the corrected time, the merged `context` and the promoted
//! page, campaign and client fields. Produced by [`crate::segment`], stored by the worker.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// When it happened, corrected for the client's clock skew
    /// ([`crate::segment::occurred_at`]).
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
