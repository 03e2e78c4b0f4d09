//! The node's registry: its own sockets ([`local`]) and its view of the other nodes
//! ([`crate::cluster`]) under one lock. Every notification that follows from a change
//! (`member_added`, `member_removed`, `subscription_count`, watchlist events, the cache replay)
//! is queued here, under the same lock as the change, so no frame of a channel can overtake
//! another; so are the cluster-wide [`Transition`]s, in the same order.

mod debug;
mod fan_out;
mod local;
mod query;
mod state;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::time::Duration;

use parking_lot::RwLock;
use protocol::channel::DEBUG_CHANNEL;
use protocol::control::{Change, Control};
use protocol::frame;
use protocol::presence::{Member, SignedInUser};
use protocol::Channel;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::barrier::{SyncRounds, SYNC_TIMEOUT};
use crate::debug::Record;
use crate::interest::Interest;
use crate::{Frame, SocketHandle, Transition};
use local::{LocalMember, Subscriber};
pub use query::{Occupancy, Peak};
use state::{State, COUNT_THROTTLE};

/// Pusher close code for connections closed by `terminate_connections`.
pub const CLOSE_TERMINATED: u16 = 4009;

/// Transitions waiting for their consumer; beyond, new ones are dropped and counted.
pub const TRANSITIONS_CAPACITY: usize = 4096;

/// Node-wide settings of the registry.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// How long a cache channel keeps its last event.
    pub cache_ttl: Duration,
    /// Most channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
}

/// Per-app switches the registry needs when it notifies sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppOptions {
    /// Send `pusher_internal:subscription_count` on non-presence channels.
    pub subscription_count: bool,
    /// Most unique members in a presence channel.
    pub max_presence_members: usize,
    /// Most connections of the app across the cluster; `None`: no quota.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("over the app's connection quota ({max})")]
    OverQuota { max: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("presence channel is full ({max} members)")]
    PresenceFull { max: usize },
    #[error("too many channels on this connection (at most {max})")]
    TooManyChannels { max: usize },
}

/// The last event of a cache channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    /// The envelope's id, replayed to connections that opted in to event ids.
    pub id: Uuid,
    pub event: String,
    pub data: String,
    pub ttl: Duration,
}

/// Node-wide registry; see the module documentation.
#[derive(Debug)]
pub struct Registry {
    node: u32,
    config: RegistryConfig,
    state: RwLock<State>,
    outbox: mpsc::Sender<Control>,
    syncs: SyncRounds,
    interest: Interest,
}

