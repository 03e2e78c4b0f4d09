//! Local sockets: delivery, presence, limits, counts, watchlists.

use super::*;

#[test]
fn delivers_to_subscribers_except_excluded() {
    let registry = registry();
    let (a, mut rx_a) = socket(&registry, "1.1");
    let (b, mut rx_b) = socket(&registry, "1.2");
    assert_eq!(registry.subscribe(APP, "news", &a, None), Ok(true));
    assert_eq!(registry.subscribe(APP, "news", &a, None), Ok(false));
    assert_eq!(registry.subscribe(APP, "news", &b, None), Ok(true));
    drain(&mut rx_a);
    drain(&mut rx_b);
    let mut ev = envelope("news", "{}");
    ev.socket_id = Some("1.1".into());
    assert_eq!(registry.fan_out(&ev), 1);
    assert!(rx_a.try_recv().is_none());
    assert_eq!(
        &*rx_b.try_recv().unwrap().frame,
        r#"{"event":"ev","channel":"news","data":"{}"}"#
    );
}

#[test]
fn apps_and_channels_are_isolated() {
    let registry = registry();
    let (a, mut rx) = SocketHandle::new("1.1", 8);
    registry.connect("other-app", options(), &a).unwrap();
    registry.subscribe("other-app", "news", &a, None).unwrap();
    registry.subscribe(APP, "sports", &a, None).unwrap();
    drain(&mut rx);
    assert_eq!(registry.fan_out(&envelope("news", "x")), 0);
    assert!(rx.try_recv().is_none());
    assert_eq!(registry.occupied("other-app", "").len(), 1);
    assert_eq!(registry.occupied(APP, "").len(), 1);
    assert_eq!(registry.occupied("third", "").len(), 0);
}

#[test]
fn unsubscribe_and_disconnect_clean_up() {
    let registry = registry();
    let (a, mut rx) = socket(&registry, "1.1");
    registry.subscribe(APP, "news", &a, None).unwrap();
    assert_eq!(registry.occupancy(APP, "news").subscriptions, 1);
    assert!(registry.unsubscribe(APP, "news", "1.1"));
    assert!(!registry.unsubscribe(APP, "news", "1.1"));
    assert_eq!(registry.occupancy(APP, "news").subscriptions, 0);
    drain(&mut rx);
    assert_eq!(registry.fan_out(&envelope("news", "x")), 0);
    registry.subscribe(APP, "news", &a, None).unwrap();
    assert_eq!(registry.connections(APP), 1);
    registry.disconnect(APP, "1.1", &["news".into()]);
    assert_eq!(registry.connections(APP), 0);
    assert!(registry.occupied(APP, "").is_empty());
    assert!(registry.state.read().local.apps.is_empty());
}

#[test]
fn concurrent_handshakes_never_pass_the_quota() {
    const MAX: usize = 8;
    let registry = registry();
    let quota = AppOptions {
        max_connections: Some(MAX),
        ..options()
    };
    let start = std::sync::Barrier::new(3 * MAX);
    let admitted: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..3 * MAX)
            .map(|i| {
                let (registry, start) = (&registry, &start);
                scope.spawn(move || {
                    let id = format!("1.{i}");
                    let (socket, _rx) = SocketHandle::new(&id, 8);
                    start.wait();
                    registry.connect(APP, quota, &socket).map(|()| id)
                })
            })
            .collect();
        threads
            .into_iter()
            .filter_map(|t| t.join().unwrap().ok())
            .collect()
    });
    assert_eq!(admitted.len(), MAX);
    assert_eq!(registry.connections(APP), MAX);
    let (late, _rx) = SocketHandle::new("1.99", 8);
    assert_eq!(
        registry.connect(APP, quota, &late),
        Err(ConnectError::OverQuota { max: MAX })
    );
    // Remote connections count too.
    registry.disconnect(APP, &admitted[0], &[]);
    let (b, _) = Registry::new(2, config());
    let (remote, _rx) = SocketHandle::new("2.1", 8);
    b.connect(APP, options(), &remote).unwrap();
    tell(&b, &registry, false);
    assert_eq!(
        registry.connect(APP, quota, &late),
        Err(ConnectError::OverQuota { max: MAX })
    );
}

