//! Remote nodes and cluster-wide transitions.

use super::*;
use crate::registry::sync::MAX_PENDING_CHANGES;

#[test]
fn remote_nodes_join_presence_and_occupancy() {
    let a = registry();
    let (b, _) = Registry::new(2, config());
    let (local, mut rx) = socket(&a, "1.1");
    a.subscribe(APP, "presence-room", &local, member("u1"))
        .unwrap();
    drain(&mut rx);
    let (remote, _rx_remote) = SocketHandle::new("2.1", 8);
    b.connect(APP, options(), &remote).unwrap();
    b.subscribe(APP, "presence-room", &remote, member("u2"))
        .unwrap();
    tell(&b, &a, false);
    let added = drain(&mut rx);
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["event"], "pusher_internal:member_added");
    assert_eq!(data(&added[0])["user_id"], "u2");
    assert_eq!(
        a.occupancy(APP, "presence-room"),
        Occupancy {
            subscriptions: 2,
            users: 2
        }
    );
    assert_eq!(a.connections(APP), 2);
    assert_eq!(a.occupied(APP, "presence-").len(), 1);
    // The heartbeat, nothing having changed, changes nothing.
    tell(&b, &a, true);
    assert!(drain(&mut rx).is_empty());
    // A user present on both nodes does not leave when one node forgets it.
    let (second, _rx_second) = SocketHandle::new("2.2", 8);
    b.connect(APP, options(), &second).unwrap();
    b.subscribe(APP, "presence-room", &second, member("u1"))
        .unwrap();
    tell(&b, &a, false);
    assert!(drain(&mut rx).is_empty());
    a.forget_node(2);
    let removed = drain(&mut rx);
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(data(&removed[0])["user_id"], "u2");
    assert_eq!(a.occupancy(APP, "presence-room").users, 1);
    assert!(a.stale_nodes(Duration::ZERO).is_empty());
    // Its next heartbeat brings it back.
    tell(&b, &a, true);
    assert_eq!(a.occupancy(APP, "presence-room").users, 2);
    // Our own messages are ignored.
    tell(&a, &a, true);
    assert_eq!(a.occupancy(APP, "presence-room").subscriptions, 3);
}

fn taken(transitions: &mut mpsc::Receiver<Transition>) -> Vec<Transition> {
    let mut taken = Vec::new();
    while let Ok(transition) = transitions.try_recv() {
        taken.push(transition);
    }
    taken
}

fn occupied(channel: &str) -> Transition {
    Transition::ChannelOccupied {
        app_id: APP.into(),
        channel: channel.into(),
    }
}

fn vacated(channel: &str) -> Transition {
    Transition::ChannelVacated {
        app_id: APP.into(),
        channel: channel.into(),
    }
}

#[test]
fn local_changes_are_cluster_wide_transitions() {
    let registry = registry();
    let mut transitions = registry.transitions();
    let (a, _rx_a) = socket(&registry, "1.1");
    let (b, _rx_b) = socket(&registry, "1.2");
    let room = "presence-room";
    registry.subscribe(APP, room, &a, member("u1")).unwrap();
    assert_eq!(
        taken(&mut transitions),
        [
            occupied(room),
            Transition::MemberAdded {
                app_id: APP.into(),
                channel: room.into(),
                user_id: "u1".into()
            }
        ]
    );
    // The same user's second socket, then its first one leaving: nothing cluster-wide.
    registry.subscribe(APP, room, &b, member("u1")).unwrap();
    registry.unsubscribe(APP, room, "1.1");
    assert_eq!(taken(&mut transitions), []);
    registry.disconnect(APP, "1.2", &[room.into()]);
    assert_eq!(
        taken(&mut transitions),
        [
            Transition::MemberRemoved {
                app_id: APP.into(),
                channel: room.into(),
                user_id: "u1".into()
            },
            vacated(room)
        ]
    );
    // A channel another node occupies is not occupied again here, nor vacated when we leave.
    let (other, _) = Registry::new(2, config());
    let (remote, _rx_remote) = SocketHandle::new("2.1", 8);
    other.connect(APP, options(), &remote).unwrap();
    other.subscribe(APP, "news", &remote, None).unwrap();
    tell(&other, &registry, false);
    assert_eq!(taken(&mut transitions), [occupied("news")]);
    registry.subscribe(APP, "news", &a, None).unwrap();
    registry.unsubscribe(APP, "news", "1.1");
    assert_eq!(taken(&mut transitions), []);
    registry.forget_node(2);
    assert_eq!(taken(&mut transitions), [vacated("news")]);
}

#[test]
fn a_full_transition_queue_drops_new_transitions_without_blocking() {
    let (registry, _) = Registry::new(
        1,
        RegistryConfig {
            max_channels_per_connection: usize::MAX,
            ..config()
        },
    );
    let mut transitions = registry.transitions();
    let (a, _rx) = SocketHandle::new("1.1", 2 * TRANSITIONS_CAPACITY);
    registry.connect(APP, options(), &a).unwrap();
    for i in 0..TRANSITIONS_CAPACITY + 10 {
        registry.subscribe(APP, &format!("c{i}"), &a, None).unwrap();
    }
    let kept = taken(&mut transitions);
    assert_eq!(kept.len(), TRANSITIONS_CAPACITY);
    assert_eq!(kept[0], occupied("c0"), "the oldest are kept");
    // Room again: what follows is delivered.
    registry.unsubscribe(APP, "c0", "1.1");
    assert_eq!(taken(&mut transitions), [vacated("c0")]);
}

