//! Property tests: any file text is a config or a `ConfigError`, never a panic; a valid
//! config written to TOML loads back the same; what validates is usable at run time.

use super::*;
use figment::Jail;
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};

/// The largest integer a TOML file can hold.
const TOML_MAX: u64 = i64::MAX as u64;

/// Runs `property` over `strategy` inside one figment jail (empty environment, its own
/// directory), each case's text written to `case.toml`.
#[allow(clippy::result_large_err)]
fn check_files<S: Strategy>(
    strategy: S,
    property: impl Fn(&S::Value, Result<Config, ConfigError>) -> Result<(), TestCaseError>,
) where
    S::Value: ToToml,
{
    Jail::expect_with(|jail| {
        jail.clear_env();
        let cases = Cases {
            cases: 128,
            failure_persistence: None,
            ..Cases::default()
        };
        let outcome = TestRunner::new(cases).run(&strategy, |value| {
            std::fs::write("case.toml", value.to_toml())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            property(&value, Config::load(Some(Path::new("case.toml"))))
        });
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
        Ok(())
    });
}

trait ToToml {
    fn to_toml(&self) -> String;
}

impl ToToml for String {
    fn to_toml(&self) -> String {
        self.clone()
    }
}

impl ToToml for Config {
    fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serializes to TOML")
    }
}

/// What a loaded config must offer: every timer it sets can be armed.
fn usable(config: &Config) -> Result<(), TestCaseError> {
    let g = config.gateway_config();
    let now = tokio::time::Instant::now();
    for (name, wait) in [
        ("activity_timeout", g.activity_timeout),
        ("pong_timeout", g.pong_timeout),
        ("cache_ttl", g.cache_ttl),
    ] {
        prop_assert!(now.checked_add(wait).is_some(), "{} = {:?}", name, wait);
    }
    Ok(())
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(&["0", "-1", "1", "9223372036854775807", "1800", "1801"][..])
            .prop_map(str::to_owned),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"postgres://h/db\"".to_owned()),
        Just("[\"10.0.0.0/8\", \"::1\"]".to_owned()),
        Just("[]".to_owned()),
    ]
}

/// TOML-shaped text: known and unknown keys under the known sections, values of any
/// type, sometimes an `[[apps]]` entry; or any text at all.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(
        &[
            "bind",
            "admin_bind",
            "database_url",
            "amqp_url",
            "amqp_prefix",
            "persist_queue_type",
            "node_id",
            "shutdown_timeout_secs",
            "activity_timeout_secs",
            "pong_timeout_secs",
            "socket_queue_len",
            "socket_max_lag_ms",
            "max_frame_bytes",
            "max_body_bytes",
            "cache_ttl_secs",
            "max_channels_per_connection",
            "live_queue_max_len",
            "cluster_heartbeat_ms",
            "cluster_node_timeout_ms",
            "trusted_proxies",
            "max_batch_envelopes",
            "max_in_flight",
            "group_commit_in_flight",
            "linger_ms",
            "confirm_timeout_ms",
            "prefetch",
            "max_batch",
            "batch_linger_ms",
            "partition_days_ahead",
            "dedup_window_hours",
            "retention_days",
            "id",
            "key",
            "secret",
            "enabled",
            "client_events_per_second",
            "track_batches_per_second",
            "window_hours",
            "max_events",
            "unknown",
        ][..],
    );
    let section = prop::sample::select(
        &[
            "",
            "[gateway]",
            "[publisher]",
            "[worker]",
            "[[apps]]",
            "[apps.limits]",
            "[history]",
        ][..],
    );
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            (section, prop::collection::vec((key, toml_value()), 0..4)),
            0..4,
        )
        .prop_map(|sections| {
            sections
                .into_iter()
                .map(|(header, lines)| {
                    let body: Vec<String> = lines
                        .into_iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect();
                    format!("{header}\n{}\n", body.join("\n"))
                })
                .collect::<String>()
        }),
    ]
}