#[test]
fn channels_per_connection_are_limited() {
    let (registry, _) = Registry::new(
        1,
        RegistryConfig {
            max_channels_per_connection: 2,
            ..config()
        },
    );
    let (a, mut rx) = socket(&registry, "1.1");
    let (b, _rx_b) = socket(&registry, "1.2");
    assert_eq!(registry.subscribe(APP, "one", &a, None), Ok(true));
    assert_eq!(registry.subscribe(APP, "two", &a, None), Ok(true));
    assert_eq!(registry.subscribe(APP, "two", &a, None), Ok(false));
    assert_eq!(
        registry.subscribe(APP, "three", &a, None),
        Err(SubscribeError::TooManyChannels { max: 2 })
    );
    assert_eq!(registry.occupancy(APP, "three").subscriptions, 0);
    // The limit is per connection, and leaving a channel makes room.
    assert_eq!(registry.subscribe(APP, "three", &b, None), Ok(true));
    assert!(registry.unsubscribe(APP, "one", "1.1"));
    assert_eq!(registry.subscribe(APP, "three", &a, None), Ok(true));
    drain(&mut rx);
    assert_eq!(registry.fan_out(&envelope("two", "x")), 1);
}

#[test]
fn full_queue_closes_only_the_slow_socket() {
    let registry = registry();
    let (slow, _slow_rx) = SocketHandle::new("1.1", 2);
    let (fast, mut fast_rx) = SocketHandle::new("1.2", 16);
    registry.connect(APP, options(), &slow).unwrap();
    registry.connect(APP, options(), &fast).unwrap();
    registry.subscribe(APP, "news", &slow, None).unwrap();
    registry.subscribe(APP, "news", &fast, None).unwrap();
    drain(&mut fast_rx);
    for i in 0..3 {
        registry.fan_out(&envelope("news", &i.to_string()));
        assert!(fast_rx.try_recv().is_some());
    }
    assert!(slow.close_signal().is_closed());
    assert!(!fast.close_signal().is_closed());
}

#[test]
fn close_channel_closes_only_its_subscribers() {
    let registry = registry();
    let (a, _rx_a) = socket(&registry, "1.1");
    let (b, _rx_b) = socket(&registry, "1.2");
    registry.subscribe(APP, "lagging", &a, None).unwrap();
    registry.subscribe(APP, "other", &b, None).unwrap();
    assert_eq!(registry.close_channel(APP, "lagging"), 1);
    assert!(a.close_signal().is_closed());
    assert!(!b.close_signal().is_closed());
    assert_eq!(registry.close_channel(APP, "nobody"), 0);
}

