//! The node's view of the other gateway nodes: what each one reported of its local state, and
//! the cluster-wide totals that follow. For every remote change it works out what this node's
//! sockets must hear (`member_added`/`member_removed`, `subscription_count`, watchlist events)
//! and the cluster-wide [`Transition`]s, asking the local state through [`LocalView`].
//!
//! Each node's messages are numbered: a delta applies if it follows the last message applied;
//! after a gap the node is asked for a snapshot (see [`Heard::Gap`]), which replaces what was
//! known of it.
//!
//! Applying a change costs time in the size of the change, never in the size of the cluster:
//! the totals per app, channel, member and user are kept up to date as the nodes' states
//! change, and a snapshot is compared with the node's previous state by lookups.

mod node;

use std::collections::HashMap;
use std::time::Duration;

use protocol::control::Change;
use protocol::presence::Member;
use tokio::time::Instant;

use crate::Transition;
pub(crate) use node::NodeState;

/// What the cluster view needs to know of this node's own sockets.
pub(crate) trait LocalView {
    /// Local subscriptions to the channel.
    fn subscriptions(&self, app_id: &str, channel: &str) -> usize;
    /// Whether the user has a local socket on the presence channel.
    fn has_member(&self, app_id: &str, channel: &str, user_id: &str) -> bool;
    /// Whether the user has a local signed-in socket.
    fn is_signed_in(&self, app_id: &str, user_id: &str) -> bool;
}

/// What local sockets must hear about a remote change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// To the channel's local subscribers.
    MemberAdded {
        app_id: String,
        channel: String,
        member: Member,
    },
    /// To the channel's local subscribers.
    MemberRemoved {
        app_id: String,
        channel: String,
        user_id: String,
    },
    /// The channel's cluster-wide subscription count changed; it has local subscribers.
    Count { app_id: String, channel: String },
    /// To local watchers of the user: its first signed-in socket anywhere.
    Online { app_id: String, user_id: String },
    /// To local watchers of the user: its last signed-in socket anywhere left.
    Offline { app_id: String, user_id: String },
}

/// What follows from remote changes, in the order of the changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    pub notices: Vec<Notice>,
    pub transitions: Vec<Transition>,
}

/// The sums over every remote node, per app.
#[derive(Debug, Default)]
struct AppTotals {
    connections: usize,
    channels: HashMap<String, ChannelTotals>,
    /// Signed-in users: on how many nodes.
    users: HashMap<String, usize>,
}

impl AppTotals {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.channels.is_empty() && self.users.is_empty()
    }
}

#[derive(Debug, Default)]
struct ChannelTotals {
    subscriptions: usize,
    /// Presence members: on how many nodes, and the `user_info` last reported.
    members: HashMap<String, (usize, Option<String>)>,
}

/// How far what we know of a node follows its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Every message up to this `seq` is applied.
    Synced(u64),
    /// Some were missed: waiting for a snapshot (asked for once).
    Waiting,
}

/// A snapshot being received, part by part.
#[derive(Debug)]
struct Staging {
    seq: u64,
    next_part: u32,
    state: NodeState,
}

#[derive(Debug)]
struct RemoteNode {
    seen: Instant,
    sync: Sync,
    staging: Option<Staging>,
    state: NodeState,
}

/// What came of a message from another node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Applied (or nothing to do), with what follows from it.
    Applied(Effects),
    /// The node's messages have a gap (or it is new to us): ask it for a snapshot. What we
    /// knew of it stays until the snapshot arrives.
    Gap,
}

/// Every other node's reported state and the totals over them; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    nodes: HashMap<u32, RemoteNode>,
    totals: HashMap<String, AppTotals>,
}

impl Cluster {
    /// A node's delta `seq`: applied if it follows the last message applied; a repeat is
    /// ignored; after a gap, or from a node never heard of, the node's deltas are ignored until
    /// its next snapshot.
    pub fn delta(
        &mut self,
        node: u32,
        seq: u64,
        changes: &[Change],
        local: &impl LocalView,
    ) -> Heard {
        let known = self.nodes.contains_key(&node);
        let remote = self.heard_from(node);
        match remote.sync {
            Sync::Waiting if !known => return Heard::Gap,
            Sync::Synced(last) if seq == last + 1 => remote.sync = Sync::Synced(seq),
            Sync::Synced(last) if seq <= last => return Heard::Applied(Effects::default()),
            Sync::Synced(_) => {
                remote.sync = Sync::Waiting;
                return Heard::Gap;
            }
            Sync::Waiting => return Heard::Applied(Effects::default()),
        }
        let mut effects = Effects::default();
        for change in changes {
            self.apply(node, change, local, &mut effects);
        }
        Heard::Applied(effects)
    }

