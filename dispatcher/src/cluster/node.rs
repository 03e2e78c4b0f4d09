//! What one other node reported of its local state, changed one [`Change`] at a time, and the
//! changes between two such states.

use std::collections::{HashMap, HashSet};

use protocol::control::Change;

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
    /// Applies a change; see [`NodeState::set_connections`] and the others for what it did.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Connections { app_id, count } => {
                self.set_connections(app_id, *count);
            }
            Change::Subscriptions {
                app_id,
                channel,
                count,
            } => {
                self.set_subscriptions(app_id, channel, *count);
            }
            Change::MemberAdded {
                app_id,
                channel,
                user_id,
                user_info,
            } => {
                self.add_member(app_id, channel, user_id, user_info);
            }
            Change::MemberRemoved {
                app_id,
                channel,
                user_id,
            } => {
                self.remove_member(app_id, channel, user_id);
            }
            Change::SignedIn { app_id, user_id } => {
                self.sign_in(app_id, user_id);
            }
            Change::SignedOut { app_id, user_id } => {
                self.sign_out(app_id, user_id);
            }
        }
    }

    /// Returns the previous count.
    pub fn set_connections(&mut self, app_id: &str, count: usize) -> usize {
        let before = std::mem::replace(&mut self.app(app_id).connections, count);
        self.prune(app_id, None);
        before
    }

    /// Returns the previous count.
    pub fn set_subscriptions(&mut self, app_id: &str, channel: &str, count: usize) -> usize {
        let before = std::mem::replace(&mut self.channel(app_id, channel).subscriptions, count);
        self.prune(app_id, Some(channel));
        before
    }

    /// Returns whether the member is new (else only its `user_info` may have changed).
    pub fn add_member(
        &mut self,
        app_id: &str,
        channel: &str,
        user_id: &str,
        user_info: &Option<String>,
    ) -> bool {
        self.channel(app_id, channel)
            .members
            .insert(user_id.to_owned(), user_info.clone())
            .is_none()
    }

    /// Returns whether there was such a member.
    pub fn remove_member(&mut self, app_id: &str, channel: &str, user_id: &str) -> bool {
        let removed = self
            .apps
            .get_mut(app_id)
            .and_then(|a| a.channels.get_mut(channel))
            .is_some_and(|c| c.members.remove(user_id).is_some());
        self.prune(app_id, Some(channel));
        removed
    }

    /// Returns whether the user was not signed in.
    pub fn sign_in(&mut self, app_id: &str, user_id: &str) -> bool {
        self.app(app_id).users.insert(user_id.to_owned())
    }

    /// Returns whether the user was signed in.
    pub fn sign_out(&mut self, app_id: &str, user_id: &str) -> bool {
        let removed = self
            .apps
            .get_mut(app_id)
            .is_some_and(|a| a.users.remove(user_id));
        self.prune(app_id, None);
        removed
    }

    /// The changes that turn `self` into `new`, found by lookups. Per channel, members leave
    /// before the count changes and join after it, so a channel is occupied before its first
    /// member arrives and vacated after its last one left.
    pub fn changes_to(&self, new: &NodeState) -> Vec<Change> {
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