#[test]
fn events_keep_order_per_socket() {
    let registry = registry();
    let (a, mut rx) = socket(&registry, "1.1");
    registry.subscribe(APP, "news", &a, None).unwrap();
    drain(&mut rx);
    for i in 0..20 {
        registry.fan_out(&envelope("news", &i.to_string()));
    }
    let data: Vec<String> = drain(&mut rx)
        .iter()
        .map(|f| f["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(data, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn presence_join_and_leave_semantics() {
    let registry = registry();
    let ch = "presence-room";
    let (u1a, mut rx1a) = socket(&registry, "1.1");
    let (u1b, mut rx1b) = socket(&registry, "1.2");
    let (u2, mut rx2) = socket(&registry, "1.3");
    registry.subscribe(APP, ch, &u1a, member("u1")).unwrap();
    let succeeded = drain(&mut rx1a);
    assert_eq!(succeeded.len(), 1);
    assert_eq!(
        data(&succeeded[0]),
        serde_json::json!({"presence":{"ids":["u1"],"hash":{"u1":{"name":"u1"}},"count":1}})
    );
    registry.subscribe(APP, ch, &u2, member("u2")).unwrap();
    let joined = drain(&mut rx1a);
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["event"], "pusher_internal:member_added");
    assert_eq!(data(&joined[0])["user_id"], "u2");
    assert_eq!(events(&mut rx2), ["pusher_internal:subscription_succeeded"]);
    // The same user's second socket: nobody hears member_added; the list stays unique.
    registry.subscribe(APP, ch, &u1b, member("u1")).unwrap();
    assert!(drain(&mut rx1a).is_empty());
    assert!(drain(&mut rx2).is_empty());
    assert_eq!(data(&drain(&mut rx1b)[0])["presence"]["count"], 2);
    assert_eq!(
        registry.occupancy(APP, ch),
        Occupancy {
            subscriptions: 3,
            users: 2
        }
    );
    // First of u1's sockets leaves: u1 is still there.
    registry.unsubscribe(APP, ch, "1.1");
    assert!(drain(&mut rx2).is_empty());
    // Last one leaves: member_removed, to the others only.
    registry.disconnect(APP, "1.2", &[ch.into()]);
    let removed = drain(&mut rx2);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["event"], "pusher_internal:member_removed");
    assert_eq!(data(&removed[0])["user_id"], "u1");
    assert!(drain(&mut rx1b).is_empty());
}

#[test]
fn presence_member_limit() {
    let registry = registry();
    let limited = AppOptions {
        max_presence_members: 2,
        ..options()
    };
    let mut sockets = Vec::new();
    for (i, user) in ["a", "b", "c", "a"].iter().enumerate() {
        let (s, rx) = SocketHandle::new(&format!("1.{i}"), 8);
        registry.connect(APP, limited, &s).unwrap();
        let result = registry.subscribe(APP, "presence-x", &s, member(user));
        sockets.push((s, rx, result));
    }
    assert_eq!(sockets[0].2, Ok(true));
    assert_eq!(sockets[1].2, Ok(true));
    assert_eq!(sockets[2].2, Err(SubscribeError::PresenceFull { max: 2 }));
    assert_eq!(
        sockets[3].2,
        Ok(true),
        "an existing member may add a socket"
    );
}

#[test]
fn subscription_count_when_enabled() {
    let registry = registry();
    let counting = AppOptions {
        subscription_count: true,
        ..options()
    };
    let (a, mut rx_a) = SocketHandle::new("1.1", 16);
    let (b, mut rx_b) = SocketHandle::new("1.2", 16);
    registry.connect(APP, counting, &a).unwrap();
    registry.connect(APP, counting, &b).unwrap();
    registry.subscribe(APP, "news", &a, None).unwrap();
    let frames = drain(&mut rx_a);
    assert_eq!(frames[1]["event"], "pusher_internal:subscription_count");
    assert_eq!(data(&frames[1])["subscription_count"], 1);
    registry.subscribe(APP, "news", &b, None).unwrap();
    assert_eq!(data(&drain(&mut rx_a)[0])["subscription_count"], 2);
    assert_eq!(data(&drain(&mut rx_b)[1])["subscription_count"], 2);
    registry.unsubscribe(APP, "news", "1.2");
    assert_eq!(data(&drain(&mut rx_a)[0])["subscription_count"], 1);
    // Not for presence channels, not for apps without the option.
    registry
        .subscribe(APP, "presence-x", &a, member("u"))
        .unwrap();
    assert_eq!(
        events(&mut rx_a),
        ["pusher_internal:subscription_succeeded"]
    );
    let (c, mut rx_c) = socket(&registry, "1.3");
    registry.subscribe("plain", "news", &c, None).unwrap();
    assert_eq!(
        events(&mut rx_c),
        ["pusher_internal:subscription_succeeded"]
    );
}

