//! Control messages gateway nodes exchange over the bus (routing key `ctl`) so that presence,
//! occupancy, signed-in users and `terminate_connections` are correct across the cluster.
//!
//! Each node periodically publishes a full [`NodeSnapshot`] of its local state (and one soon after
//! every change); a node whose snapshots stop arriving is dropped after a timeout. Snapshots
//! replace the previous one from the same node, so a lost message heals itself.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Snapshot(NodeSnapshot),
    /// The node is shutting down: forget its state now rather than after the timeout.
    Goodbye {
        node: u32,
    },
    /// Close every connection signed in as `user_id` with 4009.
    Terminate {
        app_id: String,
        user_id: String,
    },
    /// Node `node` is about to answer a cluster-wide query: every other node publishes what it
    /// has not yet announced, then [`Control::Synced`].
    Sync {
        node: u32,
        id: u64,
    },
    /// Node `from` has published everything it knew before `to`'s [`Control::Sync`] `id`.
    Synced {
        to: u32,
        from: u32,
        id: u64,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub node: u32,
    pub apps: Vec<AppSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    pub app_id: String,
    pub connections: usize,
    pub channels: Vec<ChannelSnapshot>,
    /// Ids of users signed in on this node.
    pub users: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    pub name: String,
    pub subscriptions: usize,
    /// Presence members on this node: user id and `user_info` JSON text.
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Debug, Error)]
#[error("not a control message: {0}")]
pub struct ControlError(#[from] serde_json::Error);

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }

    pub fn decode(body: &[u8]) -> Result<Control, ControlError> {
        Ok(serde_json::from_slice(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let messages = [
            Control::Snapshot(NodeSnapshot {
                node: 7,
                apps: vec![AppSnapshot {
                    app_id: "1".into(),
                    connections: 2,
                    channels: vec![ChannelSnapshot {
                        name: "presence-a".into(),
                        subscriptions: 2,
                        members: vec![
                            ("u1".into(), Some(r#"{"n":1}"#.into())),
                            ("u2".into(), None),
                        ],
                    }],
                    users: vec!["u1".into()],
                }],
            }),
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
        ];
        for message in messages {
            assert_eq!(Control::decode(&message.encode()).unwrap(), message);
        }
        assert!(Control::decode(b"[]").is_err());
    }
}
