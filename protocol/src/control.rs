//! Control messages gateway nodes exchange over the bus (routing key `ctl`) so that presence,
//! occupancy, signed-in users and `terminate_connections` are correct across the cluster.
//!
//! A node tells the others what changed in its local state as numbered [`Control::Delta`]s
//! (`seq` counts up by one per message), and its whole state as a [`Control::Snapshot`] in
//! parts: at start, periodically as a heartbeat, and when another node asks for it with
//! [`Control::Resync`] because it saw a gap in the numbers. A snapshot carries the `seq` of the
//! node's last delta, so a receiver that saw every delta up to it has nothing to do, and one
//! that missed some replaces what it knew of the node. Every message is at most
//! [`MAX_CONTROL_BYTES`] encoded (a single change larger than that travels alone).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most bytes of one encoded control message, beyond which changes go in the next one.
pub const MAX_CONTROL_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// What changed in the node's state since its message `seq - 1`.
    Delta {
        node: u32,
        seq: u64,
        changes: Vec<Change>,
    },
    /// Part `part` (from 0) of the node's whole state as of its message `seq`, as the changes
    /// that build it from nothing; `last` ends it.
    Snapshot {
        node: u32,
        seq: u64,
        part: u32,
        last: bool,
        changes: Vec<Change>,
    },
    /// Asks `node` for a snapshot: the sender missed some of its deltas.
    Resync { node: u32 },
    /// The node is shutting down: forget its state now rather than after the timeout.
    Goodbye { node: u32 },
    /// Close every connection signed in as `user_id` with 4009.
    Terminate { app_id: String, user_id: String },
    /// Node `node` is about to answer a cluster-wide query: every other node publishes what it
    /// has not yet announced, then [`Control::Synced`].
    Sync { node: u32, id: u64 },
    /// Node `from` has published everything it knew before `to`'s [`Control::Sync`] `id`.
    Synced { to: u32, from: u32, id: u64 },
    /// Debug-console records of what happened on `node`, for the consoles watching their apps
    /// on other nodes.
    Debug {
        node: u32,
        records: Vec<RelayedRecord>,
    },
}

/// One debug-console record of an app, as the console reads it (its JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedRecord {
    pub app_id: String,
    pub record: String,
}

/// One change of a node's local state, stated as the new value, so that applying it twice is
/// harmless.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The node now has `count` connections of the app.
    Connections { app_id: String, count: usize },
    /// The node now has `count` subscriptions to the channel.
    Subscriptions {
        app_id: String,
        channel: String,
        count: usize,
    },
    /// The user has a socket on the node's presence channel, with this `user_info`.
    MemberAdded {
        app_id: String,
        channel: String,
        user_id: String,
        user_info: Option<String>,
    },
    /// The user has no socket left on the node's presence channel.
    MemberRemoved {
        app_id: String,
        channel: String,
        user_id: String,
    },
    /// The user is signed in on the node.
    SignedIn { app_id: String, user_id: String },
    /// The user has no signed-in socket left on the node.
    SignedOut { app_id: String, user_id: String },
}

#[derive(Debug, Error)]
#[error("not a control message: {0}")]
pub struct ControlError(#[from] serde_json::Error);

/// What a message costs besides its changes: the type, node, seq and part fields.
const MESSAGE_OVERHEAD: usize = 128;

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }

    pub fn decode(body: &[u8]) -> Result<Control, ControlError> {
        Ok(serde_json::from_slice(body)?)
    }

    /// `changes` as deltas numbered from `first_seq`, each at most `max_bytes` encoded; none
    /// when there are no changes.
    pub fn deltas(node: u32, first_seq: u64, changes: Vec<Change>, max_bytes: usize) -> Vec<Self> {
        (first_seq..)
            .zip(split(changes, max_bytes))
            .map(|(seq, changes)| Control::Delta { node, seq, changes })
            .collect()
    }

    /// A whole state as snapshot parts, each at most `max_bytes` encoded; one empty part for an
    /// empty state.
    pub fn snapshot(node: u32, seq: u64, changes: Vec<Change>, max_bytes: usize) -> Vec<Self> {
        let mut parts = split(changes, max_bytes);
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let count = parts.len();
        (0..)
            .zip(parts)
            .map(|(part, changes)| Control::Snapshot {
                node,
                seq,
                part,
                last: part as usize + 1 == count,
                changes,
            })
            .collect()
    }
}

