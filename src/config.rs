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

use crate::Role;

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
    #[debug(with = debug_redacted)]
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

    pub fn apps(&self) -> Result<Apps, AppsError> {
        Apps::new(self.apps.clone())
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
