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
        ];
        for message in messages {
            assert_eq!(Control::decode(&message.encode()).unwrap(), message);
        }
        assert!(Control::decode(b"[]").is_err());
    }
}
