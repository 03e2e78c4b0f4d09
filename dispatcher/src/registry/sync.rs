//! What this node tells the other nodes of its state, and what it makes of theirs.

use std::time::Duration;

use protocol::control::{AppSnapshot, ChannelSnapshot, NodeSnapshot};

use super::Registry;
use crate::cluster::NodeState;

impl Registry {
    /// This node's local state, for the other nodes.
    pub fn snapshot(&self) -> NodeSnapshot {
        let state = self.state.read();
        let apps = state
            .local
            .apps
            .iter()
            .map(|(app_id, app)| AppSnapshot {
                app_id: app_id.clone(),
                connections: app.sockets.len(),
                channels: app
                    .channels
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .map(|(name, c)| ChannelSnapshot {
                        name: name.clone(),
                        subscriptions: c.subscribers.len(),
                        members: c.members().map(|m| (m.user_id, m.user_info)).collect(),
                    })
                    .collect(),
                users: app.users.keys().cloned().collect(),
            })
            .collect();
        NodeSnapshot {
            node: self.node,
            apps,
        }
    }

    /// Replaces what we know of another node and notifies local sockets of what changed.
    pub fn apply_remote(&self, snapshot: NodeSnapshot) {
        if snapshot.node == self.node {
            return;
        }
        let node = snapshot.node;
        let new = NodeState::from_snapshot(snapshot);
        let mut guard = self.state.write();
        let state = &mut *guard;
        let effects = state.cluster.replace(node, new, &state.local);
        state.apply(effects);
    }

    /// Forgets a node (it said goodbye, or its snapshots stopped), notifying local sockets.
    pub fn forget_node(&self, node: u32) {
        let mut guard = self.state.write();
        let state = &mut *guard;
        if let Some(effects) = state.cluster.forget(node, &state.local) {
            state.apply(effects);
            tracing::info!(node, "forgot gateway node");
        }
    }

    /// Nodes whose last snapshot is older than `timeout`.
    pub fn stale_nodes(&self, timeout: Duration) -> Vec<u32> {
        self.state.read().cluster.stale(timeout)
    }
}