#[test]
fn changes_travel_as_numbered_deltas_one_per_thing_changed() {
    let a = registry();
    let (b, _) = Registry::new(2, config());
    assert!(matches!(
        tell(&b, &a, false)[..],
        [Control::Snapshot { last: true, .. }]
    ));
    let sockets: Vec<_> = (1..=3)
        .map(|i| {
            let (s, rx) = SocketHandle::new(&format!("2.{i}"), 8);
            b.connect(APP, options(), &s).unwrap();
            b.subscribe(APP, "news", &s, None).unwrap();
            (s, rx)
        })
        .collect();
    b.unsubscribe(APP, "news", &sockets[2].0.socket_id);
    let messages = tell(&b, &a, false);
    let [Control::Delta { changes, .. }] = &messages[..] else {
        panic!("one delta: {messages:?}");
    };
    assert_eq!(
        changes,
        &[
            Change::Connections {
                app_id: APP.into(),
                count: 3
            },
            Change::Subscriptions {
                app_id: APP.into(),
                channel: "news".into(),
                count: 2
            }
        ]
    );
    assert_eq!(a.occupancy(APP, "news").subscriptions, 2);
    assert_eq!(a.connections(APP), 3);
    assert!(tell(&b, &a, false).is_empty(), "nothing changed");
    // The heartbeat carries the last delta's number: nothing for `a` to replace.
    let [Control::Delta { seq: last, .. }] = messages[..] else {
        unreachable!()
    };
    assert!(matches!(
        tell(&b, &a, true)[..],
        [Control::Snapshot { seq, .. }] if seq == last
    ));
}

#[test]
fn a_lost_delta_is_repaired_by_the_snapshot_the_receiver_asks_for() {
    let (a, mut a_outbox) = Registry::new(1, config());
    let (b, _) = Registry::new(2, config());
    tell(&b, &a, false);
    let (watcher, mut rx) = socket(&a, "1.1");
    a.subscribe(APP, "presence-room", &watcher, member("u1"))
        .unwrap();
    drain(&mut rx);
    let join = |id: &str| {
        let (s, rx) = SocketHandle::new(&format!("2.{id}"), 8);
        b.connect(APP, options(), &s).unwrap();
        b.subscribe(APP, "presence-room", &s, member(id)).unwrap();
        (s, rx)
    };
    let _u2 = join("u2");
    let lost = b.outgoing(false);
    assert_eq!(lost.len(), 1);
    let _u3 = join("u3");
    tell(&b, &a, false);
    assert!(
        drain(&mut rx).is_empty(),
        "a delta after a gap is not applied"
    );
    let resync = a_outbox.try_recv().unwrap();
    assert_eq!(resync, Control::Resync { node: 2 });
    b.receive(resync);
    assert!(matches!(
        tell(&b, &a, false)[..],
        [Control::Snapshot { .. }]
    ));
    let mut added: Vec<String> = drain(&mut rx)
        .iter()
        .map(|f| data(f)["user_id"].as_str().unwrap().to_owned())
        .collect();
    added.sort();
    assert_eq!(added, ["u2", "u3"]);
}

#[test]
fn too_many_changes_at_once_become_one_snapshot_in_bounded_parts() {
    let a = registry();
    let (b, _) = Registry::new(
        2,
        RegistryConfig {
            max_channels_per_connection: usize::MAX,
            ..config()
        },
    );
    tell(&b, &a, false);
    let (s, _rx) = SocketHandle::new("2.1", 2 * MAX_PENDING_CHANGES);
    b.connect(APP, options(), &s).unwrap();
    for i in 0..MAX_PENDING_CHANGES {
        b.subscribe(APP, &format!("channel-{i}"), &s, None).unwrap();
    }
    let messages = tell(&b, &a, false);
    assert!(messages.len() > 1);
    for message in &messages {
        assert!(matches!(message, Control::Snapshot { .. }), "{message:?}");
        assert!(message.encode().len() <= protocol::control::MAX_CONTROL_BYTES);
    }
    assert_eq!(a.occupied(APP, "channel-").len(), MAX_PENDING_CHANGES);
    assert_eq!(a.connections(APP), 1);
}

#[test]
fn the_lowest_node_known_alive_leads() {
    let (high, _) = Registry::new(9, config());
    let (low, _) = Registry::new(3, config());
    assert_eq!(high.leader(), 9, "alone, a node leads");
    assert_eq!(high.heard_at(3), None);
    tell(&low, &high, true);
    assert_eq!(high.leader(), 3);
    assert!(high.heard_at(3).is_some());
    tell(&high, &low, true);
    assert_eq!(low.leader(), 3, "a higher node does not take over");
    high.forget_node(3);
    assert_eq!(
        high.leader(),
        9,
        "the leader's successor once it is forgotten"
    );
}
