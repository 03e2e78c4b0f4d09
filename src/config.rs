//! Typed configuration: built-in defaults → TOML file (`--config`) → environment, validated once
//! at start. Nothing falls back silently: a wrong value is an error that names it.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ingest::server::Limits;
use ingest::tls::TlsFiles;
use ingest::{App, Apps, AppsError, GatewayConfig, TrustedProxy};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Role;

/// The customary development credentials; a loud warning is logged when they are used on a
/// non-loopback bind.
pub const DEV_APP: (&str, &str, &str) = ("app-id", "app-key", "app-secret");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistQueueType {
    Quorum,
    Classic,
}

impl From<PersistQueueType> for bus::QueueType {
    fn from(value: PersistQueueType) -> Self {
        match value {
            PersistQueueType::Quorum => bus::QueueType::Quorum,
            PersistQueueType::Classic => bus::QueueType::Classic,
        }
    }
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub activity_timeout_secs: u64,
    pub pong_timeout_secs: u64,
    pub socket_queue_len: usize,
    pub max_frame_bytes: usize,
    pub max_body_bytes: u64,
    /// Seconds a cache channel keeps its last event (Pusher: at most 30 min).
    pub cache_ttl_secs: u64,
    /// Messages the node's live queue holds before dropping the oldest.
    pub live_queue_max_len: u32,
    /// How often a node announces its presence/occupancy state to the others.
    pub cluster_heartbeat_ms: u64,
    /// How long without an announcement before a node's members are dropped.
    pub cluster_node_timeout_ms: u64,
    /// Addresses or CIDR networks of the proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Confirmed `X-Idempotency-Key`s (per envelope) remembered to answer retries without
    /// publishing again; the least recently used go first.
    pub idempotency_cache_entries: usize,
    /// Seconds a request head may take from its first byte (from the connection's start for
    /// the first request, from the start of the TLS handshake for it); both listeners.
    pub header_read_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait for its next request; both listeners.
    pub idle_timeout_secs: u64,
    /// Open client connections (WebSockets included) beyond which new ones are refused.
    pub max_connections: usize,
    /// `wss://` and `https://` on `bind`.
    pub tls: Option<TlsSection>,
}

/// The admin listener's own settings (its timeouts are the gateway's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub max_connections: usize,
    /// `https://` on `admin_bind`.
    pub tls: Option<TlsSection>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            max_connections: 64,
            tls: None,
        }
    }
}

/// A listener's certificate: PEM files, checked every `reload_interval_secs` and reloaded
/// when they changed (a broken new file keeps the previous certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    #[serde(default = "TlsSection::default_reload_interval_secs")]
    pub reload_interval_secs: u64,
}

