//! Typed configuration: built-in defaults → TOML file (`--config`) → environment, validated once
//! at start. Nothing falls back silently: a wrong value is an error that names it.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ingest::server::Limits;
use ingest::{App, Apps, AppsError, GatewayConfig};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use consumer_worker::webhooks::{check_unique, Target, WebhooksConfig};

use crate::Role;

/// Unacked messages of the webhook queue per worker (each carries up to 1,000 events).
const WEBHOOK_PREFETCH: u16 = 256;

/// The customary development credentials; a loud warning is logged when they are used on a
/// non-loopback bind.
pub const DEV_APP: (&str, &str, &str) = ("app-id", "app-key", "app-secret");

/// `Debug` shows the URLs without their credentials.
#[derive(custom_debug::Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing listener (WebSocket, Pusher HTTP API).
    pub bind: SocketAddr,
    /// Admin listener: `/metrics`, `/health`, `/ready`; unset is the role's default
    /// ([`Config::admin_bind`]).
    pub admin_bind: Option<SocketAddr>,
    #[debug(with = debug_redacted)]
    pub database_url: String,
    /// One RabbitMQ URL, or several (a TOML list, or comma-separated as in `AMQP_URL`): the nodes
    /// of one cluster, tried in order; kept comma-separated ([`Config::amqp_urls`]).
    #[debug(with = debug_redacted)]
    #[serde(deserialize_with = "one_or_many")]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name.
    pub amqp_prefix: String,
    pub persist_queue_type: PersistQueueType,
    /// Gateway node id (first half of socket ids, live queue name); random when unset.
    pub node_id: Option<u32>,
    /// Seconds to finish in-flight work after SIGTERM/SIGINT.
    pub shutdown_timeout_secs: u64,
    pub apps: Vec<App>,
    pub gateway: GatewaySection,
    pub admin: AdminSection,
    pub publisher: PublisherSection,
    pub worker: WorkerSection,
    pub webhooks: WebhooksSection,
    pub history: HistorySection,
}

impl Default for Config {
    fn default() -> Self {
        let (id, key, secret) = DEV_APP;
        Config {
            bind: ([127, 0, 0, 1], 6001).into(),
            admin_bind: None,
            database_url: "postgres://postgres@127.0.0.1:5432/switchboard".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            amqp_prefix: "switchboard".into(),
            persist_queue_type: PersistQueueType::Quorum,
            node_id: None,
            shutdown_timeout_secs: 10,
            apps: vec![App {
                client_events: true,
                ..App::new(id, key, secret)
            }],
            gateway: GatewaySection::default(),
            admin: AdminSection::default(),
            publisher: PublisherSection::default(),
            worker: WorkerSection::default(),
            webhooks: WebhooksSection::default(),
            history: HistorySection::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid apps: {0}")]
    Apps(#[from] AppsError),
    #[error("{field} must be {expected}")]
    OutOfRange {
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "admin_bind {0} is not a loopback address: set admin.password \
         (SWITCHBOARD_ADMIN__PASSWORD) so that the dashboard is not open to the network"
    )]
    OpenDashboard(std::net::SocketAddr),
    #[error("amqp_prefix {0:?} must be 1-64 characters of A-Z a-z 0-9 _ - .")]
    BadPrefix(String),
    #[error("apps {app:?} webhooks[{index}]: {source}")]
    Webhook {
        app: String,
        index: usize,
        #[source]
        source: consumer_worker::webhooks::TargetError,
    },
    #[error("{field} {value:?} is not a {scheme}:// URL")]
    BadUrl {
        field: &'static str,
        value: String,
        scheme: &'static str,
    },
}

impl Config {
    /// Loads defaults, then the file (if given), then the environment: `DATABASE_URL`,
    /// `AMQP_URL` and `SWITCHBOARD_*` (nested keys with `__`, e.g. `SWITCHBOARD_GATEWAY__SOCKET_QUEUE_LEN`).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("SWITCHBOARD_").split("__"))
            .merge(Env::raw().only(&["DATABASE_URL", "AMQP_URL"]))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }
    /// The admin listener's address: `admin_bind`, else the role's default, chosen so that a
    /// gateway (or `serve`) and a worker started with defaults on one host do not collide.
    pub fn admin_bind(&self, role: Role) -> SocketAddr {
        self.admin_bind.unwrap_or_else(|| {
            let port = match role {
                Role::Serve | Role::Gateway => 9601,
                Role::Worker => 9602,
            };
            ([127, 0, 0, 1], port).into()
        })
    }

    /// Timeouts and connection limit of the gateway's listener.
    pub fn gateway_limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(self.gateway.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(self.gateway.idle_timeout_secs),
            max_connections: self.gateway.max_connections,
        }
    }

