//! Unit tests of loading, validation and redaction.

use super::*;
use protocol::webhook::EventType;

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
fn the_dashboard_is_never_open_to_the_network() {
    let open = Config {
        admin_bind: Some("0.0.0.0:9601".parse().unwrap()),
        ..Config::default()
    };
    let error = open.validate().unwrap_err();
    assert!(matches!(error, ConfigError::OpenDashboard(_)));
    assert!(
        error.to_string().contains("SWITCHBOARD_ADMIN__PASSWORD"),
        "{error}"
    );
    let mut guarded = open.clone();
    guarded.admin.password = Some("s3cret".into());
    assert!(guarded.validate().is_ok());
    assert!(!format!("{guarded:?}").contains("s3cret"));
    guarded.admin.password = Some(String::new());
    assert!(matches!(
        guarded.validate(),
        Err(ConfigError::OutOfRange {
            field: "admin.password",
            ..
        })
    ));
    let local = Config {
        admin_bind: Some("127.0.0.1:9601".parse().unwrap()),
        ..Config::default()
    };
    assert!(local.validate().is_ok(), "loopback needs no password");
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
        (
            |c: &mut Config| c.gateway.max_channels_per_connection = 0,
            "gateway.max_channels_per_connection",
        ),
        (
            |c: &mut Config| c.gateway.socket_max_lag_ms = 99,
            "gateway.socket_max_lag_ms",
        ),
        (
            |c: &mut Config| c.publisher.linger_ms = 1001,
            "publisher.linger_ms",
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
        jail.set_env("SWITCHBOARD_GATEWAY__MAX_CHANNELS_PER_CONNECTION", "20");
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
        assert_eq!(config.gateway_config().max_channels_per_connection, 20);
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

#[test]
#[allow(clippy::result_large_err)]
fn webhooks_from_the_file_and_the_environment() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "hooks.toml",
            r#"
            [webhooks]
            batch_window_ms = 20
            retry_period_secs = 1
            [[apps]]
            id = "1"
            key = "k"
            secret = "s"
            [[apps.webhooks]]
            url = "http://127.0.0.1:8080/pusher/webhooks"
            event_types = ["channel_occupied", "channel_vacated"]
            channel_prefix = "presence-"
            headers = { "X-Env" = "dev" }
            [[apps.webhooks]]
            url = "https://hooks.example/all"
            "#,
        )?;
        jail.set_env("SWITCHBOARD_WEBHOOKS__REQUEST_TIMEOUT_MS", "500");
        let config = Config::load(Some(Path::new("hooks.toml"))).unwrap();
        let hooks = &config.apps[0].webhooks;
        assert_eq!(
            hooks[0].event_types,
            [EventType::ChannelOccupied, EventType::ChannelVacated]
        );
        assert_eq!(hooks[0].channel_prefix.as_deref(), Some("presence-"));
        assert_eq!(hooks[0].headers["X-Env"], "dev");
        assert_eq!(hooks[1].event_types, EventType::ALL);
        let targets = config.webhook_targets().unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].name, "https://hooks.example/all");
        let worker = config.webhooks_config(targets);
        assert_eq!(worker.batch_window, Duration::from_millis(20));
        assert_eq!(worker.retry_period, Duration::from_secs(1));
        assert_eq!(worker.request_timeout, Duration::from_millis(500));
        assert_eq!(worker.max_events_per_request, 100);
        assert_eq!(worker.max_response_bytes, 65536);
        assert_eq!(config.webhooks.vacate_debounce_ms, 3000);
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn bad_webhooks_stop_the_start_naming_what_is_wrong() {
    figment::Jail::expect_with(|jail| {
        let app = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n[[apps.webhooks]]\n";
        let load = |jail: &mut figment::Jail, hook: &str| {
            jail.create_file("hook.toml", &format!("{app}{hook}"))
                .unwrap();
            Config::load(Some(Path::new("hook.toml")))
                .unwrap_err()
                .to_string()
        };
        let error = load(
            jail,
            "url = \"http://h/\"\nevent_types = [\"channel_existence\"]\n",
        );
        assert!(error.contains("channel_existence"), "{error}");
        let error = load(jail, "url = \"ftp://u:hunter2@h/x\"\n");
        assert!(
            error.contains("apps \"1\" webhooks[0]: url \"ftp://h/x\" must be http:// or https://"),
            "{error}"
        );
        let error = load(jail, "url = \"http://h/\"\nevent_types = []\n");
        assert!(error.contains("event_types is empty"), "{error}");
        let error = load(
            jail,
            "url = \"http://h/\"\nheaders = { \"X-Pusher-Signature\" = \"forged\" }\n",
        );
        assert!(error.contains("\"X-Pusher-Signature\""), "{error}");
        let error = load(
            jail,
            "url = \"http://h/a\"\n[[apps.webhooks]]\nurl = \"http://h/a?again=1\"\n",
        );
        assert!(
            error.contains("webhooks[1]: url \"http://h/a\" is configured twice"),
            "{error}"
        );
        let error = load(jail, "url = \"http://h/\"\nsecret = \"x\"\n");
        assert!(error.contains("secret"), "{error}");
        Ok(())
    });
    for (adjust, field) in [
        (
            (|c: &mut Config| c.webhooks.retry_period_secs = 0) as fn(&mut Config),
            "webhooks.retry_period_secs",
        ),
        (
            |c: &mut Config| c.webhooks.max_events_per_request = 0,
            "webhooks.max_events_per_request",
        ),
        (
            |c: &mut Config| c.webhooks.backoff_max_ms = c.webhooks.backoff_base_ms - 1,
            "webhooks.backoff_max_ms",
        ),
        (
            |c: &mut Config| c.webhooks.batch_window_ms = 0,
            "webhooks.batch_window_ms",
        ),
        (
            |c: &mut Config| c.webhooks.buffer_events = 0,
            "webhooks.buffer_events",
        ),
    ] {
        let mut config = Config::default();
        adjust(&mut config);
        assert!(
            matches!(config.validate(), Err(ConfigError::OutOfRange { field: f, .. }) if f == field),
            "{field}"
        );
    }
}