#[test]
fn subscription_count_is_throttled_above_100_and_flushed_later() {
    let registry = registry();
    let counting = AppOptions {
        subscription_count: true,
        ..options()
    };
    let (watcher, mut rx) = SocketHandle::new("0.0", 512);
    registry.connect(APP, counting, &watcher).unwrap();
    registry.subscribe(APP, "big", &watcher, None).unwrap();
    let mut others = Vec::new();
    for i in 1..=101 {
        let (s, other_rx) = SocketHandle::new(&format!("1.{i}"), 512);
        registry.connect(APP, counting, &s).unwrap();
        registry.subscribe(APP, "big", &s, None).unwrap();
        others.push((s, other_rx));
    }
    let counts: Vec<u64> = drain(&mut rx)
        .iter()
        .filter(|f| f["event"] == "pusher_internal:subscription_count")
        .map(|f| data(f)["subscription_count"].as_u64().unwrap())
        .collect();
    // Every change up to 100 is sent; above 100 within 5 s of the last one is held back.
    assert_eq!(counts.first(), Some(&1));
    assert_eq!(counts.last(), Some(&100));
    registry.flush_counts();
    assert!(
        drain(&mut rx).is_empty(),
        "still inside the throttle window"
    );
    let state = registry.state.read();
    assert!(state
        .local
        .count_pending
        .contains(&(APP.to_owned(), "big".to_owned())));
}

#[test]
fn watchlists_hear_online_and_offline() {
    let registry = registry();
    let (watcher, mut rx) = socket(&registry, "1.1");
    let me = SignedInUser {
        id: "me".into(),
        watchlist: vec!["friend".into(), "other".into()],
    };
    registry.sign_in(APP, &watcher, &me);
    let initial = drain(&mut rx);
    assert_eq!(
        data(&initial[0]),
        serde_json::json!({"events":[{"name":"offline","user_ids":["friend","other"]}]})
    );
    let (friend, _rx_f) = socket(&registry, "1.2");
    let friend_user = SignedInUser {
        id: "friend".into(),
        watchlist: vec![],
    };
    registry.sign_in(APP, &friend, &friend_user);
    assert_eq!(
        data(&drain(&mut rx)[0]),
        serde_json::json!({"events":[{"name":"online","user_ids":["friend"]}]})
    );
    registry.disconnect(APP, "1.2", &[]);
    assert_eq!(
        data(&drain(&mut rx)[0]),
        serde_json::json!({"events":[{"name":"offline","user_ids":["friend"]}]})
    );
    assert_eq!(registry.terminate_local(APP, "me"), 1);
    assert!(watcher.close_signal().is_closed());
}

#[test]
fn connection_peaks_are_the_highest_count_since_the_last_look() {
    let registry = registry();
    let none = Peak { now: 0, peak: 0 };
    assert_eq!(registry.connection_peak(APP), none);
    let (a, _rx_a) = socket(&registry, "1.1");
    let (b, _rx_b) = socket(&registry, "1.2");
    registry.disconnect(APP, &a.socket_id, &[]);
    registry.disconnect(APP, &b.socket_id, &[]);
    let (_c, _rx_c) = socket(&registry, "1.3");
    assert_eq!(
        registry.connection_peak(APP),
        Peak { now: 1, peak: 2 },
        "two at once, though only one is left"
    );
    assert_eq!(
        registry.connection_peak(APP),
        Peak { now: 1, peak: 1 },
        "the next second starts from now"
    );
    let (_d, _rx_d) = socket(&registry, "1.4");
    assert_eq!(registry.connection_peak(APP).peak, 2);
    registry.disconnect(APP, "1.4", &[]);
    assert_eq!(
        registry.connection_peak(APP),
        Peak { now: 1, peak: 2 },
        "the second began with two"
    );
    assert_eq!(registry.connection_peak("other-app"), none);
}

