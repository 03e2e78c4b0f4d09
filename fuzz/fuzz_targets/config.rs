//! A config file: `Config::load` of any bytes, as `--config FILE` reads it. What loads is
//! validated and usable: every timer it sets can be armed.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchboard::config::Config;

/// This process's file, written anew for each input; no environment variable to merge.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        for (name, _) in std::env::vars() {
            if name.starts_with("SWITCHBOARD_") || name == "DATABASE_URL" || name == "AMQP_URL" {
                std::env::remove_var(name);
            }
        }
        std::env::temp_dir().join(format!("switchboard-fuzz-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(file(), data).expect("temp file writable");
    if let Ok(config) = Config::load(Some(file())) {
        config.validate().expect("a loaded config is valid");
        let gateway = config.gateway_config();
        let now = tokio::time::Instant::now();
        for wait in [
            gateway.activity_timeout,
            gateway.pong_timeout,
            gateway.cache_ttl,
        ] {
            assert!(now.checked_add(wait).is_some(), "{wait:?}");
        }
    }
});
