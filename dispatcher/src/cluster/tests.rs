use std::collections::HashSet;

use super::*;

const APP: &str = "app";
const ROOM: &str = "presence-room";

/// This node's own sockets, as the cluster view asks about them.
#[derive(Default)]
struct FakeLocal {
    subscriptions: HashMap<String, usize>,
    members: HashSet<(String, String)>,
    signed_in: HashSet<String>,
}

impl LocalView for FakeLocal {
    fn subscriptions(&self, _app_id: &str, channel: &str) -> usize {
        self.subscriptions.get(channel).copied().unwrap_or(0)
    }
    fn has_member(&self, _app_id: &str, channel: &str, user_id: &str) -> bool {
        self.members
            .contains(&(channel.to_owned(), user_id.to_owned()))
    }
    fn is_signed_in(&self, _app_id: &str, user_id: &str) -> bool {
        self.signed_in.contains(user_id)
    }
}

/// A local subscriber on `channel`, so that notices for it are due.
fn listening(channel: &str) -> FakeLocal {
    FakeLocal {
        subscriptions: HashMap::from([(channel.to_owned(), 1)]),
        ..FakeLocal::default()
    }
}

/// A node's whole state: `channels` of (name, subscriptions, member ids), `users` signed in.
fn node(connections: usize, channels: &[(&str, usize, &[&str])], users: &[&str]) -> Vec<Change> {
    let mut changes = vec![Change::Connections {
        app_id: APP.into(),
        count: connections,
    }];
    for (name, subscriptions, members) in channels {
        changes.push(Change::Subscriptions {
            app_id: APP.into(),
            channel: (*name).into(),
            count: *subscriptions,
        });
        changes.extend(members.iter().map(|id| Change::MemberAdded {
            app_id: APP.into(),
            channel: (*name).into(),
            user_id: (*id).into(),
            user_info: Some(format!(r#"{{"n":"{id}"}}"#)),
        }));
    }
    changes.extend(users.iter().map(|u| Change::SignedIn {
        app_id: APP.into(),
        user_id: (*u).into(),
    }));
    changes
}

fn applied(heard: Heard) -> Effects {
    match heard {
        Heard::Applied(effects) => effects,
        Heard::Gap => panic!("a gap"),
    }
}

/// Replaces what the cluster knows of `node` with `state`, as a one-part snapshot with a new
/// number.
fn replace(cluster: &mut Cluster, node: u32, state: Vec<Change>, local: &FakeLocal) -> Effects {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    applied(cluster.snapshot(node, seq, 0, true, &state, local))
}

fn added(user_id: &str) -> Notice {
    Notice::MemberAdded {
        app_id: APP.into(),
        channel: ROOM.into(),
        member: Member {
            user_id: user_id.into(),
            user_info: Some(format!(r#"{{"n":"{user_id}"}}"#)),
        },
    }
}

fn removed(user_id: &str) -> Notice {
    Notice::MemberRemoved {
        app_id: APP.into(),
        channel: ROOM.into(),
        user_id: user_id.into(),
    }
}

fn count() -> Notice {
    Notice::Count {
        app_id: APP.into(),
        channel: ROOM.into(),
    }
}

fn member_added(user_id: &str) -> Transition {
    Transition::MemberAdded {
        app_id: APP.into(),
        channel: ROOM.into(),
        user_id: user_id.into(),
    }
}

fn member_removed(user_id: &str) -> Transition {
    Transition::MemberRemoved {
        app_id: APP.into(),
        channel: ROOM.into(),
        user_id: user_id.into(),
    }
}

fn occupied() -> Transition {
    Transition::ChannelOccupied {
        app_id: APP.into(),
        channel: ROOM.into(),
    }
}

fn vacated() -> Transition {
    Transition::ChannelVacated {
        app_id: APP.into(),
        channel: ROOM.into(),
    }
}

#[test]
fn a_remote_member_joins_and_leaves_once() {
    let local = listening(ROOM);
    let mut cluster = Cluster::default();
    let effects = replace(&mut cluster, 2, node(1, &[(ROOM, 1, &["u2"])], &[]), &local);
    assert_eq!(effects.notices, [count(), added("u2")]);
    assert_eq!(
        effects.transitions,
        [member_added("u2")],
        "the channel was occupied here already"
    );
    // The same state again changes nothing.
    let again = replace(&mut cluster, 2, node(1, &[(ROOM, 1, &["u2"])], &[]), &local);
    assert_eq!(again, Effects::default());
    // A second socket of u2 on the node: a count change only.
    let second = replace(&mut cluster, 2, node(2, &[(ROOM, 2, &["u2"])], &[]), &local);
    assert_eq!(second.notices, [count()]);
    assert!(second.transitions.is_empty());
    let left = replace(&mut cluster, 2, node(0, &[], &[]), &local);
    assert_eq!(left.notices, [removed("u2"), count()]);
    assert_eq!(left.transitions, [member_removed("u2")]);
    assert_eq!(cluster.subscriptions(APP, ROOM), 0);
    assert!(cluster.totals.is_empty(), "{:?}", cluster.totals);
}

#[test]
fn a_member_with_a_socket_elsewhere_neither_joins_nor_leaves() {
    // u1 has a local socket on the channel.
    let mut local = listening(ROOM);
    local.members.insert((ROOM.into(), "u1".into()));
    let mut cluster = Cluster::default();
    let effects = replace(&mut cluster, 2, node(1, &[(ROOM, 1, &["u1"])], &[]), &local);
    assert_eq!(effects.notices, [count()]);
    assert!(effects.transitions.is_empty());
    assert_eq!(
        replace(&mut cluster, 2, node(0, &[], &[]), &local).transitions,
        []
    );
    // u3 on two remote nodes: one member_added, one member_removed, whatever the order.
    let local = listening(ROOM);
    let mut cluster = Cluster::default();
    let first = replace(&mut cluster, 2, node(1, &[(ROOM, 1, &["u3"])], &[]), &local);
    assert_eq!(first.transitions, [member_added("u3")]);
    let second = replace(&mut cluster, 3, node(1, &[(ROOM, 1, &["u3"])], &[]), &local);
    assert_eq!(second.notices, [count()]);
    assert!(second.transitions.is_empty());
    assert_eq!(cluster.members(APP, ROOM).count(), 1);
    let gone = cluster.forget(2, &local).unwrap();
    assert_eq!(gone.notices, [count()]);
    assert!(gone.transitions.is_empty());
    let last = cluster.forget(3, &local).unwrap();
    assert_eq!(last.notices, [removed("u3"), count()]);
    assert_eq!(last.transitions, [member_removed("u3")]);
}

#[test]
fn a_forgotten_node_vacates_its_channels_once() {
    let local = FakeLocal::default();
    let mut cluster = Cluster::default();
    let state = node(3, &[(ROOM, 2, &["u1", "u2"]), ("news", 1, &[])], &["u1"]);
    let joined = replace(&mut cluster, 2, state, &local);
    assert!(joined.notices.contains(&Notice::Online {
        app_id: APP.into(),
        user_id: "u1".into()
    }));
    assert_eq!(joined.transitions.len(), 4, "{:?}", joined.transitions);
    // Occupied before its members arrive.
    let room: Vec<&Transition> = joined
        .transitions
        .iter()
        .filter(|t| !matches!(t, Transition::ChannelOccupied { channel, .. } if channel == "news"))
        .collect();
    assert_eq!(room[0], &occupied());
    assert_eq!(cluster.connections(APP), 3);
    assert!(cluster.is_signed_in(APP, "u1"));
    assert_eq!(cluster.channels(APP).count(), 2);

    let gone = cluster.forget(2, &local).unwrap();
    let mut vacated_channels: Vec<&str> = gone
        .transitions
        .iter()
        .filter_map(|t| match t {
            Transition::ChannelVacated { channel, .. } => Some(channel.as_str()),
            _ => None,
        })
        .collect();
    vacated_channels.sort();
    assert_eq!(vacated_channels, ["news", ROOM]);
    let room: Vec<&Transition> = gone
        .transitions
        .iter()
        .filter(|t| !matches!(t, Transition::ChannelVacated { channel, .. } if channel == "news"))
        .collect();
    assert_eq!(room.len(), 3);
    assert_eq!(room[2], &vacated(), "vacated after its members left");
    assert_eq!(
        gone.notices,
        [Notice::Offline {
            app_id: APP.into(),
            user_id: "u1".into()
        }],
        "no local subscribers: only the watchers hear"
    );
    assert_eq!(cluster.connections(APP), 0);
    assert!(cluster.totals.is_empty());
    assert!(cluster.forget(2, &local).is_none(), "only once");
}

#[test]
fn channels_occupied_here_are_not_occupied_again() {
    let local = listening(ROOM);
    let mut cluster = Cluster::default();
    let effects = replace(&mut cluster, 2, node(1, &[(ROOM, 1, &[])], &[]), &local);
    assert!(effects.transitions.is_empty());
    let left = cluster.forget(2, &local).unwrap();
    assert!(left.transitions.is_empty(), "still subscribed here");
    let far = FakeLocal::default();
    replace(&mut cluster, 2, node(1, &[(ROOM, 1, &[])], &[]), &far);
    let other = replace(&mut cluster, 3, node(1, &[(ROOM, 4, &[])], &[]), &far);
    assert!(other.transitions.is_empty(), "occupied by node 2 already");
    assert_eq!(cluster.subscriptions(APP, ROOM), 5);
    cluster.forget(2, &far);
    assert_eq!(cluster.forget(3, &far).unwrap().transitions, [vacated()]);
}

#[test]
fn users_online_anywhere_are_online_once() {
    let mut local = FakeLocal::default();
    local.signed_in.insert("here".into());
    let mut cluster = Cluster::default();
    let first = replace(&mut cluster, 2, node(2, &[], &["here", "there"]), &local);
    assert_eq!(
        first.notices,
        [Notice::Online {
            app_id: APP.into(),
            user_id: "there".into()
        }]
    );
    assert!(replace(&mut cluster, 3, node(1, &[], &["there"]), &local)
        .notices
        .is_empty());
    assert!(cluster.forget(2, &local).unwrap().notices.is_empty());
    assert!(cluster.is_signed_in(APP, "there"));
}

#[tokio::test(start_paused = true)]
async fn silent_nodes_are_stale() {
    let local = FakeLocal::default();
    let mut cluster = Cluster::default();
    replace(&mut cluster, 2, node(1, &[], &[]), &local);
    tokio::time::advance(Duration::from_secs(3)).await;
    replace(&mut cluster, 3, node(1, &[], &[]), &local);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(cluster.stale(Duration::from_secs(5)), [2]);
}

fn join(user_id: &str) -> Change {
    Change::MemberAdded {
        app_id: APP.into(),
        channel: ROOM.into(),
        user_id: user_id.into(),
        user_info: Some(format!(r#"{{"n":"{user_id}"}}"#)),
    }
}

#[test]
fn deltas_apply_in_order_and_a_gap_waits_for_the_next_snapshot() {
    let local = listening(ROOM);
    let mut cluster = Cluster::default();
    // A node never heard of: ask it for a snapshot, once.
    assert_eq!(cluster.delta(2, 7, &[join("u1")], &local), Heard::Gap);
    assert_eq!(
        cluster.delta(2, 8, &[join("u1")], &local),
        Heard::Applied(Effects::default())
    );
    assert!(
        !cluster.has_member(APP, ROOM, "u1"),
        "deltas wait for a snapshot"
    );
    let state = node(1, &[(ROOM, 1, &["u2"])], &[]);
    let synced = applied(cluster.snapshot(2, 10, 0, true, &state, &local));
    assert!(synced.notices.contains(&added("u2")));
    // The next number is applied; a repeat is not.
    let next = applied(cluster.delta(2, 11, &[join("u3")], &local));
    assert_eq!(next.notices, [added("u3")]);
    assert_eq!(
        cluster.delta(2, 11, &[join("u3")], &local),
        Heard::Applied(Effects::default())
    );
    // 12 is lost: 13 is a gap, asked about once; what we knew stays meanwhile.
    let leave = Change::MemberRemoved {
        app_id: APP.into(),
        channel: ROOM.into(),
        user_id: "u3".into(),
    };
    assert_eq!(
        cluster.delta(2, 13, std::slice::from_ref(&leave), &local),
        Heard::Gap
    );
    assert_eq!(
        cluster.delta(2, 14, &[leave], &local),
        Heard::Applied(Effects::default())
    );
    assert!(cluster.has_member(APP, ROOM, "u3"));
    // The snapshot (the heartbeat after 14) replaces the node's state: u3 left meanwhile.
    let healed = applied(cluster.snapshot(2, 14, 0, true, &state, &local));
    assert_eq!(healed.notices, [removed("u3")]);
    assert_eq!(healed.transitions, [member_removed("u3")]);
    let after = applied(cluster.delta(2, 15, &[join("u4")], &local));
    assert_eq!(after.notices, [added("u4")]);
}

#[test]
fn a_heartbeat_with_the_last_applied_number_is_only_a_sign_of_life() {
    let local = listening(ROOM);
    let mut cluster = Cluster::default();
    let state = node(1, &[(ROOM, 1, &["u1"])], &[]);
    applied(cluster.snapshot(2, 5, 0, true, &state, &local));
    // Whatever it says: every delta up to 5 was applied, so there is nothing to replace.
    let other = node(1, &[(ROOM, 1, &["u9"])], &[]);
    assert_eq!(
        cluster.snapshot(2, 5, 0, true, &other, &local),
        Heard::Applied(Effects::default())
    );
    assert!(cluster.has_member(APP, ROOM, "u1"));
    assert!(!cluster.has_member(APP, ROOM, "u9"));
}

#[test]
fn a_snapshot_in_parts_applies_at_its_last_part_and_a_missing_part_is_a_gap() {
    let local = listening(ROOM);
    let mut cluster = Cluster::default();
    let parts = [vec![join("u1")], vec![join("u2")], vec![join("u3")]];
    let subscribed = node(1, &[(ROOM, 3, &[])], &[]);
    assert_eq!(
        cluster.snapshot(2, 3, 0, false, &subscribed, &local),
        Heard::Applied(Effects::default())
    );
    for (part, changes) in (1..).zip(&parts[..2]) {
        assert_eq!(
            cluster.snapshot(2, 3, part, false, changes, &local),
            Heard::Applied(Effects::default()),
            "nothing until the last part"
        );
    }
    let done = applied(cluster.snapshot(2, 3, 3, true, &parts[2], &local));
    assert_eq!(cluster.members(APP, ROOM).count(), 3);
    assert_eq!(done.transitions.len(), 3);
    // The next snapshot loses its part 1: a gap, and the state stays as it was.
    cluster.snapshot(2, 9, 0, false, &node(0, &[], &[]), &local);
    assert_eq!(cluster.snapshot(2, 9, 2, true, &[], &local), Heard::Gap);
    assert_eq!(cluster.members(APP, ROOM).count(), 3);
    // A part whose beginning was missed is ignored.
    assert_eq!(
        cluster.snapshot(2, 11, 1, true, &[], &local),
        Heard::Applied(Effects::default())
    );
    assert_eq!(cluster.members(APP, ROOM).count(), 3);
}