#[test]
fn the_debug_console_is_no_channel_of_the_app() {
    let registry = registry();
    let mut transitions = registry.transitions();
    let mut records = registry.debug_log();
    let (console, _rx_console) = socket(&registry, "1.1");
    registry
        .subscribe(APP, protocol::channel::DEBUG_CHANNEL, &console, None)
        .unwrap();
    assert!(
        transitions.try_recv().is_err(),
        "no channel_occupied for it"
    );
    assert!(
        records.try_recv().is_err(),
        "no record of the console itself"
    );
    let (client, _rx_client) = socket(&registry, "1.2");
    registry.subscribe(APP, "news", &client, None).unwrap();
    assert!(matches!(
        transitions.try_recv(),
        Ok(Transition::ChannelOccupied { .. })
    ));
    let subscribed = records.try_recv().unwrap();
    assert_eq!(
        subscribed.record,
        crate::Record::Subscribed {
            socket_id: "1.2".into(),
            channel: "news".into()
        }
    );
}

#[test]
fn subscription_peaks_are_the_most_on_this_node_since_the_last_look() {
    let registry = registry();
    let (a, _rx_a) = socket(&registry, "1.1");
    registry.subscribe(APP, "one", &a, None).unwrap();
    registry.subscribe(APP, "two", &a, None).unwrap();
    registry.unsubscribe(APP, "one", &a.socket_id);
    assert_eq!(registry.subscription_peak(APP), Peak { now: 1, peak: 2 });
    registry.disconnect(APP, &a.socket_id, &["two".into()]);
    assert_eq!(registry.subscription_peak(APP), Peak { now: 0, peak: 1 });
    assert_eq!(registry.subscription_peak(APP), Peak { now: 0, peak: 0 });
}

#[test]
fn opted_in_sockets_get_the_event_id_and_stock_frames_stay_byte_identical() {
    let registry = registry();
    let (stock_a, mut rx_stock_a) = socket(&registry, "1.1");
    let (stock_b, mut rx_stock_b) = socket(&registry, "1.2");
    let (ids_a, mut rx_ids_a) = SocketHandle::new("1.3", 64);
    let ids_a = ids_a.with_event_ids();
    let (ids_b, mut rx_ids_b) = SocketHandle::new("1.4", 64);
    let ids_b = ids_b.with_event_ids();
    for handle in [&ids_a, &ids_b] {
        registry.connect(APP, options(), handle).unwrap();
    }
    for handle in [&stock_a, &stock_b, &ids_a, &ids_b] {
        registry.subscribe(APP, "news", handle, None).unwrap();
    }
    for rx in [
        &mut rx_stock_a,
        &mut rx_stock_b,
        &mut rx_ids_a,
        &mut rx_ids_b,
    ] {
        drain(rx);
    }
    let mut event = envelope("news", r#"{"price":"1.5"}"#);
    event.id = "0192f1c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6".parse().unwrap();
    assert_eq!(registry.fan_out(&event), 4);
    let stock = rx_stock_a.try_recv().unwrap().frame;
    // Byte for byte what a stock Pusher client got before event ids existed.
    assert_eq!(
        &*stock,
        r#"{"event":"ev","channel":"news","data":"{\"price\":\"1.5\"}"}"#
    );
    let with_id = rx_ids_a.try_recv().unwrap().frame;
    assert_eq!(
        &*with_id,
        r#"{"event":"ev","channel":"news","data":"{\"price\":\"1.5\"}","id":"0192f1c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6"}"#
    );
    // Each kind encoded once and shared by its sockets.
    assert!(std::sync::Arc::ptr_eq(
        &stock,
        &rx_stock_b.try_recv().unwrap().frame
    ));
    assert!(std::sync::Arc::ptr_eq(
        &with_id,
        &rx_ids_b.try_recv().unwrap().frame
    ));
}