/// Cuts `changes`, in order, into runs whose message is at most `max_bytes` encoded.
fn split(changes: Vec<Change>, max_bytes: usize) -> Vec<Vec<Change>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut size = MESSAGE_OVERHEAD;
    for change in changes {
        // The change's JSON and its comma.
        let len = serde_json::to_vec(&change)
            .expect("changes always serialize")
            .len()
            + 1;
        if !run.is_empty() && size + len > max_bytes {
            runs.push(std::mem::take(&mut run));
            size = MESSAGE_OVERHEAD;
        }
        size += len;
        run.push(change);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize) -> Change {
        Change::MemberAdded {
            app_id: "1".into(),
            channel: "presence-a".into(),
            user_id: format!("u{i}"),
            user_info: Some(format!(r#"{{"name":"user \"{i}\""}}"#)),
        }
    }

    #[test]
    fn round_trip() {
        let messages = [
            Control::Delta {
                node: 7,
                seq: 3,
                changes: vec![
                    Change::Connections {
                        app_id: "1".into(),
                        count: 2,
                    },
                    Change::Subscriptions {
                        app_id: "1".into(),
                        channel: "presence-a".into(),
                        count: 2,
                    },
                    member(1),
                    Change::MemberRemoved {
                        app_id: "1".into(),
                        channel: "presence-a".into(),
                        user_id: "u2".into(),
                    },
                    Change::SignedIn {
                        app_id: "1".into(),
                        user_id: "u1".into(),
                    },
                    Change::SignedOut {
                        app_id: "1".into(),
                        user_id: "u3".into(),
                    },
                ],
            },
            Control::Snapshot {
                node: 7,
                seq: 3,
                part: 0,
                last: true,
                changes: vec![member(2)],
            },
            Control::Resync { node: 7 },
            Control::Goodbye { node: 7 },
            Control::Terminate {
                app_id: "1".into(),
                user_id: "u1".into(),
            },
            Control::Sync { node: 3, id: 9 },
            Control::Synced {
                to: 3,
                from: 7,
                id: 9,
            },
            Control::Debug {
                node: 7,
                records: vec![RelayedRecord {
                    app_id: "1".into(),
                    record: r#"{"type":"subscribed","t":1}"#.into(),
                }],
            },
        ];
        for message in messages {
            assert_eq!(Control::decode(&message.encode()).unwrap(), message);
        }
        assert!(Control::decode(b"[]").is_err());
    }

    #[test]
    fn big_deltas_are_split_into_bounded_numbered_messages() {
        let changes: Vec<Change> = (0..5000).map(member).collect();
        let deltas = Control::deltas(7, 10, changes.clone(), 16 * 1024);
        assert!(deltas.len() > 1);
        let mut rebuilt = Vec::new();
        for (expected_seq, delta) in (10..).zip(&deltas) {
            assert!(delta.encode().len() <= 16 * 1024);
            match delta {
                Control::Delta { node, seq, changes } => {
                    assert_eq!((*node, *seq), (7, expected_seq));
                    rebuilt.extend(changes.iter().cloned());
                }
                other => panic!("not a delta: {other:?}"),
            }
        }
        assert_eq!(rebuilt, changes, "every change once, in order");
        assert!(Control::deltas(7, 10, Vec::new(), 16 * 1024).is_empty());
    }

    #[test]
    fn snapshots_are_split_into_parts_the_last_one_marked() {
        let changes: Vec<Change> = (0..5000).map(member).collect();
        let parts = Control::snapshot(7, 42, changes.clone(), 16 * 1024);
        let count = parts.len();
        assert!(count > 1);
        let mut rebuilt = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(part.encode().len() <= 16 * 1024);
            match part {
                Control::Snapshot {
                    node: 7,
                    seq: 42,
                    part,
                    last,
                    changes,
                } => {
                    assert_eq!(*part as usize, i);
                    assert_eq!(*last, i + 1 == count);
                    rebuilt.extend(changes.iter().cloned());
                }
                other => panic!("not a snapshot part: {other:?}"),
            }
        }
        assert_eq!(rebuilt, changes);
        assert_eq!(
            Control::snapshot(7, 42, Vec::new(), 16 * 1024),
            [Control::Snapshot {
                node: 7,
                seq: 42,
                part: 0,
                last: true,
                changes: Vec::new()
            }]
        );
    }

    #[test]
    fn a_change_larger_than_the_limit_travels_alone() {
        let changes = vec![member(1), member(2), member(3)];
        let deltas = Control::deltas(7, 1, changes, 10);
        assert_eq!(deltas.len(), 3);
    }
}