#[test]
#[allow(clippy::result_large_err)]
fn amqp_url_takes_several_urls_as_a_list_or_comma_separated() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "nodes.toml",
            r#"amqp_url = ["amqp://guest:s1@mq1:5672/%2f", "amqp://guest:s2@mq2:5672/%2f"]"#,
        )?;
        let config = Config::load(Some(Path::new("nodes.toml"))).unwrap();
        assert_eq!(
            config.amqp_urls(),
            [
                "amqp://guest:s1@mq1:5672/%2f",
                "amqp://guest:s2@mq2:5672/%2f"
            ]
        );
        let debug = format!("{config:?}");
        assert!(
            debug.contains(r#"amqp_url: "amqp://mq1:5672/%2f,amqp://mq2:5672/%2f""#),
            "{debug}"
        );
        assert!(!debug.contains("s1@") && !debug.contains("s2@"), "{debug}");
        jail.create_file("comma.toml", r#"amqp_url = ["amqp://a/%2f,amqp://b/%2f"]"#)?;
        let error = Config::load(Some(Path::new("comma.toml")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("contains a comma"), "{error}");

        jail.set_env(
            "AMQP_URL",
            "amqp://a:5681/%2f, amqp://b:5682/%2f,amqp://c:5683/%2f",
        );
        let config = Config::load(None).unwrap();
        assert_eq!(
            config.amqp_urls(),
            [
                "amqp://a:5681/%2f",
                "amqp://b:5682/%2f",
                "amqp://c:5683/%2f"
            ]
        );

        jail.set_env("AMQP_URL", "amqp://a:5681/%2f,http://guest:s3@b/");
        let error = Config::load(None).unwrap_err().to_string();
        assert!(
            error.contains("amqp_url") && error.contains("http://b/"),
            "{error}"
        );
        assert!(!error.contains("s3"), "{error}");

        jail.set_env("AMQP_URL", " , ");
        let error = Config::load(None).unwrap_err().to_string();
        assert!(
            error.contains("amqp_url must be at least one amqp:// URL"),
            "{error}"
        );

        Ok(())
    });
}
