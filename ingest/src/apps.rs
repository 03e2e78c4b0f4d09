//! The apps this gateway serves, looked up by id (HTTP API) or key (WebSocket, Segment).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
    #[serde(default)]
    pub limits: Limits,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_data_bytes: 10 * 1024,
            max_channels_per_trigger: 100,
            max_batch_events: 10,
            max_presence_members: 100,
            client_events_per_second: 10,
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
            limits: Limits::default(),
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
            .field("limits", &self.limits)
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
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", app("1", "k"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
