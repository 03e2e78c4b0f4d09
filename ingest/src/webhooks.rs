//! The gateway's side of webhooks: an app's `[[apps.webhooks]]` ([`WebhookConfig`]) and
//! [`Webhooks`], the one entry point through which the gateway emits webhook events.
//!
//! Secrets never show in `Debug`: the URL is shown without credentials or query, the extra
//! headers by name only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bus::WebhookPublisher;
use protocol::webhook::{EventType, Filter, Queued, WebhookEvent};
use serde::{Deserialize, Serialize};

use crate::apps::Apps;

/// Emits webhook events: an event goes to the publisher only when a webhook of its app wants it
/// (type and channel prefix; the worker filters again per webhook), so an app without webhooks
/// costs a map lookup and nothing is published for it. Cluster-wide events (occupancy,
/// members) come in through the same [`Webhooks::emit`].
pub struct Webhooks {
    /// The filters of the apps that have webhooks.
    filters: HashMap<String, Vec<Filter>>,
    publisher: Option<WebhookPublisher>,
}

impl Webhooks {
    /// The apps' webhooks, published through `publisher` (`None` when no app has any).
    pub fn new(apps: &Apps, publisher: Option<WebhookPublisher>) -> Webhooks {
        let filters = apps
            .iter()
            .filter(|app| !app.webhooks.is_empty())
            .map(|app| {
                let filters = app.webhooks.iter().map(WebhookConfig::filter).collect();
                (app.id.clone(), filters)
            })
            .collect();
        Webhooks { filters, publisher }
    }

    /// Whether any app has a webhook (and so whether a publisher is needed).
    pub fn any(apps: &Apps) -> bool {
        apps.iter().any(|app| !app.webhooks.is_empty())
    }

    /// Whether some webhook of `app_id` wants events of `kind` on `channel`: callers check it
    /// before building an event.
    pub fn wants(&self, app_id: &str, kind: EventType, channel: &str) -> bool {
        self.publisher.is_some()
            && self
                .filters
                .get(app_id)
                .is_some_and(|filters| filters.iter().any(|f| f.wants(kind, channel)))
    }

    /// Hands `event` to the publisher when some webhook of `app_id` wants it.
    pub fn emit(&self, app_id: &str, event: WebhookEvent) {
        if !self.wants(app_id, event.event_type(), event.channel()) {
            return;
        }
        if let Some(publisher) = &self.publisher {
            publisher.send(Queued {
                app_id: app_id.to_owned(),
                event,
            });
        }
    }
}

/// One webhook of an app: where to POST, which events, and extra headers to send.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The events sent to it; all seven unless given.
    #[serde(default = "all_event_types")]
    pub event_types: Vec<EventType>,
    /// Only events of channels whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_prefix: Option<String>,
    /// Sent with every request (besides the Pusher headers, which they cannot replace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn all_event_types() -> Vec<EventType> {
    EventType::ALL.to_vec()
}

impl WebhookConfig {
    /// A webhook for every event type, without prefix or headers.
    pub fn new(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            event_types: all_event_types(),
            channel_prefix: None,
            headers: BTreeMap::new(),
        }
    }

    pub fn filter(&self) -> Filter {
        Filter {
            event_types: self.event_types.clone(),
            channel_prefix: self.channel_prefix.clone(),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &bus::redacted_endpoint(&self.url))
            .field("event_types", &self.event_types)
            .field("channel_prefix", &self.channel_prefix)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_every_event_type() {
        let config: WebhookConfig =
            serde_json::from_value(serde_json::json!({"url": "http://127.0.0.1:1/hook"})).unwrap();
        assert_eq!(config, WebhookConfig::new("http://127.0.0.1:1/hook"));
        assert_eq!(config.filter().event_types, EventType::ALL);
        let error = serde_json::from_value::<WebhookConfig>(serde_json::json!({
            "url": "http://h/", "event_types": ["channel_occupied", "channel_existence"]
        }))
        .unwrap_err();
        assert!(error.to_string().contains("channel_existence"), "{error}");
    }

    #[test]
    fn debug_never_shows_credentials_or_header_values() {
        let mut config = WebhookConfig::new("https://user:hunter2@hooks.example/in?token=hunter3");
        config
            .headers
            .insert("Authorization".into(), "Bearer hunter4".into());
        let shown = format!("{config:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("https://hooks.example/in"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");
    }
}