impl Registry {
    /// A registry for node `node` and the receiver of the control messages it wants broadcast.
    pub fn new(node: u32, config: RegistryConfig) -> (Registry, mpsc::Receiver<Control>) {
        // Exposed at 0 from the start, so a rate over them is defined before the first one.
        for counter in [
            "switchboard_slow_consumers_closed_total",
            "switchboard_debug_records_dropped_total",
            "switchboard_transitions_dropped_total",
            "switchboard_live_dropped_events_total",
            "switchboard_live_gap_closes_total",
            "switchboard_live_envelopes_received_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        let (outbox, rx) = mpsc::channel(1024);
        let registry = Registry {
            node,
            config,
            state: RwLock::default(),
            outbox,
            syncs: SyncRounds::default(),
            interest: Interest::default(),
        };
        (registry, rx)
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    /// The channel shards this node's live queue is bound to.
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// The shards of the channels with local subscribers.
    pub fn local_shards(&self) -> HashSet<u16> {
        self.state.read().local.shards()
    }

    /// The cluster-wide [`Transition`]s from now on, in order, for one consumer (a later call
    /// replaces it). When [`TRANSITIONS_CAPACITY`] are waiting, new ones are dropped and counted
    /// in `switchboard_transitions_dropped_total`.
    pub fn transitions(&self) -> mpsc::Receiver<Transition> {
        let (tx, rx) = mpsc::channel(TRANSITIONS_CAPACITY);
        self.state.write().transitions = Some(tx);
        rx
    }

    /// Registers a connection of an app, unless the app already has `options.max_connections`
    /// across the cluster: the count and the insert happen under one lock, so concurrent
    /// handshakes cannot pass the quota together.
    pub fn connect(
        &self,
        app_id: &str,
        options: AppOptions,
        socket: &SocketHandle,
    ) -> Result<(), ConnectError> {
        let mut state = self.state.write();
        if let Some(max) = options.max_connections {
            if state.connections(app_id) >= max {
                return Err(ConnectError::OverQuota { max });
            }
        }
        let app = state.local.apps.entry(app_id.to_owned()).or_default();
        app.options = options;
        app.sockets.insert(socket.socket_id.clone(), 0);
        let count = app.sockets.len();
        state.outgoing.record(Change::Connections {
            app_id: app_id.to_owned(),
            count,
        });
        let total = state.connections(app_id);
        match state.peaks.get_mut(app_id) {
            Some(peak) => *peak = (*peak).max(total),
            None => {
                state.peaks.insert(app_id.to_owned(), total);
            }
        }
        Ok(())
    }

    /// Forgets a connection: leaves its channels (with the notifications that follow), signs it
    /// out, drops its watchlist.
    pub fn disconnect(&self, app_id: &str, socket_id: &str, channels: &[String]) {
        for channel in channels {
            self.unsubscribe(app_id, channel, socket_id);
        }
        let mut guard = self.state.write();
        let state = &mut *guard;
        let Some(app) = state.local.apps.get_mut(app_id) else {
            return;
        };
        if app.sockets.remove(socket_id).is_some() {
            state.outgoing.record(Change::Connections {
                app_id: app_id.to_owned(),
                count: app.sockets.len(),
            });
        }
        app.watchers.remove(socket_id);
        let mut went_offline = None;
        app.users.retain(|user_id, sockets| {
            if sockets.remove(socket_id).is_some() && sockets.is_empty() {
                went_offline = Some(user_id.clone());
            }
            !sockets.is_empty()
        });
        if let Some(user_id) = went_offline {
            state.outgoing.record(Change::SignedOut {
                app_id: app_id.to_owned(),
                user_id: user_id.clone(),
            });
            if !state.cluster.is_signed_in(app_id, &user_id) {
                app.notify_watchers(&[], &[user_id]);
            }
        }
        if app.is_unused() {
            state.local.apps.remove(app_id);
        }
    }

    /// Subscribes a socket registered with [`Registry::connect`]. Queues
    /// `subscription_succeeded` (with the member list for presence), then the cached event or
    /// `cache_miss` for cache channels, then notifies the others. Returns Ok(false) when the
    /// socket was already subscribed (a no-op).
    pub fn subscribe(
        &self,
        app_id: &str,
        channel: &str,
        socket: &SocketHandle,
        member: Option<Member>,
    ) -> Result<bool, SubscribeError> {
        let mut guard = self.state.write();
        let state = &mut *guard;
        let (options, subscribed) = match state.local.apps.get(app_id) {
            Some(app) => (app.options, app.sockets.get(&socket.socket_id).copied()),
            None => (AppOptions::default(), None),
        };
        let already = state
            .local
            .channel(app_id, channel)
            .is_some_and(|c| c.subscribers.contains_key(&socket.socket_id));
        if already {
            return Ok(false);
        }
        let max_channels = self.config.max_channels_per_connection;
        if subscribed.unwrap_or(0) >= max_channels {
            return Err(SubscribeError::TooManyChannels { max: max_channels });
        }
        let joins = match &member {
            Some(member) => {
                let present = state.has_member(app_id, channel, &member.user_id);
                if !present && state.members(app_id, channel).len() >= options.max_presence_members
                {
                    return Err(SubscribeError::PresenceFull {
                        max: options.max_presence_members,
                    });
                }
                !present
            }
            None => false,
        };
        let occupied = state.subscriptions(app_id, channel) > 0;
        let app = state.local.apps.entry(app_id.to_owned()).or_default();
        if let Some(channels) = app.sockets.get_mut(&socket.socket_id) {
            *channels += 1;
        }
        app.subscriptions += 1;
        let subscriptions = app.subscriptions;
        let channel_state = app.channels.entry(channel.to_owned()).or_default();
        channel_state.subscribers.insert(
            socket.socket_id.clone(),
            Subscriber {
                handle: socket.clone(),
                user_id: member.as_ref().map(|m| m.user_id.clone()),
            },
        );
        state.outgoing.record(Change::Subscriptions {
            app_id: app_id.to_owned(),
            channel: channel.to_owned(),
            count: channel_state.subscribers.len(),
        });
        if let Some(member) = &member {
            let local = channel_state
                .members
                .entry(member.user_id.clone())
                .or_insert_with(|| LocalMember {
                    sockets: 0,
                    user_info: member.user_info.clone(),
                });
            local.sockets += 1;
            if local.sockets == 1 {
                state.outgoing.record(Change::MemberAdded {
                    app_id: app_id.to_owned(),
                    channel: channel.to_owned(),
                    user_id: member.user_id.clone(),
                    user_info: member.user_info.clone(),
                });
            }
            let members = state.members(app_id, channel);
            socket.send_text(frame::encode_presence_succeeded(channel, &members));
        } else {
            socket.send_text(frame::encode_subscription_succeeded(channel, "{}"));
        }
        if Channel::parse(channel).is_ok_and(|c| c.cache) {
            let cached = state
                .local
                .channel(app_id, channel)
                .and_then(|c| c.cached(Instant::now()));
            match cached {
                Some(cached) if socket.event_ids() => socket.send_text(frame::encode_with_id(
                    &cached.event,
                    channel,
                    &cached.data,
                    None,
                    cached.id,
                )),
                Some(cached) => socket.send_text(frame::encode(
                    &cached.event,
                    Some(channel),
                    &cached.data,
                    None,
                )),
                None => socket.send_text(frame::encode_cache_miss(channel)),
            }
        }
        // The dashboard's console is no channel of the app's: its backend hears nothing of it.
        if !occupied && channel != DEBUG_CHANNEL {
            state.emit(Transition::ChannelOccupied {
                app_id: app_id.to_owned(),
                channel: channel.to_owned(),
            });
        }
        if let Some(joined) = member.filter(|_| joins) {
            let added: Frame = frame::encode_member_added(channel, &joined).into();
            if let Some(c) = state.local.channel(app_id, channel) {
                c.send_all(&added, Some(&socket.socket_id));
            }
            state.emit(Transition::MemberAdded {
                app_id: app_id.to_owned(),
                channel: channel.to_owned(),
                user_id: joined.user_id,
            });
        }
        state.notify_count(app_id, channel);
        match state.subscription_peaks.get_mut(app_id) {
            Some(peak) => *peak = (*peak).max(subscriptions),
            None => {
                state
                    .subscription_peaks
                    .insert(app_id.to_owned(), subscriptions);
            }
        }
        state.debug(app_id, || Record::Subscribed {
            socket_id: socket.socket_id.to_string(),
            channel: channel.to_owned(),
        });
        metrics::gauge!("switchboard_subscriptions").increment(1.0);
        Ok(true)
    }

    /// Removes a subscription; returns whether there was one.
    pub fn unsubscribe(&self, app_id: &str, channel: &str, socket_id: &str) -> bool {
        let mut guard = self.state.write();
        let state = &mut *guard;
        let Some(app) = state.local.apps.get_mut(app_id) else {
            return false;
        };
        let Some(channel_state) = app.channels.get_mut(channel) else {
            return false;
        };
        let Some(removed) = channel_state.subscribers.remove(socket_id) else {
            return false;
        };
        let left = removed.user_id.filter(|user_id| {
            let last = channel_state.members.get_mut(user_id).is_some_and(|m| {
                m.sockets -= 1;
                m.sockets == 0
            });
            if last {
                channel_state.members.remove(user_id);
            }
            last
        });
        let count = channel_state.subscribers.len();
        if let Some(channels) = app.sockets.get_mut(socket_id) {
            *channels -= 1;
        }
        app.subscriptions -= 1;
        if let Some(user_id) = left {
            state.outgoing.record(Change::MemberRemoved {
                app_id: app_id.to_owned(),
                channel: channel.to_owned(),
                user_id: user_id.clone(),
            });
            if !state.cluster.has_member(app_id, channel, &user_id) {
                let frame: Frame = frame::encode_member_removed(channel, &user_id).into();
                if let Some(c) = state.local.channel(app_id, channel) {
                    c.send_all(&frame, None);
                }
                state.emit(Transition::MemberRemoved {
                    app_id: app_id.to_owned(),
                    channel: channel.to_owned(),
                    user_id,
                });
            }
        }
        state.outgoing.record(Change::Subscriptions {
            app_id: app_id.to_owned(),
            channel: channel.to_owned(),
            count,
        });
        if state.subscriptions(app_id, channel) == 0 && channel != DEBUG_CHANNEL {
            state.emit(Transition::ChannelVacated {
                app_id: app_id.to_owned(),
                channel: channel.to_owned(),
            });
        }
        state.notify_count(app_id, channel);
        state.debug(app_id, || Record::Unsubscribed {
            socket_id: socket_id.to_owned(),
            channel: channel.to_owned(),
        });
        state.local.prune(app_id, channel);
        metrics::gauge!("switchboard_subscriptions").decrement(1.0);
        true
    }

    /// Records a signed-in connection; queues the watchlist's current online users.
    pub fn sign_in(&self, app_id: &str, socket: &SocketHandle, user: &SignedInUser) {
        let mut guard = self.state.write();
        let state = &mut *guard;
        let was_online = state.is_signed_in(app_id, &user.id);
        let sockets = state
            .local
            .apps
            .entry(app_id.to_owned())
            .or_default()
            .users
            .entry(user.id.clone())
            .or_default();
        sockets.insert(socket.socket_id.clone(), socket.clone());
        if sockets.len() == 1 {
            state.outgoing.record(Change::SignedIn {
                app_id: app_id.to_owned(),
                user_id: user.id.clone(),
            });
        }
        if !user.watchlist.is_empty() {
            let (online, offline): (Vec<String>, Vec<String>) = user
                .watchlist
                .iter()
                .cloned()
                .partition(|u| state.is_signed_in(app_id, u));
            socket.send_text(frame::encode_watchlist_events(&online, &offline));
        }
        let app = state.local.apps.entry(app_id.to_owned()).or_default();
        if !user.watchlist.is_empty() {
            app.watchers.insert(
                socket.socket_id.clone(),
                (socket.clone(), user.watchlist.clone()),
            );
        }
        if !was_online {
            app.notify_watchers(std::slice::from_ref(&user.id), &[]);
        }
    }

    /// Closes every local subscriber of a channel as a slow consumer (4100, counted): its node
    /// lost one of the channel's events. Returns how many.
    pub fn close_channel(&self, app_id: &str, channel: &str) -> usize {
        let state = self.state.read();
        let Some(subscribers) = state.local.channel(app_id, channel).map(|c| &c.subscribers) else {
            return 0;
        };
        for subscriber in subscribers.values() {
            subscriber
                .handle
                .close_slow("the node's live queue dropped an event of its channel");
        }
        subscribers.len()
    }

    /// Closes every connection of this node that is subscribed to a channel or signed in (so
    /// might have missed an event) with `code`; returns how many.
    pub fn close_all(&self, code: u16) -> usize {
        let state = self.state.read();
        let mut closed = HashSet::new();
        for app in state.local.apps.values() {
            let subscribed = app
                .channels
                .values()
                .flat_map(|c| c.subscribers.values().map(|s| &s.handle));
            let signed_in = app.users.values().flat_map(|sockets| sockets.values());
            for handle in subscribed.chain(signed_in) {
                if closed.insert(handle.socket_id.clone()) {
                    handle.close_signal().close(code);
                }
            }
        }
        closed.len()
    }

    /// Closes this node's connections signed in as `user_id` with 4009.
    pub fn terminate_local(&self, app_id: &str, user_id: &str) -> usize {
        let state = self.state.read();
        let Some(sockets) = state
            .local
            .apps
            .get(app_id)
            .and_then(|a| a.users.get(user_id))
        else {
            return 0;
        };
        for socket in sockets.values() {
            socket.close_signal().close(CLOSE_TERMINATED);
        }
        sockets.len()
    }

    /// Waits (at most [`SYNC_TIMEOUT`]) until every other node has published what it knew when
    /// this was called, so that a cluster-wide answer read next includes it (see `barrier`).
    pub async fn fresh(&self) {
        let nodes = self.state.read().cluster.nodes();
        let Some((id, done)) = self.syncs.start(nodes) else {
            return;
        };
        let node = self.node;
        let synced = self.broadcast(Control::Sync { node, id })
            && tokio::time::timeout(SYNC_TIMEOUT, done).await.is_ok();
        if !synced {
            self.syncs.abandon(id);
            metrics::counter!("switchboard_cluster_sync_timeouts_total").increment(1);
        }
    }

    /// Asks every node (this one included, through the bus) to run a control message.
    pub fn broadcast(&self, message: Control) -> bool {
        self.outbox.try_send(message).is_ok()
    }

    /// Forgets the cached events that have expired, and the channels only they kept.
    pub fn sweep_cache(&self) {
        let now = Instant::now();
        let mut state = self.state.write();
        state.local.apps.retain(|_, app| {
            app.channels.retain(|_, channel| {
                if channel.cached.as_ref().is_some_and(|(_, at)| *at <= now) {
                    channel.cached = None;
                }
                !channel.is_unused()
            });
            !app.is_unused()
        });
    }

    /// Sends the subscription counts the throttle held back, once their window has passed.
    pub fn flush_counts(&self) {
        let mut guard = self.state.write();
        let state = &mut *guard;
        let now = Instant::now();
        let due: Vec<(String, String)> = state
            .local
            .count_pending
            .iter()
            .filter(|(app_id, channel)| {
                state
                    .local
                    .channel(app_id, channel)
                    .and_then(|c| c.count_sent_at)
                    .is_none_or(|at| now.duration_since(at) >= COUNT_THROTTLE)
            })
            .cloned()
            .collect();
        for key in due {
            state.local.count_pending.remove(&key);
            state.notify_count(&key.0, &key.1);
        }
    }
}
