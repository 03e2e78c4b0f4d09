//! The apps this gateway serves, looked up by id (HTTP API) or key (WebSocket, Segment).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use protocol::{Channel, ChannelError, ChannelKind};
use serde::{Deserialize, Serialize};

use crate::webhooks::WebhookConfig;

/// One tenant: credentials, switches and limits. Its secret never appears in `Debug` output or
/// logs.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// A disabled app's connections are refused with 4003 and its API calls with 403.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Accept `client-*` events from connections (off unless enabled, as on Pusher).
    #[serde(default)]
    pub client_events: bool,
    /// Send `pusher_internal:subscription_count` on non-presence channels.
    #[serde(default)]
    pub subscription_count: bool,
    /// Most concurrent connections across the cluster (4004 beyond); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Where live copies of the app's Segment events go (`off`: stored only). Client events
    /// into it are refused.
    #[serde(default)]
    pub analytics_channel: AnalyticsChannel,
    #[serde(default)]
    pub limits: Limits,
    /// Where the app's webhooks are sent (`[[apps.webhooks]]`); none unless configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

/// The channel an app's Segment events are copied to live, in the config `"off"` or a
/// `private-` channel name. They carry users' ids, traits and addresses, so only sockets the
/// app's own auth endpoint signed for that channel can read it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum AnalyticsChannel {
    /// Segment events are stored only.
    Off,
    /// A `private-` channel (not `private-encrypted-`: the server cannot encrypt).
    Channel(String),
}

/// The analytics channel of an app that does not name one.
pub const DEFAULT_ANALYTICS_CHANNEL: &str = "private-analytics";

impl AnalyticsChannel {
    /// The channel's name; `None` when off.
    pub fn name(&self) -> Option<&str> {
        match self {
            AnalyticsChannel::Off => None,
            AnalyticsChannel::Channel(name) => Some(name),
        }
    }

    /// True when `channel` is this app's analytics channel.
    pub fn is(&self, channel: &str) -> bool {
        self.name() == Some(channel)
    }
}

impl Default for AnalyticsChannel {
    fn default() -> Self {
        AnalyticsChannel::Channel(DEFAULT_ANALYTICS_CHANNEL.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyticsChannelError {
    #[error("analytics_channel {name:?} is not a channel name: {source}")]
    Invalid {
        name: String,
        #[source]
        source: ChannelError,
    },
    #[error(
        "analytics_channel {0:?} must be \"off\" or a private- channel (not private-encrypted-)"
    )]
    NotPrivate(String),
}

impl TryFrom<String> for AnalyticsChannel {
    type Error = AnalyticsChannelError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if name == "off" {
            return Ok(AnalyticsChannel::Off);
        }
        match Channel::parse(&name) {
            Ok(channel) if channel.kind == ChannelKind::Private => {}
            Ok(_) => return Err(AnalyticsChannelError::NotPrivate(name)),
            Err(source) => return Err(AnalyticsChannelError::Invalid { name, source }),
        }
        Ok(AnalyticsChannel::Channel(name))
    }
}

impl From<AnalyticsChannel> for String {
    fn from(channel: AnalyticsChannel) -> String {
        match channel {
            AnalyticsChannel::Off => "off".to_owned(),
            AnalyticsChannel::Channel(name) => name,
        }
    }
}

fn yes() -> bool {
    true
}

/// Per-app limits; the defaults are Pusher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_event_data_bytes: usize,
    pub max_channels_per_trigger: usize,
    pub max_batch_events: usize,
    pub max_presence_members: usize,
    pub client_events_per_second: u32,
    /// `switchboard:track` batches one connection may send per second (a token bucket, burst
    /// the same); 0: analytics over the WebSocket are off for the app.
    pub track_batches_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_data_bytes: 10 * 1024,
            max_channels_per_trigger: 100,
            max_batch_events: 10,
            max_presence_members: 100,
            client_events_per_second: 10,
            track_batches_per_second: 20,
        }
    }
}

