//! This node's own sockets: by app and channel, with presence members, signed-in users,
//! watchlists, the last event of cache channels and the subscription-count throttle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use protocol::channel::DEBUG_CHANNEL;
use protocol::control::Change;
use protocol::frame;
use protocol::presence::Member;
use tokio::time::Instant;

use super::{AppOptions, CachedEvent};
use crate::cluster::LocalView;
use crate::{Frame, SocketHandle};

#[derive(Debug)]
pub(super) struct Subscriber {
    pub handle: SocketHandle,
    /// The presence user id this socket subscribed as.
    pub user_id: Option<String>,
}

/// A presence member of a channel on this node.
#[derive(Debug)]
pub(super) struct LocalMember {
    /// Its sockets on the channel.
    pub sockets: usize,
    /// The `user_info` its first socket gave.
    pub user_info: Option<String>,
}

/// A channel known on this node: it has local subscribers, or (cache channels) a last event
/// that has not been swept yet, or both.
#[derive(Debug, Default)]
pub(super) struct ChannelState {
    pub subscribers: HashMap<Arc<str>, Subscriber>,
    pub members: HashMap<String, LocalMember>,
    pub count_sent_at: Option<Instant>,
    /// The last event of a cache channel and when it expires; kept here, under the registry's
    /// lock, so a subscriber's replay and the fan-out of the next event cannot interleave.
    pub cached: Option<(CachedEvent, Instant)>,
}

impl ChannelState {
    pub fn send_all(&self, frame: &Frame, except: Option<&str>) {
        let now = Instant::now();
        for (socket_id, subscriber) in &self.subscribers {
            if Some(socket_id.as_ref()) != except {
                subscriber.handle.send_at(frame.clone(), now);
            }
        }
    }

    /// The cached event with its remaining time to live, unless it has expired.
    pub fn cached(&self, now: Instant) -> Option<CachedEvent> {
        let (event, expires) = self.cached.as_ref()?;
        (*expires > now).then(|| CachedEvent {
            ttl: *expires - now,
            ..event.clone()
        })
    }

    /// Whether nothing is left to keep the channel for.
    pub fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.cached.is_none()
    }

    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members.iter().map(|(user_id, m)| Member {
            user_id: user_id.clone(),
            user_info: m.user_info.clone(),
        })
    }
}

#[derive(Debug, Default)]
pub(super) struct AppState {
    pub options: AppOptions,
    /// Connections on this node, with how many channels each is subscribed to.
    pub sockets: HashMap<Arc<str>, usize>,
    /// Subscriptions on this node (the sum of `sockets`' counts).
    pub subscriptions: usize,
    pub channels: HashMap<String, ChannelState>,
    /// Signed-in sockets by user id.
    pub users: HashMap<String, HashMap<Arc<str>, SocketHandle>>,
    /// Sockets that signed in with a watchlist.
    pub watchers: HashMap<Arc<str>, (SocketHandle, Vec<String>)>,
}

impl AppState {
    pub fn is_unused(&self) -> bool {
        self.sockets.is_empty() && self.channels.is_empty()
    }

    /// Tells local watchers of `online` and `offline` users.
    pub fn notify_watchers(&self, online: &[String], offline: &[String]) {
        for (handle, watchlist) in self.watchers.values() {
            let on: Vec<String> = online
                .iter()
                .filter(|u| watchlist.contains(u))
                .cloned()
                .collect();
            let off: Vec<String> = offline
                .iter()
                .filter(|u| watchlist.contains(u))
                .cloned()
                .collect();
            if !on.is_empty() || !off.is_empty() {
                handle.send_text(frame::encode_watchlist_events(&on, &off));
            }
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Local {
    pub apps: HashMap<String, AppState>,
    /// Channels whose count change the throttle held back.
    pub count_pending: HashSet<(String, String)>,
}

impl Local {
    pub fn channel(&self, app_id: &str, channel: &str) -> Option<&ChannelState> {
        self.apps.get(app_id)?.channels.get(channel)
    }

    /// The shards of the channels that have subscribers here: every shard while a debug console
    /// watches an app here (it is shown every event of the cluster).
    pub fn shards(&self) -> HashSet<u16> {
        let mut shards = HashSet::new();
        for (app_id, app) in &self.apps {
            for (name, channel) in &app.channels {
                if channel.subscribers.is_empty() {
                    continue;
                }
                if name == DEBUG_CHANNEL {
                    return (0..bus::SHARDS).collect();
                }
                match bus::route_of(app_id, name) {
                    bus::EVERY_NODE => {}
                    shard => {
                        shards.insert(shard);
                    }
                }
            }
        }
        shards
    }

    /// Drops the channel, and then the app, if nothing is left to keep them for.
    pub fn prune(&mut self, app_id: &str, channel: &str) {
        let Some(app) = self.apps.get_mut(app_id) else {
            return;
        };
        if app
            .channels
            .get(channel)
            .is_some_and(ChannelState::is_unused)
        {
            app.channels.remove(channel);
        }
        if app.is_unused() {
            self.apps.remove(app_id);
        }
    }
}

impl Local {
    /// The whole local state, as the changes that build it from nothing.
    pub fn changes(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        for (app_id, app) in &self.apps {
            if !app.sockets.is_empty() {
                changes.push(Change::Connections {
                    app_id: app_id.clone(),
                    count: app.sockets.len(),
                });
            }
            for (name, channel) in &app.channels {
                if channel.subscribers.is_empty() {
                    continue;
                }
                changes.push(Change::Subscriptions {
                    app_id: app_id.clone(),
                    channel: name.clone(),
                    count: channel.subscribers.len(),
                });
                changes.extend(channel.members().map(|m| Change::MemberAdded {
                    app_id: app_id.clone(),
                    channel: name.clone(),
                    user_id: m.user_id,
                    user_info: m.user_info,
                }));
            }
            changes.extend(app.users.keys().map(|user_id| Change::SignedIn {
                app_id: app_id.clone(),
                user_id: user_id.clone(),
            }));
        }
        changes
    }
}

impl LocalView for Local {
    fn subscriptions(&self, app_id: &str, channel: &str) -> usize {
        self.channel(app_id, channel)
            .map_or(0, |c| c.subscribers.len())
    }

    fn has_member(&self, app_id: &str, channel: &str, user_id: &str) -> bool {
        self.channel(app_id, channel)
            .is_some_and(|c| c.members.contains_key(user_id))
    }

    fn is_signed_in(&self, app_id: &str, user_id: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.users.contains_key(user_id))
    }
}