    /// A part of a node's snapshot. When its last part arrives, the snapshot replaces what we
    /// knew of the node — unless every delta up to its `seq` was applied already, when it is
    /// only a sign of life. A part out of order spoils the snapshot (a gap).
    pub fn snapshot(
        &mut self,
        node: u32,
        seq: u64,
        part: u32,
        last: bool,
        changes: &[Change],
        local: &impl LocalView,
    ) -> Heard {
        let remote = self.heard_from(node);
        if part == 0 {
            remote.staging = (remote.sync != Sync::Synced(seq)).then(|| Staging {
                seq,
                next_part: 0,
                state: NodeState::default(),
            });
        }
        let Some(mut staging) = remote.staging.take() else {
            return Heard::Applied(Effects::default());
        };
        if staging.seq != seq || staging.next_part != part {
            remote.sync = Sync::Waiting;
            return Heard::Gap;
        }
        for change in changes {
            staging.state.apply(change);
        }
        staging.next_part += 1;
        if !last {
            remote.staging = Some(staging);
            return Heard::Applied(Effects::default());
        }
        remote.sync = Sync::Synced(seq);
        Heard::Applied(self.replace(node, staging.state, local))
    }

    /// The node's entry, created (waiting for a snapshot) for a node never heard of.
    fn heard_from(&mut self, node: u32) -> &mut RemoteNode {
        let remote = self.nodes.entry(node).or_insert_with(|| RemoteNode {
            seen: Instant::now(),
            sync: Sync::Waiting,
            staging: None,
            state: NodeState::default(),
        });
        remote.seen = Instant::now();
        remote
    }

    /// Replaces what a known node reported before with `state`.
    fn replace(&mut self, node: u32, state: NodeState, local: &impl LocalView) -> Effects {
        let mut effects = Effects::default();
        let Some(remote) = self.nodes.get(&node) else {
            return effects;
        };
        for change in &remote.state.changes_to(&state) {
            self.apply(node, change, local, &mut effects);
        }
        debug_assert_eq!(self.nodes[&node].state, state);
        effects
    }

    /// Forgets a node (it said goodbye, or it went silent); None if it was not known.
    pub fn forget(&mut self, node: u32, local: &impl LocalView) -> Option<Effects> {
        let changes = self
            .nodes
            .get(&node)?
            .state
            .changes_to(&NodeState::default());
        let mut effects = Effects::default();
        for change in &changes {
            self.apply(node, change, local, &mut effects);
        }
        self.nodes.remove(&node);
        Some(effects)
    }

    /// The nodes known.
    pub fn nodes(&self) -> Vec<u32> {
        self.nodes.keys().copied().collect()
    }

    /// When `node` was last heard from, if it is known.
    pub fn heard_at(&self, node: u32) -> Option<Instant> {
        self.nodes.get(&node).map(|remote| remote.seen)
    }

    /// Nodes not heard from for longer than `timeout`.
    pub fn stale(&self, timeout: Duration) -> Vec<u32> {
        let now = Instant::now();
        self.nodes
            .iter()
            .filter(|(_, r)| now.duration_since(r.seen) > timeout)
            .map(|(node, _)| *node)
            .collect()
    }

