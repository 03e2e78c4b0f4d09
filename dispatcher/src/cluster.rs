//! The node's view of the other gateway nodes: what each one reported of its local state, and
//! the cluster-wide totals that follow. For every remote change it works out what this node's
//! sockets must hear (`member_added`/`member_removed`, `subscription_count`, watchlist events)
//! and the cluster-wide [`Transition`]s, asking the local state through [`LocalView`].
//!
//! Applying a change costs time in the size of the change, never in the size of the cluster:
//! the totals per app, channel, member and user are kept up to date as the nodes' states
//! change, and a node's new state is compared with its previous one by lookups.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use protocol::control::{Change, NodeSnapshot};
use protocol::presence::Member;
use tokio::time::Instant;

use crate::Transition;

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

/// What one node reported of its local state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeState {
    apps: HashMap<String, NodeApp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NodeApp {
    connections: usize,
    channels: HashMap<String, NodeChannel>,
    users: HashSet<String>,
}

impl NodeApp {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.channels.is_empty() && self.users.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NodeChannel {
    subscriptions: usize,
    /// User id → `user_info` JSON text.
    members: HashMap<String, Option<String>>,
}

impl NodeChannel {
    fn is_empty(&self) -> bool {
        self.subscriptions == 0 && self.members.is_empty()
    }
}

impl NodeState {
    pub fn from_snapshot(snapshot: NodeSnapshot) -> NodeState {
        let mut state = NodeState::default();
        for app in snapshot.apps {
            let entry = NodeApp {
                connections: app.connections,
                channels: app
                    .channels
                    .into_iter()
                    .map(|c| {
                        let channel = NodeChannel {
                            subscriptions: c.subscriptions,
                            members: c.members.into_iter().collect(),
                        };
                        (c.name, channel)
                    })
                    .filter(|(_, c)| !c.is_empty())
                    .collect(),
                users: app.users.into_iter().collect(),
            };
            if !entry.is_empty() {
                state.apps.insert(app.app_id, entry);
            }
        }
        state
    }

    /// The changes that turn `self` into `new`. Per channel, members leave before the count
    /// changes and join after it, so a channel is occupied before its first member arrives and
    /// vacated after its last one left.
    fn changes_to(&self, new: &NodeState) -> Vec<Change> {
        let empty = NodeApp::default();
        let mut changes = Vec::new();
        for (app_id, after) in &new.apps {
            let before = self.apps.get(app_id).unwrap_or(&empty);
            diff_app(app_id, before, after, &mut changes);
        }
        for (app_id, before) in &self.apps {
            if !new.apps.contains_key(app_id) {
                diff_app(app_id, before, &empty, &mut changes);
            }
        }
        changes
    }

    fn app(&mut self, app_id: &str) -> &mut NodeApp {
        self.apps.entry(app_id.to_owned()).or_default()
    }

    fn channel(&mut self, app_id: &str, channel: &str) -> &mut NodeChannel {
        self.app(app_id)
            .channels
            .entry(channel.to_owned())
            .or_default()
    }

    /// Drops the channel and the app if nothing is left of them.
    fn prune(&mut self, app_id: &str, channel: Option<&str>) {
        let Some(app) = self.apps.get_mut(app_id) else {
            return;
        };
        if let Some(name) = channel {
            if app.channels.get(name).is_some_and(NodeChannel::is_empty) {
                app.channels.remove(name);
            }
        }
        if app.is_empty() {
            self.apps.remove(app_id);
        }
    }
}

fn diff_app(app_id: &str, before: &NodeApp, after: &NodeApp, changes: &mut Vec<Change>) {
    let empty = NodeChannel::default();
    for (name, is) in &after.channels {
        let was = before.channels.get(name).unwrap_or(&empty);
        diff_channel(app_id, name, was, is, changes);
    }
    for (name, was) in &before.channels {
        if !after.channels.contains_key(name) {
            diff_channel(app_id, name, was, &empty, changes);
        }
    }
    for user_id in after.users.difference(&before.users) {
        changes.push(Change::SignedIn {
            app_id: app_id.to_owned(),
            user_id: user_id.clone(),
        });
    }
    for user_id in before.users.difference(&after.users) {
        changes.push(Change::SignedOut {
            app_id: app_id.to_owned(),
            user_id: user_id.clone(),
        });
    }
    if before.connections != after.connections {
        changes.push(Change::Connections {
            app_id: app_id.to_owned(),
            count: after.connections,
        });
    }
}

fn diff_channel(
    app_id: &str,
    channel: &str,
    was: &NodeChannel,
    is: &NodeChannel,
    changes: &mut Vec<Change>,
) {
    for user_id in was.members.keys() {
        if !is.members.contains_key(user_id) {
            changes.push(Change::MemberRemoved {
                app_id: app_id.to_owned(),
                channel: channel.to_owned(),
                user_id: user_id.clone(),
            });
        }
    }
    if was.subscriptions != is.subscriptions {
        changes.push(Change::Subscriptions {
            app_id: app_id.to_owned(),
            channel: channel.to_owned(),
            count: is.subscriptions,
        });
    }
    for (user_id, user_info) in &is.members {
        if was.members.get(user_id) != Some(user_info) {
            changes.push(Change::MemberAdded {
                app_id: app_id.to_owned(),
                channel: channel.to_owned(),
                user_id: user_id.clone(),
                user_info: user_info.clone(),
            });
        }
    }
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

#[derive(Debug)]
struct RemoteNode {
    seen: Instant,
    state: NodeState,
}

/// Every other node's reported state and the totals over them; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    nodes: HashMap<u32, RemoteNode>,
    totals: HashMap<String, AppTotals>,
}

impl Cluster {
    /// Replaces what `node` reported before (nothing, for a new node) with `state`.
    pub fn replace(&mut self, node: u32, state: NodeState, local: &impl LocalView) -> Effects {
        let remote = self.nodes.entry(node).or_insert_with(|| RemoteNode {
            seen: Instant::now(),
            state: NodeState::default(),
        });
        remote.seen = Instant::now();
        let changes = remote.state.changes_to(&state);
        let mut effects = Effects::default();
        for change in &changes {
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
                let before = std::mem::replace(&mut state.app(app_id).connections, *count);
                state.prune(app_id, None);
                let totals = self.totals.entry(app_id.clone()).or_default();
                totals.connections = totals.connections + count - before;
            }
            Change::Subscriptions {
                app_id,
                channel,
                count,
            } => {
                let before =
                    std::mem::replace(&mut state.channel(app_id, channel).subscriptions, *count);
                state.prune(app_id, Some(channel));
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
                let members = &mut state.channel(app_id, channel).members;
                let new = members.insert(user_id.clone(), user_info.clone()).is_none();
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
                let removed = state
                    .apps
                    .get_mut(app_id)
                    .and_then(|a| a.channels.get_mut(channel))
                    .is_some_and(|c| c.members.remove(user_id).is_some());
                state.prune(app_id, Some(channel));
                if !removed {
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
                if !state.app(app_id).users.insert(user_id.clone()) {
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
                let removed = state
                    .apps
                    .get_mut(app_id)
                    .is_some_and(|a| a.users.remove(user_id));
                state.prune(app_id, None);
                if !removed {
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
