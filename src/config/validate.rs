//! Checks of the values that a type alone does not bound.

use super::{Config, ConfigError, TlsSection};

impl Config {
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
        let amqp_urls = self.amqp_urls();
        if amqp_urls.is_empty() {
            return Err(ConfigError::OutOfRange {
                field: "amqp_url",
                expected: "at least one amqp:// URL",
            });
        }
        for url in &amqp_urls {
            check_url("amqp_url", url, &["amqp"])?;
        }
        self.validate_edge()?;
        self.validate_webhooks()?;
        let g = &self.gateway;
        let checks: &[(&'static str, bool, &'static str)] = &[
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
                "gateway.socket_max_lag_ms",
                (100..=600_000).contains(&g.socket_max_lag_ms),
                "100 to 600000",
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
                "gateway.live_queue_expires_secs",
                (1..=86_400).contains(&g.live_queue_expires_secs),
                "1 to 86400",
            ),
            (
                "gateway.cache_ttl_secs",
                (1..=1800).contains(&g.cache_ttl_secs),
                "1 to 1800",
            ),
            (
                "gateway.max_channels_per_connection",
                g.max_channels_per_connection > 0,
                "at least 1",
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
                "publisher.group_commit_in_flight",
                self.publisher.group_commit_in_flight > 0,
                "at least 1",
            ),
            (
                "publisher.linger_ms",
                self.publisher.linger_ms <= 1000,
                "0 to 1000",
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
            (
                "history.window_hours",
                (1..=8760).contains(&self.history.window_hours),
                "1 to 8760",
            ),
            (
                "history.max_events",
                (1..=1_000_000).contains(&self.history.max_events),
                "1 to 1000000",
            ),
        ];
        for &(field, ok, expected) in checks {
            if !ok {
                return Err(ConfigError::OutOfRange { field, expected });
            }
        }
        Ok(())
    }

    /// The `[webhooks]` section and every app's webhooks.
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        self.webhook_targets()?;
        let w = &self.webhooks;
        let checks: [(&'static str, bool, &'static str); 10] = [
            (
                "webhooks.batch_window_ms",
                (1..=60_000).contains(&w.batch_window_ms),
                "1 to 60000",
            ),
            (
                "webhooks.max_events_per_request",
                (1..=10_000).contains(&w.max_events_per_request),
                "1 to 10000",
            ),
            (
                "webhooks.request_timeout_ms",
                (100..=600_000).contains(&w.request_timeout_ms),
                "100 to 600000",
            ),
            (
                "webhooks.max_response_bytes",
                w.max_response_bytes <= 16 * 1024 * 1024,
                "at most 16777216",
            ),
            (
                "webhooks.retry_period_secs",
                (1..=7 * 86_400).contains(&w.retry_period_secs),
                "1 to 604800",
            ),
            (
                "webhooks.backoff_base_ms",
                (1..=3_600_000).contains(&w.backoff_base_ms),
                "1 to 3600000",
            ),
            (
                "webhooks.backoff_max_ms",
                (w.backoff_base_ms..=86_400_000).contains(&w.backoff_max_ms),
                "at least webhooks.backoff_base_ms, at most 86400000",
            ),
            (
                "webhooks.vacate_debounce_ms",
                w.vacate_debounce_ms <= 600_000,
                "at most 600000",
            ),
            (
                "webhooks.buffer_events",
                (1..=10_000_000).contains(&w.buffer_events),
                "1 to 10000000",
            ),
            (
                "webhooks.retention_days",
                w.retention_days >= 1 && w.dead_retention_days >= 1,
                "at least 1 (and dead_retention_days too)",
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
            ("admin.report_timeout_ms", self.admin.report_timeout_ms >= 1),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(ConfigError::OutOfRange {
                    field,
                    expected: "at least 1",
                });
            }
        }
        match (&self.admin.password, self.admin_bind) {
            (Some(password), _) if password.is_empty() => Err(ConfigError::OutOfRange {
                field: "admin.password",
                expected: "not empty (or unset)",
            }),
            (None, Some(bind)) if !bind.ip().is_loopback() => Err(ConfigError::OpenDashboard(bind)),
            _ => Ok(()),
        }
    }
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
            value: bus::redacted_endpoint(value),
            scheme: schemes[0],
        })
    }
}