impl App {
    /// An enabled app with the given credentials and default switches and limits.
    pub fn new(id: &str, key: &str, secret: &str) -> App {
        App {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: false,
            subscription_count: false,
            max_connections: None,
            analytics_channel: AnalyticsChannel::default(),
            limits: Limits::default(),
            webhooks: Vec::new(),
        }
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("client_events", &self.client_events)
            .field("subscription_count", &self.subscription_count)
            .field("max_connections", &self.max_connections)
            .field("analytics_channel", &self.analytics_channel)
            .field("limits", &self.limits)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppsError {
    #[error("no app is configured")]
    Empty,
    #[error("app id {0:?} is configured twice")]
    DuplicateId(String),
    #[error("app key {0:?} is configured twice")]
    DuplicateKey(String),
    #[error("app {0:?} has an empty id, key or secret")]
    EmptyField(String),
}

#[derive(Debug, Default)]
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    pub fn new(apps: Vec<App>) -> Result<Apps, AppsError> {
        if apps.is_empty() {
            return Err(AppsError::Empty);
        }
        let mut index = Apps::default();
        for app in apps {
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return Err(AppsError::EmptyField(app.id));
            }
            let app = Arc::new(app);
            if index.by_id.insert(app.id.clone(), app.clone()).is_some() {
                return Err(AppsError::DuplicateId(app.id.clone()));
            }
            if index.by_key.insert(app.key.clone(), app.clone()).is_some() {
                return Err(AppsError::DuplicateKey(app.key.clone()));
            }
        }
        Ok(index)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    /// Every app, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str) -> App {
        App::new(id, key, "s3cr3t")
    }

    #[test]
    fn lookups_and_validation() {
        let apps = Apps::new(vec![app("1", "k1"), app("2", "k2")]).unwrap();
        assert_eq!(apps.by_id("2").unwrap().key, "k2");
        assert_eq!(apps.by_key("k1").unwrap().id, "1");
        assert!(apps.by_id("k1").is_none());
        assert_eq!(Apps::new(vec![]).unwrap_err(), AppsError::Empty);
        assert_eq!(
            Apps::new(vec![app("1", "a"), app("1", "b")]).unwrap_err(),
            AppsError::DuplicateId("1".into())
        );
        assert_eq!(
            Apps::new(vec![app("1", "a"), app("2", "a")]).unwrap_err(),
            AppsError::DuplicateKey("a".into())
        );
    }

    #[test]
    fn analytics_channel_is_off_or_private() {
        let parse = |name: &str| AnalyticsChannel::try_from(name.to_owned());
        assert_eq!(parse("off"), Ok(AnalyticsChannel::Off));
        assert_eq!(
            parse("private-staff-analytics"),
            Ok(AnalyticsChannel::Channel("private-staff-analytics".into()))
        );
        assert!(parse("private-cache-analytics").is_ok());
        for refused in [
            "analytics",
            "presence-analytics",
            "private-encrypted-analytics",
        ] {
            assert_eq!(
                parse(refused),
                Err(AnalyticsChannelError::NotPrivate(refused.into())),
                "{refused}"
            );
        }
        assert!(matches!(
            parse("private-a b"),
            Err(AnalyticsChannelError::Invalid { .. })
        ));
        assert!(matches!(
            parse(""),
            Err(AnalyticsChannelError::Invalid { .. })
        ));
        let default = AnalyticsChannel::default();
        assert!(default.is("private-analytics"));
        assert!(!AnalyticsChannel::Off.is(""));
        assert_eq!(AnalyticsChannel::Off.name(), None);
        assert_eq!(String::from(AnalyticsChannel::Off), "off");
    }

    #[test]
    fn analytics_channel_in_the_app_config() {
        let app = |extra: serde_json::Value| {
            let mut fields = serde_json::json!({"id": "1", "key": "k", "secret": "s"});
            fields
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<App>(fields)
        };
        let default = app(serde_json::json!({})).unwrap();
        assert_eq!(
            default.analytics_channel.name(),
            Some(DEFAULT_ANALYTICS_CHANNEL)
        );
        let off = app(serde_json::json!({"analytics_channel": "off"})).unwrap();
        assert_eq!(off.analytics_channel, AnalyticsChannel::Off);
        let error = app(serde_json::json!({"analytics_channel": "analytics"})).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("analytics_channel \"analytics\" must be \"off\" or a private- channel"),
            "{error}"
        );
        assert_eq!(
            serde_json::to_value(&off).unwrap()["analytics_channel"],
            "off"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", app("1", "k"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