    /// The admin listener's: the gateway's timeouts, its own connection limit.
    pub fn admin_limits(&self) -> Limits {
        Limits {
            max_connections: self.admin.max_connections,
            ..self.gateway_limits()
        }
    }

    /// The RabbitMQ URLs of `amqp_url`, in order.
    pub fn amqp_urls(&self) -> Vec<String> {
        split_urls(&self.amqp_url)
    }

    pub fn apps(&self) -> Result<Apps, AppsError> {
        Apps::new(self.apps.clone())
    }

    /// Every app's webhooks as the worker sends to them, checked: a URL that is not http(s),
    /// an empty `event_types`, a bad or reserved header, or one URL twice in an app.
    pub fn webhook_targets(&self) -> Result<Vec<Target>, ConfigError> {
        let mut targets = Vec::new();
        for app in &self.apps {
            let first = targets.len();
            for (index, webhook) in app.webhooks.iter().enumerate() {
                let error = |source| ConfigError::Webhook {
                    app: app.id.clone(),
                    index,
                    source,
                };
                let target = Target::new(
                    &app.id,
                    &app.key,
                    &app.secret,
                    &webhook.url,
                    webhook.filter(),
                    &webhook.headers,
                )
                .map_err(error)?;
                check_unique(targets[first..].iter().chain([&target])).map_err(error)?;
                targets.push(target);
            }
        }
        Ok(targets)
    }

    /// The worker's webhook settings, with `targets`.
    pub fn webhooks_config(&self, targets: Vec<Target>) -> WebhooksConfig {
        let w = &self.webhooks;
        let days = |days: u32| Duration::from_secs(u64::from(days) * 86_400);
        WebhooksConfig {
            topology: bus::Topology::new(self.amqp_prefix.clone()),
            queue_type: self.persist_queue_type.into(),
            targets,
            batch_window: Duration::from_millis(w.batch_window_ms),
            max_events_per_request: w.max_events_per_request,
            request_timeout: Duration::from_millis(w.request_timeout_ms),
            max_response_bytes: w.max_response_bytes,
            retry_period: Duration::from_secs(w.retry_period_secs),
            backoff_base: Duration::from_millis(w.backoff_base_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms),
            delivered_retention: days(w.retention_days),
            dead_retention: days(w.dead_retention_days),
            prefetch: WEBHOOK_PREFETCH,
        }
    }

    /// True when the development credentials are served on an address others can reach.
    pub fn dev_credentials_exposed(&self) -> bool {
        !self.bind.ip().is_loopback()
            && self
                .apps
                .iter()
                .any(|app| app.secret == DEV_APP.2 || app.key == DEV_APP.1)
    }

    pub fn gateway_config(&self) -> GatewayConfig {
        let g = &self.gateway;
        GatewayConfig {
            activity_timeout: Duration::from_secs(g.activity_timeout_secs),
            pong_timeout: Duration::from_secs(g.pong_timeout_secs),
            socket_queue_len: g.socket_queue_len,
            socket_max_lag: Duration::from_millis(g.socket_max_lag_ms),
            max_frame_bytes: g.max_frame_bytes,
            max_body_bytes: g.max_body_bytes,
            cache_ttl: Duration::from_secs(g.cache_ttl_secs),
            max_channels_per_connection: g.max_channels_per_connection,
            trusted_proxies: g.trusted_proxies.clone(),
            idempotency_cache_entries: NonZeroUsize::new(g.idempotency_cache_entries)
                .unwrap_or(NonZeroUsize::MIN),
            idempotency_window: self.worker.dedup_window(),
            about: ingest::About::default(),
        }
    }
}

/// Comma-separated URLs, trimmed; empty items are left out.
fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A URL, comma-separated URLs, or a list of URLs (each without a comma), as one
/// comma-separated string.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(urls) => Ok(urls),
        OneOrMany::Many(urls) => {
            if urls.iter().any(|url| url.contains(',')) {
                return Err(serde::de::Error::custom(
                    "a URL in the list contains a comma",
                ));
            }
            Ok(urls.join(","))
        }
    }
}

// custom_debug passes the field itself.
#[allow(clippy::ptr_arg)]
fn debug_redacted(url: &String, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    std::fmt::Debug::fmt(&bus::redacted_endpoint(url), f)
}

mod sections;
mod validate;

pub use sections::*;

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests;
