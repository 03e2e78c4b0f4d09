//! The config file's sections other than the top level, with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use ingest::tls::TlsFiles;
use ingest::{GatewayConfig, TrustedProxy};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub activity_timeout_secs: u64,
    pub pong_timeout_secs: u64,
    pub socket_queue_len: usize,
    /// Milliseconds a socket's oldest unwritten frame may wait before the socket is closed as
    /// a slow consumer (4100).
    pub socket_max_lag_ms: u64,
    pub max_frame_bytes: usize,
    pub max_body_bytes: u64,
    /// Seconds a cache channel keeps its last event (Pusher: at most 30 min).
    pub cache_ttl_secs: u64,
    /// Channels one connection may be subscribed to at once; a subscription beyond is refused
    /// with `pusher:subscription_error` (the connection stays open).
    pub max_channels_per_connection: usize,
    /// Messages the node's live queue holds before dropping the oldest.
    pub live_queue_max_len: u32,
    /// Seconds the node's live queue outlives its broker connection: what is routed meanwhile
    /// waits for the reconnect; a node away for longer closes its sockets (4200) on return.
    pub live_queue_expires_secs: u64,
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
#[derive(custom_debug::Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub max_connections: usize,
    /// `https://` on `admin_bind`.
    pub tls: Option<TlsSection>,
    /// The dashboard's password (user `admin`); without one the dashboard is served only on a
    /// loopback `admin_bind`.
    #[debug(with = dashboards::debug_secret)]
    pub password: Option<String>,
    /// The statement timeout of one report of the reports API.
    pub report_timeout_ms: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            max_connections: 64,
            tls: None,
            password: None,
            report_timeout_ms: 5000,
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
            socket_max_lag_ms: g.socket_max_lag.as_millis() as u64,
            max_frame_bytes: g.max_frame_bytes,
            max_body_bytes: g.max_body_bytes,
            cache_ttl_secs: g.cache_ttl.as_secs(),
            max_channels_per_connection: g.max_channels_per_connection,
            live_queue_max_len: 100_000,
            live_queue_expires_secs: 60,
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
    /// Group commit: a message that is not full waits while this many are unconfirmed.
    pub group_commit_in_flight: usize,
    /// Linger: a message that is not full waits until its oldest envelope has waited this many
    /// milliseconds (0: at once).
    pub linger_ms: u64,
    pub confirm_timeout_ms: u64,
}

impl Default for PublisherSection {
    fn default() -> Self {
        PublisherSection {
            max_batch_envelopes: 1000,
            max_message_bytes: 256 * 1024,
            max_in_flight: 64,
            group_commit_in_flight: 2,
            linger_ms: 0,
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

/// Webhook delivery, for every app's `[[apps.webhooks]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// How long the worker gathers a webhook's events after the first before making a batch.
    pub batch_window_ms: u64,
    /// Most events in one request.
    pub max_events_per_request: usize,
    /// One attempt's whole exchange: connect, send, the answer and its body.
    pub request_timeout_ms: u64,
    /// Most bytes of an answer read; a longer one fails the attempt (`body_too_large`).
    pub max_response_bytes: usize,
    /// How long a batch is retried after it was made; then it is `dead`.
    pub retry_period_secs: u64,
    /// The first retry comes within this (full jitter); each next ceiling doubles...
    pub backoff_base_ms: u64,
    /// ...up to this.
    pub backoff_max_ms: u64,
    /// How long `channel_vacated` and `member_removed` wait for the channel or user to come back.
    pub vacate_debounce_ms: u64,
    /// Webhook events a gateway buffers while RabbitMQ is slow or away; beyond, new ones are
    /// dropped and counted.
    pub buffer_events: usize,
    /// Delivered rows of `webhook_deliveries` are deleted this many days after their creation.
    pub retention_days: u32,
    /// Dead rows are deleted this many days after their creation.
    pub dead_retention_days: u32,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        WebhooksSection {
            batch_window_ms: 100,
            max_events_per_request: 100,
            request_timeout_ms: 10_000,
            max_response_bytes: 64 * 1024,
            retry_period_secs: 300,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            vacate_debounce_ms: 3000,
            buffer_events: 10_000,
            retention_days: 7,
            dead_retention_days: 30,
        }
    }
}

/// The recovery window of history (`GET …/channels/{name}/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySection {
    /// How far back a history request's `after` may be (410 beyond).
    pub window_hours: u32,
    /// Most events of a channel after a history request's `after` (410 beyond).
    pub max_events: u32,
}

impl HistorySection {
    pub fn history_config(&self) -> ingest::HistoryConfig {
        ingest::HistoryConfig {
            window: Duration::from_secs(u64::from(self.window_hours) * 3600),
            max_events: self.max_events,
        }
    }
}

impl Default for HistorySection {
    fn default() -> Self {
        let h = ingest::HistoryConfig::default();
        HistorySection {
            window_hours: (h.window.as_secs() / 3600) as u32,
            max_events: h.max_events,
        }
    }
}