    /// Applies one change of a known node, updating the totals and adding its effects.
    fn apply(&mut self, node: u32, change: &Change, local: &impl LocalView, out: &mut Effects) {
        let Some(remote) = self.nodes.get_mut(&node) else {
            return;
        };
        let state = &mut remote.state;
        match change {
            Change::Connections { app_id, count } => {
                let before = state.set_connections(app_id, *count);
                let totals = self.totals.entry(app_id.clone()).or_default();
                totals.connections = totals.connections + count - before;
            }
            Change::Subscriptions {
                app_id,
                channel,
                count,
            } => {
                let before = state.set_subscriptions(app_id, channel, *count);
                if before == *count {
                    return;
                }
                let totals = self.totals.entry(app_id.clone()).or_default();
                let channel_totals = totals.channels.entry(channel.clone()).or_default();
                let total_before = channel_totals.subscriptions;
                channel_totals.subscriptions = total_before + count - before;
                let local_count = local.subscriptions(app_id, channel);
                let was = total_before + local_count > 0;
                let is = channel_totals.subscriptions + local_count > 0;
                let (app_id, channel) = (app_id.clone(), channel.clone());
                if local_count > 0 {
                    out.notices.push(Notice::Count {
                        app_id: app_id.clone(),
                        channel: channel.clone(),
                    });
                }
                if !was && is {
                    out.transitions
                        .push(Transition::ChannelOccupied { app_id, channel });
                } else if was && !is {
                    out.transitions
                        .push(Transition::ChannelVacated { app_id, channel });
                }
            }
            Change::MemberAdded {
                app_id,
                channel,
                user_id,
                user_info,
            } => {
                let new = state.add_member(app_id, channel, user_id, user_info);
                let totals = self.totals.entry(app_id.clone()).or_default();
                let channel_totals = totals.channels.entry(channel.clone()).or_default();
                let (nodes, info) = channel_totals
                    .members
                    .entry(user_id.clone())
                    .or_insert((0, None));
                info.clone_from(user_info);
                if !new {
                    return;
                }
                *nodes += 1;
                if *nodes == 1 && !local.has_member(app_id, channel, user_id) {
                    if local.subscriptions(app_id, channel) > 0 {
                        out.notices.push(Notice::MemberAdded {
                            app_id: app_id.clone(),
                            channel: channel.clone(),
                            member: Member {
                                user_id: user_id.clone(),
                                user_info: user_info.clone(),
                            },
                        });
                    }
                    out.transitions.push(Transition::MemberAdded {
                        app_id: app_id.clone(),
                        channel: channel.clone(),
                        user_id: user_id.clone(),
                    });
                }
            }
            Change::MemberRemoved {
                app_id,
                channel,
                user_id,
            } => {
                if !state.remove_member(app_id, channel, user_id) {
                    return;
                }
                let Some(channel_totals) = self
                    .totals
                    .get_mut(app_id)
                    .and_then(|t| t.channels.get_mut(channel))
                else {
                    return;
                };
                let last = channel_totals.members.get_mut(user_id).is_some_and(|m| {
                    m.0 -= 1;
                    m.0 == 0
                });
                if !last {
                    return;
                }
                channel_totals.members.remove(user_id);
                if !local.has_member(app_id, channel, user_id) {
                    if local.subscriptions(app_id, channel) > 0 {
                        out.notices.push(Notice::MemberRemoved {
                            app_id: app_id.clone(),
                            channel: channel.clone(),
                            user_id: user_id.clone(),
                        });
                    }
                    out.transitions.push(Transition::MemberRemoved {
                        app_id: app_id.clone(),
                        channel: channel.clone(),
                        user_id: user_id.clone(),
                    });
                }
            }
            Change::SignedIn { app_id, user_id } => {
                if !state.sign_in(app_id, user_id) {
                    return;
                }
                let totals = self.totals.entry(app_id.clone()).or_default();
                let nodes = totals.users.entry(user_id.clone()).or_default();
                *nodes += 1;
                if *nodes == 1 && !local.is_signed_in(app_id, user_id) {
                    out.notices.push(Notice::Online {
                        app_id: app_id.clone(),
                        user_id: user_id.clone(),
                    });
                }
            }
            Change::SignedOut { app_id, user_id } => {
                if !state.sign_out(app_id, user_id) {
                    return;
                }
                let Some(totals) = self.totals.get_mut(app_id) else {
                    return;
                };
                let last = totals.users.get_mut(user_id).is_some_and(|n| {
                    *n -= 1;
                    *n == 0
                });
                if last {
                    totals.users.remove(user_id);
                    if !local.is_signed_in(app_id, user_id) {
                        out.notices.push(Notice::Offline {
                            app_id: app_id.clone(),
                            user_id: user_id.clone(),
                        });
                    }
                }
            }
        }
        self.prune_totals(change);
    }

    /// Drops the totals of the change's channel and app if nothing is left of them.
    fn prune_totals(&mut self, change: &Change) {
        let (app_id, channel) = match change {
            Change::Connections { app_id, .. }
            | Change::SignedIn { app_id, .. }
            | Change::SignedOut { app_id, .. } => (app_id, None),
            Change::Subscriptions {
                app_id, channel, ..
            }
            | Change::MemberAdded {
                app_id, channel, ..
            }
            | Change::MemberRemoved {
                app_id, channel, ..
            } => (app_id, Some(channel)),
        };
        let Some(totals) = self.totals.get_mut(app_id) else {
            return;
        };
        if let Some(name) = channel {
            let empty = totals
                .channels
                .get(name)
                .is_some_and(|c| c.subscriptions == 0 && c.members.is_empty());
            if empty {
                totals.channels.remove(name);
            }
        }
        if totals.is_empty() {
            self.totals.remove(app_id);
        }
    }

    /// Connections of the app on the other nodes.
    pub fn connections(&self, app_id: &str) -> usize {
        self.totals.get(app_id).map_or(0, |t| t.connections)
    }

    /// Subscriptions to the channel on the other nodes.
    pub fn subscriptions(&self, app_id: &str, channel: &str) -> usize {
        self.channel(app_id, channel).map_or(0, |c| c.subscriptions)
    }

    pub fn has_member(&self, app_id: &str, channel: &str, user_id: &str) -> bool {
        self.channel(app_id, channel)
            .is_some_and(|c| c.members.contains_key(user_id))
    }

    /// The channel's presence members on the other nodes.
    pub fn members<'a>(&'a self, app_id: &str, channel: &str) -> impl Iterator<Item = Member> + 'a {
        self.channel(app_id, channel)
            .into_iter()
            .flat_map(|c| c.members.iter())
            .map(|(user_id, (_, user_info))| Member {
                user_id: user_id.clone(),
                user_info: user_info.clone(),
            })
    }

    pub fn is_signed_in(&self, app_id: &str, user_id: &str) -> bool {
        self.totals
            .get(app_id)
            .is_some_and(|t| t.users.contains_key(user_id))
    }

    /// The app's channels with subscribers on other nodes.
    pub fn channels<'a>(&'a self, app_id: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.totals
            .get(app_id)
            .into_iter()
            .flat_map(|t| t.channels.iter())
            .filter(|(_, c)| c.subscriptions > 0)
            .map(|(name, _)| name.as_str())
    }

    fn channel(&self, app_id: &str, channel: &str) -> Option<&ChannelTotals> {
        self.totals.get(app_id)?.channels.get(channel)
    }
}

#[cfg(test)]
mod tests;