impl TlsSection {
    fn default_reload_interval_secs() -> u64 {
        10
    }

    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            reload_interval: Duration::from_secs(self.reload_interval_secs),
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        let g = GatewayConfig::default();
        GatewaySection {
            activity_timeout_secs: g.activity_timeout.as_secs(),
            pong_timeout_secs: g.pong_timeout.as_secs(),
            socket_queue_len: g.socket_queue_len,
            max_frame_bytes: g.max_frame_bytes,
            max_body_bytes: g.max_body_bytes,
            cache_ttl_secs: g.cache_ttl.as_secs(),
            live_queue_max_len: 100_000,
            cluster_heartbeat_ms: 1000,
            cluster_node_timeout_ms: 5000,
            trusted_proxies: g.trusted_proxies,
            idempotency_cache_entries: g.idempotency_cache_entries.get(),
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 100_000,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublisherSection {
    pub max_batch_envelopes: usize,
    /// Most encoded bytes in one AMQP message; larger requests are split over several.
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    pub confirm_timeout_ms: u64,
}

impl Default for PublisherSection {
    fn default() -> Self {
        PublisherSection {
            max_batch_envelopes: 1000,
            max_message_bytes: 256 * 1024,
            max_in_flight: 64,
            confirm_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    pub prefetch: u16,
    pub max_batch: usize,
    pub batch_linger_ms: u64,
    pub partition_days_ahead: u32,
    /// Hours a Segment `messageId` is remembered for deduplication (at least 24).
    pub dedup_window_hours: u32,
    /// Drop events partitions older than this many days; unset keeps everything.
    pub retention_days: Option<u32>,
    /// Attempts at a batch that fails (not for its data, nor because Postgres is unreachable)
    /// before it is split and what still fails alone is dead-lettered.
    pub max_attempts: u32,
}

impl WorkerSection {
    /// How long storage deduplicates Segment `messageId`s and idempotency keys.
    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(u64::from(self.dedup_window_hours) * 3600)
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            prefetch: 2000,
            max_batch: 5000,
            batch_linger_ms: 5,
            partition_days_ahead: 3,
            dedup_window_hours: 48,
            retention_days: None,
            max_attempts: 3,
        }
    }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.apps()?;
        let prefix_ok = !self.amqp_prefix.is_empty()
            && self.amqp_prefix.len() <= 64
            && self
                .amqp_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !prefix_ok {
            return Err(ConfigError::BadPrefix(self.amqp_prefix.clone()));
        }
        check_url(
            "database_url",
            &self.database_url,
            &["postgres", "postgresql"],
        )?;
        check_url("amqp_url", &self.amqp_url, &["amqp"])?;
        self.validate_edge()?;
        let g = &self.gateway;
        let checks: [(&'static str, bool, &'static str); 15] = [
            (
                "gateway.activity_timeout_secs",
                (1..=3600).contains(&g.activity_timeout_secs),
                "1 to 3600",
            ),
            (
                "gateway.pong_timeout_secs",
                (1..=3600).contains(&g.pong_timeout_secs),
                "1 to 3600",
            ),
            (
                "gateway.socket_queue_len",
                g.socket_queue_len > 0,
                "at least 1",
            ),
            (
                "gateway.max_frame_bytes",
                g.max_frame_bytes >= 1024,
                "at least 1024",
            ),
            (
                "gateway.live_queue_max_len",
                g.live_queue_max_len > 0,
                "at least 1",
            ),
            (
                "gateway.cache_ttl_secs",
                (1..=1800).contains(&g.cache_ttl_secs),
                "1 to 1800",
            ),
            (
                "gateway.cluster_node_timeout_ms",
                g.cluster_heartbeat_ms > 0 && g.cluster_node_timeout_ms > g.cluster_heartbeat_ms,
                "greater than gateway.cluster_heartbeat_ms (which must be > 0)",
            ),
            (
                "gateway.idempotency_cache_entries",
                g.idempotency_cache_entries > 0,
                "at least 1",
            ),
            (
                "publisher.max_batch_envelopes",
                self.publisher.max_batch_envelopes > 0,
                "at least 1",
            ),
            (
                "publisher.max_message_bytes",
                self.publisher.max_message_bytes >= 4096,
                "at least 4096",
            ),
            (
                "publisher.max_in_flight",
                self.publisher.max_in_flight > 0,
                "at least 1",
            ),
            (
                "worker.max_batch",
                self.worker.max_batch > 0 && self.worker.prefetch > 0,
                "at least 1 (and prefetch too)",
            ),
            (
                "worker.dedup_window_hours",
                self.worker.dedup_window_hours >= 24,
                "at least 24",
            ),
            (
                "worker.max_attempts",
                self.worker.max_attempts >= 1,
                "at least 1",
            ),
            (
                "worker.retention_days",
                self.worker.retention_days.is_none_or(|days| days >= 1),
                "at least 1 (or unset to keep everything)",
            ),
        ];
        for (field, ok, expected) in checks {
            if !ok {
                return Err(ConfigError::OutOfRange { field, expected });
            }
        }
        Ok(())
    }

    /// The listeners' timeouts, connection limits and TLS reload intervals.
    fn validate_edge(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let reload_ok =
            |tls: &Option<TlsSection>| tls.as_ref().is_none_or(|tls| tls.reload_interval_secs >= 1);
        let checks = [
            (
                "gateway.header_read_timeout_secs",
                g.header_read_timeout_secs >= 1,
            ),
            ("gateway.idle_timeout_secs", g.idle_timeout_secs >= 1),
            ("gateway.max_connections", g.max_connections >= 1),
            ("gateway.tls.reload_interval_secs", reload_ok(&g.tls)),
            ("admin.max_connections", self.admin.max_connections >= 1),
            ("admin.tls.reload_interval_secs", reload_ok(&self.admin.tls)),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(ConfigError::OutOfRange {
                    field,
                    expected: "at least 1",
                });
            }
        }
        Ok(())
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
            trusted_proxies: g.trusted_proxies.clone(),
            idempotency_cache_entries: NonZeroUsize::new(g.idempotency_cache_entries)
                .unwrap_or(NonZeroUsize::MIN),
            idempotency_window: self.worker.dedup_window(),
            about: ingest::About::default(),
        }
    }
}

