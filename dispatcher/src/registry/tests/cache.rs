//! Cache channels: replay, expiry, and no duplicate against the fan-out.

use super::*;

#[test]
fn cache_channels_replay_the_last_event_or_say_miss() {
    let registry = registry();
    let (a, mut rx) = socket(&registry, "1.1");
    registry.subscribe(APP, "cache-prices", &a, None).unwrap();
    assert_eq!(
        events(&mut rx),
        [
            "pusher_internal:subscription_succeeded",
            "pusher:cache_miss"
        ]
    );
    registry.fan_out(&envelope("cache-prices", "1"));
    registry.fan_out(&envelope("cache-prices", "2"));
    drain(&mut rx);
    let (b, mut rx_b) = socket(&registry, "1.2");
    registry.subscribe(APP, "cache-prices", &b, None).unwrap();
    let frames = drain(&mut rx_b);
    assert_eq!(frames[0]["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(frames[1]["event"], "ev");
    assert_eq!(frames[1]["data"], "2");
    assert_eq!(registry.cached(APP, "cache-prices").unwrap().data, "2");
    assert!(registry.cached(APP, "cache-other").is_none());
}

#[tokio::test(start_paused = true)]
async fn expired_cache_entries_are_swept_even_without_subscribers() {
    let registry = registry();
    let (a, mut rx) = socket(&registry, "1.1");
    registry.subscribe(APP, "cache-kept", &a, None).unwrap();
    registry.fan_out(&envelope("cache-kept", "1"));
    registry.fan_out(&envelope("cache-alone", "2"));
    drain(&mut rx);
    tokio::time::advance(Duration::from_secs(59)).await;
    registry.sweep_cache();
    assert_eq!(
        registry.cached(APP, "cache-alone").unwrap().ttl,
        Duration::from_secs(1)
    );
    assert!(registry
        .occupied(APP, "")
        .iter()
        .all(|(n, _)| n != "cache-alone"));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(registry.cached(APP, "cache-alone").is_none());
    registry.sweep_cache();
    {
        let state = registry.state.read();
        let channels = &state.local.apps[APP].channels;
        assert!(!channels.contains_key("cache-alone"));
        assert!(channels["cache-kept"].cached.is_none());
    }
    // The last socket leaves: nothing of the app is left.
    registry.disconnect(APP, "1.1", &["cache-kept".into()]);
    assert!(registry.state.read().local.apps.is_empty());
    // An event after the expiry of the previous one is cached afresh.
    registry.fan_out(&envelope("cache-alone", "3"));
    assert_eq!(registry.cached(APP, "cache-alone").unwrap().data, "3");
}

#[test]
fn a_cache_replay_and_the_fan_out_never_deliver_one_event_twice() {
    const EVENTS: usize = 3000;
    const SOCKETS: usize = 300;
    let registry = registry();
    let sockets: Vec<_> = (0..SOCKETS)
        .map(|i| {
            let (handle, rx) = SocketHandle::new(&format!("1.{i}"), EVENTS + 8);
            registry.connect(APP, options(), &handle).unwrap();
            (handle, rx)
        })
        .collect();
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            start.wait();
            for i in 0..EVENTS {
                registry.fan_out(&envelope("cache-race", &i.to_string()));
            }
        });
        scope.spawn(|| {
            start.wait();
            for (handle, _) in &sockets {
                registry.subscribe(APP, "cache-race", handle, None).unwrap();
            }
        });
    });
    for (handle, mut rx) in sockets {
        let seen: Vec<usize> = drain(&mut rx)
            .iter()
            .filter(|f| f["event"] == "ev")
            .map(|f| f["data"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            seen.windows(2).all(|w| w[0] + 1 == w[1]),
            "socket {} saw {:?}",
            handle.socket_id,
            &seen[..seen.len().min(5)]
        );
    }
}

#[test]
fn a_cache_replay_carries_the_id_to_opted_in_sockets_only() {
    let registry = registry();
    let event = envelope("cache-prices", "9");
    registry.fan_out(&event);
    let (stock, mut rx_stock) = socket(&registry, "1.1");
    let (ids, mut rx_ids) = SocketHandle::new("1.2", 64);
    let ids = ids.with_event_ids();
    registry.connect(APP, options(), &ids).unwrap();
    registry
        .subscribe(APP, "cache-prices", &stock, None)
        .unwrap();
    registry.subscribe(APP, "cache-prices", &ids, None).unwrap();
    let stock_frames = drain(&mut rx_stock);
    assert_eq!(stock_frames[1]["data"], "9");
    assert!(stock_frames[1].get("id").is_none());
    let id_frames = drain(&mut rx_ids);
    assert_eq!(id_frames[1]["data"], "9");
    assert_eq!(id_frames[1]["id"], event.id.to_string());
}