fn valid_config() -> impl Strategy<Value = Config> {
    let listener =
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)));
    let apps = prop::collection::vec(
        (
            "[a-z0-9]{1,8}",
            "[ -~]{1,16}",
            any::<bool>(),
            prop::option::of(0..TOML_MAX as usize),
            0u32..1000,
        ),
        1..4,
    )
    .prop_map(|apps| {
        apps.into_iter()
            .enumerate()
            .map(|(i, (name, secret, enabled, max_connections, rate))| {
                let mut app = App::new(&format!("{i}{name}"), &format!("k{i}{name}"), &secret);
                app.enabled = enabled;
                app.max_connections = max_connections;
                app.limits.client_events_per_second = rate;
                app
            })
            .collect::<Vec<_>>()
    });
    let gateway = (
        (
            1u64..=3600,
            1u64..=3600,
            1..TOML_MAX as usize,
            1024..TOML_MAX as usize,
        ),
        (0..TOML_MAX, 1u64..=1800, 1u32..=u32::MAX, 1u64..TOML_MAX),
        prop::collection::vec(
            prop_oneof![
                "10\\.[1-9][0-9]?\\.0\\.0/16",
                "::1",
                "192\\.0\\.2\\.[1-9][0-9]?"
            ],
            0..3,
        ),
    )
        .prop_map(
            |((activity, pong, queue, frame), (body, ttl, live, heartbeat), proxies)| {
                GatewaySection {
                    activity_timeout_secs: activity,
                    pong_timeout_secs: pong,
                    socket_queue_len: queue,
                    max_frame_bytes: frame,
                    max_body_bytes: body,
                    cache_ttl_secs: ttl,
                    live_queue_max_len: live,
                    cluster_heartbeat_ms: heartbeat,
                    cluster_node_timeout_ms: heartbeat + 1,
                    trusted_proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
                    ..GatewaySection::default()
                }
            },
        );
    let rest = (
        (1..TOML_MAX as usize, 1..TOML_MAX as usize, 0..TOML_MAX),
        (
            1u16..=u16::MAX,
            1..TOML_MAX as usize,
            0..TOML_MAX,
            any::<u32>(),
            24u32..=u32::MAX,
            prop::option::of(1u32..=u32::MAX),
        ),
    )
        .prop_map(
            |(
                (batch, in_flight, confirm),
                (prefetch, max_batch, linger, ahead, dedup, retention),
            )| {
                (
                    PublisherSection {
                        max_batch_envelopes: batch,
                        max_in_flight: in_flight,
                        confirm_timeout_ms: confirm,
                        ..PublisherSection::default()
                    },
                    WorkerSection {
                        prefetch,
                        max_batch,
                        batch_linger_ms: linger,
                        partition_days_ahead: ahead,
                        dedup_window_hours: dedup,
                        retention_days: retention,
                        ..WorkerSection::default()
                    },
                )
            },
        );
    (
        (
            listener.clone(),
            listener,
            "[a-z]{1,10}(:[0-9]{1,5})?",
            "[A-Za-z0-9_.-]{1,64}",
        ),
        (any::<bool>(), prop::option::of(any::<u32>()), 0..TOML_MAX),
        apps,
        gateway,
        rest,
    )
        .prop_map(
            |(
                (bind, admin_bind, host, prefix),
                (classic, node_id, shutdown),
                apps,
                gateway,
                (publisher, worker),
            )| Config {
                bind,
                admin_bind: Some(admin_bind),
                database_url: format!("postgresql://{host}/db"),
                amqp_url: format!("amqp://{host}/%2f"),
                amqp_prefix: prefix,
                persist_queue_type: if classic {
                    PersistQueueType::Classic
                } else {
                    PersistQueueType::Quorum
                },
                node_id,
                shutdown_timeout_secs: shutdown,
                apps,
                gateway,
                publisher,
                worker,
                webhooks: WebhooksSection::default(),
                history: HistorySection::default(),
                // Any admin_bind: a password keeps a non-loopback one valid.
                admin: AdminSection {
                    password: Some("generated".into()),
                    ..AdminSection::default()
                },
            },
        )
}

#[test]
fn any_file_is_a_usable_config_or_a_config_error() {
    check_files(config_text(), |_, loaded| {
        match loaded {
            Ok(config) => {
                prop_assert!(config.validate().is_ok());
                usable(&config)?;
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        Ok(())
    });
}

/// Timeouts anywhere a TOML file can put them, the edges included.
fn any_timeout() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=3600, 3601..TOML_MAX, Just(TOML_MAX), Just(0)]
}

#[test]
fn whatever_validates_is_usable() {
    let configs =
        (valid_config(), any_timeout(), any_timeout()).prop_map(|(mut config, activity, pong)| {
            config.gateway.activity_timeout_secs = activity;
            config.gateway.pong_timeout_secs = pong;
            config
        });
    check_files(configs, |_, loaded| match loaded {
        Ok(config) => usable(&config),
        Err(ConfigError::OutOfRange { field, .. }) => {
            prop_assert!(field.ends_with("timeout_secs"), "{}", field);
            Ok(())
        }
        Err(error) => Err(TestCaseError::fail(error.to_string())),
    });
}

#[test]
fn a_valid_config_loads_back_the_same() {
    check_files(valid_config(), |written, loaded| {
        let loaded = loaded.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(written).unwrap()
        );
        usable(&loaded)
    });
}