/// A URL without its credentials or query (which may carry a password), for errors and `Debug`.
pub fn redacted(url: &str) -> String {
    let without_query = url.split_once('?').map_or(url, |(base, _)| base);
    bus::redacted_endpoint(without_query)
}

// custom_debug passes the field itself.
#[allow(clippy::ptr_arg)]
fn debug_redacted(url: &String, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    std::fmt::Debug::fmt(&redacted(url), f)
}

fn check_url(
    field: &'static str,
    value: &str,
    schemes: &[&'static str],
) -> Result<(), ConfigError> {
    let ok = value
        .split_once("://")
        .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadUrl {
            field,
            value: redacted(value),
            scheme: schemes[0],
        })
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_local() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.bind.to_string(), "127.0.0.1:6001");
        assert_eq!(config.admin_bind(Role::Serve).to_string(), "127.0.0.1:9601");
        assert_eq!(
            config.admin_bind(Role::Gateway).to_string(),
            "127.0.0.1:9601"
        );
        assert_eq!(
            config.admin_bind(Role::Worker).to_string(),
            "127.0.0.1:9602"
        );
        assert!(!config.dev_credentials_exposed());
    }

    #[test]
    fn urls_are_redacted_in_debug_and_errors() {
        let config = Config {
            database_url: "postgres://analyst:hunter2@db.example:5432/x?password=hunter3".into(),
            amqp_url: "amqp://guest:hunter4@mq.example:5672/%2f".into(),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            debug.contains(r#"database_url: "postgres://db.example:5432/x""#)
                && debug.contains(r#"amqp_url: "amqp://mq.example:5672/%2f""#),
            "{debug}"
        );
        let bad = Config {
            amqp_url: "amqps://guest:hunter5@mq.example/%2f".into(),
            ..Config::default()
        };
        let error = bad.validate().unwrap_err().to_string();
        assert!(!error.contains("hunter5"), "{error}");
        assert!(error.contains("mq.example"), "{error}");
    }

    #[test]
    fn edge_limits_must_be_positive() {
        let mut config = Config::default();
        config.gateway.idle_timeout_secs = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::OutOfRange {
                field: "gateway.idle_timeout_secs",
                ..
            })
        ));
        let mut config = Config::default();
        config.admin.max_connections = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::OutOfRange {
                field: "admin.max_connections",
                ..
            })
        ));
    }

    #[test]
    fn dev_credentials_on_public_bind_are_flagged() {
        let config = Config {
            bind: "0.0.0.0:6001".parse().unwrap(),
            ..Config::default()
        };
        assert!(config.dev_credentials_exposed());
    }

    #[test]
    fn rejects_bad_values() {
        let bad_prefix = Config {
            amqp_prefix: "has space".into(),
            ..Config::default()
        };
        assert!(matches!(
            bad_prefix.validate(),
            Err(ConfigError::BadPrefix(_))
        ));
        let bad_url = Config {
            database_url: "mysql://x".into(),
            ..Config::default()
        };
        assert!(matches!(
            bad_url.validate(),
            Err(ConfigError::BadUrl {
                field: "database_url",
                ..
            })
        ));
        let mut zero_queue = Config::default();
        zero_queue.gateway.socket_queue_len = 0;
        assert!(matches!(
            zero_queue.validate(),
            Err(ConfigError::OutOfRange {
                field: "gateway.socket_queue_len",
                ..
            })
        ));
        for (adjust, field) in [
            (
                (|c: &mut Config| c.publisher.max_message_bytes = 4095) as fn(&mut Config),
                "publisher.max_message_bytes",
            ),
            (
                |c: &mut Config| c.gateway.idempotency_cache_entries = 0,
                "gateway.idempotency_cache_entries",
            ),
            (
                |c: &mut Config| c.worker.max_attempts = 0,
                "worker.max_attempts",
            ),
        ] {
            let mut config = Config::default();
            adjust(&mut config);
            assert!(
                matches!(config.validate(), Err(ConfigError::OutOfRange { field: f, .. }) if f == field),
                "{field}"
            );
        }
        // Found by `whatever_validates_is_usable`: a timeout this long overflowed the clock
        // at the first connection (a panic in the session).
        let mut endless = Config::default();
        endless.gateway.activity_timeout_secs = i64::MAX as u64;
        assert!(matches!(
            endless.validate(),
            Err(ConfigError::OutOfRange {
                field: "gateway.activity_timeout_secs",
                ..
            })
        ));
        let no_apps = Config {
            apps: vec![],
            ..Config::default()
        };
        assert!(matches!(
            no_apps.validate(),
            Err(ConfigError::Apps(AppsError::Empty))
        ));
    }

    // figment::Jail's closures return figment's own (large) error type.
    #[test]
    #[allow(clippy::result_large_err)]
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "switchboard.toml",
                r#"
                amqp_prefix = "fromfile"
                bind = "127.0.0.1:7001"
                [gateway]
                socket_queue_len = 7
                trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
                [[apps]]
                id = "1"
                key = "k"
                secret = "s"
                "#,
            )?;
            jail.set_env("SWITCHBOARD_AMQP_PREFIX", "fromenv");
            jail.set_env("SWITCHBOARD_GATEWAY__MAX_FRAME_BYTES", "4096");
            jail.set_env("DATABASE_URL", "postgres://db.example/x");
            jail.set_env("SWITCHBOARD_WORKER__RETENTION_DAYS", "30");
            jail.set_env("SWITCHBOARD_PUBLISHER__MAX_MESSAGE_BYTES", "65536");
            jail.set_env("SWITCHBOARD_WORKER__MAX_ATTEMPTS", "5");
            jail.set_env("SWITCHBOARD_GATEWAY__IDEMPOTENCY_CACHE_ENTRIES", "10");
            jail.set_env("SWITCHBOARD_GATEWAY__TLS__CERT_PATH", "/etc/sb/cert.pem");
            jail.set_env("SWITCHBOARD_GATEWAY__TLS__KEY_PATH", "/etc/sb/key.pem");
            jail.set_env("SWITCHBOARD_ADMIN__MAX_CONNECTIONS", "8");
            let config = Config::load(Some(Path::new("switchboard.toml"))).unwrap();
            let tls = config.gateway.tls.as_ref().unwrap();
            assert_eq!(tls.cert_path, Path::new("/etc/sb/cert.pem"));
            assert_eq!(tls.reload_interval_secs, 10);
            assert!(config.admin.tls.is_none());
            assert_eq!(config.admin.max_connections, 8);
            assert_eq!(
                config.admin_limits().header_read_timeout,
                Duration::from_secs(10)
            );
            assert_eq!(config.worker.retention_days, Some(30));
            assert_eq!(config.publisher.max_message_bytes, 65536);
            assert_eq!(config.worker.max_attempts, 5);
            assert_eq!(config.gateway_config().idempotency_cache_entries.get(), 10);
            assert_eq!(config.worker.dedup_window_hours, 48);
            assert_eq!(config.amqp_prefix, "fromenv");
            assert_eq!(config.bind.port(), 7001);
            assert_eq!(config.gateway.socket_queue_len, 7);
            assert_eq!(config.gateway.max_frame_bytes, 4096);
            let proxies: Vec<String> = config
                .gateway
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(proxies, ["10.0.0.0/8", "127.0.0.1/32"]);
            assert_eq!(config.database_url, "postgres://db.example/x");
            assert_eq!(config.apps.len(), 1);
            assert_eq!(config.apps[0].id, "1");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_and_missing_files_fail() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "bindd = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("bindd"), "{err}");
            let err = Config::load(Some(Path::new("nope.toml"))).unwrap_err();
            assert!(matches!(err, ConfigError::MissingFile(_)));
            jail.create_file(
                "proxy.toml",
                "[gateway]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            )?;
            let err = Config::load(Some(Path::new("proxy.toml"))).unwrap_err();
            assert!(err.to_string().contains("trusted_proxies"), "{err}");
            jail.set_env("SWITCHBOARD_BIND", "not an address");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("bind"), "{err}");
            Ok(())
        });
    }
}
