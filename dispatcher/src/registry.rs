//! The node's view of who listens where: local sockets by app and channel (with presence
//! members, signed-in users and watchlists), the last event of cache channels, and the state
//! other gateway nodes report in their snapshots. Every notification that follows from a change
//! (`member_added`, `member_removed`, `subscription_count`, watchlist events) is queued here,
//! under the same lock as the change, so no frame of a channel can overtake another.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use protocol::control::{AppSnapshot, ChannelSnapshot, Control, NodeSnapshot};
use protocol::frame;
use protocol::presence::{Member, SignedInUser};
use protocol::{Channel, ChannelKind, Envelope, Source};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::CLOSE_SLOW_CONSUMER;

/// One encoded server → client text frame, shared by every socket it goes to.
pub type Frame = Arc<str>;

/// Pusher close code for connections closed by `terminate_connections`.
pub const CLOSE_TERMINATED: u16 = 4009;

/// Above this many subscribers, `subscription_count` is sent at most every [`COUNT_THROTTLE`].
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_THROTTLE: Duration = Duration::from_secs(5);

/// Asks a socket to close with a Pusher close code; the first code given wins.
#[derive(Debug, Default)]
pub struct CloseSignal {
    code: AtomicU16,
    token: CancellationToken,
}

impl CloseSignal {
    pub fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// Resolves with the close code once [`CloseSignal::close`] was called.
    pub async fn closed(&self) -> u16 {
        self.token.cancelled().await;
        self.code.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// What the registry holds of a connection: its id and the sending half of its bounded queue.
#[derive(Debug, Clone)]
pub struct SocketHandle {
    pub socket_id: Arc<str>,
    tx: mpsc::Sender<Frame>,
    close: Arc<CloseSignal>,
}

impl SocketHandle {
    /// A handle and the receiving half of its outbound queue of `capacity` frames.
    pub fn new(socket_id: &str, capacity: usize) -> (SocketHandle, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(capacity);
        let handle = SocketHandle {
            socket_id: socket_id.into(),
            tx,
            close: Arc::default(),
        };
        (handle, rx)
    }

    /// Queues a frame without waiting. A full queue closes the socket with 4100; returns whether
    /// the frame was queued.
    pub fn send(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if !self.close.is_closed() {
                    metrics::counter!("switchboard_slow_consumers_closed_total").increment(1);
                    tracing::warn!(socket_id = %self.socket_id, "outbound queue full; closing slow consumer");
                }
                self.close.close(CLOSE_SLOW_CONSUMER);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    fn send_text(&self, frame: String) {
        self.send(frame.into());
    }

    pub fn close_signal(&self) -> &CloseSignal {
        &self.close
    }
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

/// Node-wide settings of the registry.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// How long a cache channel keeps its last event.
    pub cache_ttl: Duration,
    /// Most channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("presence channel is full ({max} members)")]
    PresenceFull { max: usize },
    #[error("too many channels on this connection (at most {max})")]
    TooManyChannels { max: usize },
}

/// A channel's occupancy across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Occupancy {
    pub subscriptions: usize,
    /// Unique presence members (0 for other channel types).
    pub users: usize,
}

/// The last event of a cache channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    pub event: String,
    pub data: String,
    pub ttl: Duration,
}

#[derive(Debug)]
struct Subscriber {
    handle: SocketHandle,
    member: Option<Member>,
}

/// A channel known on this node: it has local subscribers, or (cache channels) a last event
/// that has not been swept yet, or both.
#[derive(Debug, Default)]
struct ChannelState {
    subscribers: HashMap<Arc<str>, Subscriber>,
    count_sent_at: Option<Instant>,
    /// A count change held back by the throttle, sent by [`Registry::flush_counts`].
    count_pending: bool,
    /// The last event of a cache channel and when it expires; kept here, under the registry's
    /// lock, so a subscriber's replay and the fan-out of the next event cannot interleave.
    cached: Option<(CachedEvent, Instant)>,
}

impl ChannelState {
    /// The cached event with its remaining time to live, unless it has expired.
    fn cached(&self, now: Instant) -> Option<CachedEvent> {
        let (event, expires) = self.cached.as_ref()?;
        (*expires > now).then(|| CachedEvent {
            ttl: *expires - now,
            ..event.clone()
        })
    }

    /// Whether nothing is left to keep the channel for.
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.cached.is_none()
    }

    fn send_all(&self, frame: &Frame, except: Option<&str>) {
        for (socket_id, subscriber) in &self.subscribers {
            if Some(socket_id.as_ref()) != except {
                subscriber.handle.send(frame.clone());
            }
        }
    }
}

#[derive(Debug, Default)]
struct AppState {
    options: AppOptions,
    /// Connections on this node, with how many channels each is subscribed to.
    sockets: HashMap<Arc<str>, usize>,
    channels: HashMap<String, ChannelState>,
    /// Signed-in sockets by user id.
    users: HashMap<String, HashMap<Arc<str>, SocketHandle>>,
    /// Sockets that signed in with a watchlist.
    watchers: HashMap<Arc<str>, (SocketHandle, Vec<String>)>,
}

#[derive(Debug, Default)]
struct RemoteChannel {
    subscriptions: usize,
    members: HashMap<String, Option<String>>,
}

#[derive(Debug, Default)]
struct RemoteApp {
    connections: usize,
    channels: HashMap<String, RemoteChannel>,
    users: HashSet<String>,
}

#[derive(Debug)]
struct RemoteNode {
    seen: Instant,
    apps: HashMap<String, RemoteApp>,
}

impl RemoteNode {
    fn from_snapshot(snapshot: NodeSnapshot) -> RemoteNode {
        let apps = snapshot
            .apps
            .into_iter()
            .map(|app| {
                let channels = app
                    .channels
                    .into_iter()
                    .map(|c| {
                        let channel = RemoteChannel {
                            subscriptions: c.subscriptions,
                            members: c.members.into_iter().collect(),
                        };
                        (c.name, channel)
                    })
                    .collect();
                let remote = RemoteApp {
                    connections: app.connections,
                    channels,
                    users: app.users.into_iter().collect(),
                };
                (app.app_id, remote)
            })
            .collect();
        RemoteNode {
            seen: Instant::now(),
            apps,
        }
    }

    fn channel(&self, app_id: &str, channel: &str) -> Option<&RemoteChannel> {
        self.apps.get(app_id)?.channels.get(channel)
    }
}

#[derive(Debug, Default)]
struct State {
    apps: HashMap<String, AppState>,
    remote: HashMap<u32, RemoteNode>,
}

impl State {
    fn connections(&self, app_id: &str) -> usize {
        let local = self.apps.get(app_id).map_or(0, |a| a.sockets.len());
        local
            + self
                .remote
                .values()
                .filter_map(|r| r.apps.get(app_id))
                .map(|a| a.connections)
                .sum::<usize>()
    }

    fn remote_channels<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        skip: Option<u32>,
    ) -> impl Iterator<Item = &'a RemoteChannel> + 'a {
        self.remote
            .iter()
            .filter(move |(node, _)| Some(**node) != skip)
            .filter_map(move |(_, remote)| remote.channel(app_id, channel))
    }

    /// Whether `user_id` is a member of the channel anywhere, leaving out one local socket and
    /// one remote node.
    fn member_elsewhere(
        &self,
        app_id: &str,
        channel: &str,
        user_id: &str,
        skip_socket: Option<&str>,
        skip_node: Option<u32>,
    ) -> bool {
        let local = self
            .apps
            .get(app_id)
            .and_then(|app| app.channels.get(channel))
            .is_some_and(|state| {
                state.subscribers.iter().any(|(socket_id, s)| {
                    Some(socket_id.as_ref()) != skip_socket
                        && s.member.as_ref().is_some_and(|m| m.user_id == user_id)
                })
            });
        local
            || self
                .remote_channels(app_id, channel, skip_node)
                .any(|c| c.members.contains_key(user_id))
    }

    fn user_online(&self, app_id: &str, user_id: &str, skip_node: Option<u32>) -> bool {
        let local = self
            .apps
            .get(app_id)
            .is_some_and(|app| app.users.contains_key(user_id));
        local
            || self
                .remote
                .iter()
                .filter(|(node, _)| Some(**node) != skip_node)
                .any(|(_, r)| {
                    r.apps
                        .get(app_id)
                        .is_some_and(|a| a.users.contains(user_id))
                })
    }

    /// Unique members of a presence channel across the cluster, local ones first.
    fn members(&self, app_id: &str, channel: &str) -> Vec<Member> {
        let mut seen = HashSet::new();
        let mut members = Vec::new();
        if let Some(state) = self.apps.get(app_id).and_then(|a| a.channels.get(channel)) {
            for member in state.subscribers.values().filter_map(|s| s.member.as_ref()) {
                if seen.insert(member.user_id.clone()) {
                    members.push(member.clone());
                }
            }
        }
        for remote in self.remote_channels(app_id, channel, None) {
            for (user_id, user_info) in &remote.members {
                if seen.insert(user_id.clone()) {
                    members.push(Member {
                        user_id: user_id.clone(),
                        user_info: user_info.clone(),
                    });
                }
            }
        }
        members
    }

    fn subscriptions(&self, app_id: &str, channel: &str) -> usize {
        let local = self
            .apps
            .get(app_id)
            .and_then(|a| a.channels.get(channel))
            .map_or(0, |c| c.subscribers.len());
        local
            + self
                .remote_channels(app_id, channel, None)
                .map(|c| c.subscriptions)
                .sum::<usize>()
    }

    /// Sends the channel's subscription count to its local subscribers, if the app wants it.
    fn notify_count(&mut self, app_id: &str, channel: &str) {
        if Channel::parse(channel).is_ok_and(|c| c.kind == ChannelKind::Presence) {
            return;
        }
        let count = self.subscriptions(app_id, channel);
        let Some(app) = self.apps.get_mut(app_id) else {
            return;
        };
        if !app.options.subscription_count {
            return;
        }
        let Some(state) = app.channels.get_mut(channel) else {
            return;
        };
        let now = Instant::now();
        let throttled = count > COUNT_THROTTLE_ABOVE
            && state
                .count_sent_at
                .is_some_and(|at| now.duration_since(at) < COUNT_THROTTLE);
        if throttled {
            state.count_pending = true;
        } else {
            state.count_sent_at = Some(now);
            state.count_pending = false;
            let frame: Frame = frame::encode_subscription_count(channel, count).into();
            state.send_all(&frame, None);
        }
    }

    /// Tells local watchers of `user_ids` that they came online or went offline.
    fn notify_watchers(&self, app_id: &str, online: &[String], offline: &[String]) {
        let Some(app) = self.apps.get(app_id) else {
            return;
        };
        for (handle, watchlist) in app.watchers.values() {
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

/// Node-wide registry; see the module documentation.
#[derive(Debug)]
pub struct Registry {
    node: u32,
    config: RegistryConfig,
    state: RwLock<State>,
    dirty: AtomicBool,
    outbox: mpsc::Sender<Control>,
}

impl Registry {
    /// A registry for node `node` and the receiver of the control messages it wants broadcast.
    pub fn new(node: u32, config: RegistryConfig) -> (Registry, mpsc::Receiver<Control>) {
        let (outbox, rx) = mpsc::channel(1024);
        let registry = Registry {
            node,
            config,
            state: RwLock::default(),
            dirty: AtomicBool::new(false),
            outbox,
        };
        (registry, rx)
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether local state changed since the last call (then a snapshot is due).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
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
        let app = state.apps.entry(app_id.to_owned()).or_default();
        app.options = options;
        app.sockets.insert(socket.socket_id.clone(), 0);
        self.changed();
        Ok(())
    }

    /// Connections of an app across the cluster.
    pub fn connections(&self, app_id: &str) -> usize {
        self.state.read().connections(app_id)
    }

    /// Forgets a connection: leaves its channels (with the notifications that follows), signs it
    /// out, drops its watchlist.
    pub fn disconnect(&self, app_id: &str, socket_id: &str, channels: &[String]) {
        for channel in channels {
            self.unsubscribe(app_id, channel, socket_id);
        }
        let mut state = self.state.write();
        let Some(app) = state.apps.get_mut(app_id) else {
            return;
        };
        app.sockets.remove(socket_id);
        app.watchers.remove(socket_id);
        let mut went_offline = None;
        app.users.retain(|user_id, sockets| {
            if sockets.remove(socket_id).is_some() && sockets.is_empty() {
                went_offline = Some(user_id.clone());
            }
            !sockets.is_empty()
        });
        if app.sockets.is_empty() && app.channels.is_empty() {
            state.apps.remove(app_id);
        }
        if let Some(user_id) = went_offline {
            if !state.user_online(app_id, &user_id, None) {
                state.notify_watchers(app_id, &[], &[user_id]);
            }
        }
        self.changed();
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
        let mut state = self.state.write();
        let already = state
            .apps
            .get(app_id)
            .and_then(|a| a.channels.get(channel))
            .is_some_and(|c| c.subscribers.contains_key(&socket.socket_id));
        if already {
            return Ok(false);
        }
        let options = state
            .apps
            .get(app_id)
            .map(|a| a.options)
            .unwrap_or_default();
        let max_channels = self.config.max_channels_per_connection;
        let subscribed = state
            .apps
            .get(app_id)
            .and_then(|a| a.sockets.get(&socket.socket_id))
            .copied()
            .unwrap_or(0);
        if subscribed >= max_channels {
            return Err(SubscribeError::TooManyChannels { max: max_channels });
        }
        let joined_user = match &member {
            Some(member) => {
                let present = state.member_elsewhere(app_id, channel, &member.user_id, None, None);
                if !present && state.members(app_id, channel).len() >= options.max_presence_members
                {
                    return Err(SubscribeError::PresenceFull {
                        max: options.max_presence_members,
                    });
                }
                (!present).then(|| member.clone())
            }
            None => None,
        };
        let is_presence = member.is_some();
        let app = state.apps.entry(app_id.to_owned()).or_default();
        if let Some(channels) = app.sockets.get_mut(&socket.socket_id) {
            *channels += 1;
        }
        app.channels
            .entry(channel.to_owned())
            .or_default()
            .subscribers
            .insert(
                socket.socket_id.clone(),
                Subscriber {
                    handle: socket.clone(),
                    member,
                },
            );
        if is_presence {
            let members = state.members(app_id, channel);
            socket.send_text(frame::encode_presence_succeeded(channel, &members));
        } else {
            socket.send_text(frame::encode_subscription_succeeded(channel, "{}"));
        }
        if Channel::parse(channel).is_ok_and(|c| c.cache) {
            let cached = state
                .apps
                .get(app_id)
                .and_then(|a| a.channels.get(channel))
                .and_then(|c| c.cached(Instant::now()));
            match cached {
                Some(cached) => socket.send_text(frame::encode(
                    &cached.event,
                    Some(channel),
                    &cached.data,
                    None,
                )),
                None => socket.send_text(frame::encode_cache_miss(channel)),
            }
        }
        if let Some(joined) = joined_user {
            let added: Frame = frame::encode_member_added(channel, &joined).into();
            if let Some(c) = state.apps.get(app_id).and_then(|a| a.channels.get(channel)) {
                c.send_all(&added, Some(&socket.socket_id));
            }
        }
        state.notify_count(app_id, channel);
        metrics::gauge!("switchboard_subscriptions").increment(1.0);
        self.changed();
        Ok(true)
    }

    /// Removes a subscription; returns whether there was one.
    pub fn unsubscribe(&self, app_id: &str, channel: &str, socket_id: &str) -> bool {
        let mut state = self.state.write();
        let Some(app) = state.apps.get_mut(app_id) else {
            return false;
        };
        let Some(channel_state) = app.channels.get_mut(channel) else {
            return false;
        };
        let Some(removed) = channel_state.subscribers.remove(socket_id) else {
            return false;
        };
        if channel_state.is_unused() {
            app.channels.remove(channel);
        }
        if let Some(channels) = app.sockets.get_mut(socket_id) {
            *channels -= 1;
        }
        if let Some(member) = removed.member {
            if !state.member_elsewhere(app_id, channel, &member.user_id, None, None) {
                let frame: Frame = frame::encode_member_removed(channel, &member.user_id).into();
                if let Some(c) = state.apps.get(app_id).and_then(|a| a.channels.get(channel)) {
                    c.send_all(&frame, None);
                }
            }
        }
        state.notify_count(app_id, channel);
        metrics::gauge!("switchboard_subscriptions").decrement(1.0);
        self.changed();
        true
    }

    /// Records a signed-in connection; queues the watchlist's current online users.
    pub fn sign_in(&self, app_id: &str, socket: &SocketHandle, user: &SignedInUser) {
        let mut state = self.state.write();
        let was_online = state.user_online(app_id, &user.id, None);
        let app = state.apps.entry(app_id.to_owned()).or_default();
        app.users
            .entry(user.id.clone())
            .or_default()
            .insert(socket.socket_id.clone(), socket.clone());
        if !user.watchlist.is_empty() {
            app.watchers.insert(
                socket.socket_id.clone(),
                (socket.clone(), user.watchlist.clone()),
            );
            let online: Vec<String> = user
                .watchlist
                .iter()
                .filter(|u| state.user_online(app_id, u, None))
                .cloned()
                .collect();
            let offline: Vec<String> = user
                .watchlist
                .iter()
                .filter(|u| !online.contains(u))
                .cloned()
                .collect();
            socket.send_text(frame::encode_watchlist_events(&online, &offline));
        }
        if !was_online {
            state.notify_watchers(app_id, std::slice::from_ref(&user.id), &[]);
        }
        self.changed();
    }

    /// Closes every local subscriber of a channel with `code`; returns how many.
    pub fn close_channel(&self, app_id: &str, channel: &str, code: u16) -> usize {
        let state = self.state.read();
        let Some(subscribers) = state
            .apps
            .get(app_id)
            .and_then(|a| a.channels.get(channel))
            .map(|c| &c.subscribers)
        else {
            return 0;
        };
        for subscriber in subscribers.values() {
            if !subscriber.handle.close_signal().is_closed() {
                metrics::counter!("switchboard_slow_consumers_closed_total").increment(1);
            }
            subscriber.handle.close_signal().close(code);
        }
        subscribers.len()
    }

    /// Closes this node's connections signed in as `user_id` with 4009.
    pub fn terminate_local(&self, app_id: &str, user_id: &str) -> usize {
        let state = self.state.read();
        let Some(sockets) = state.apps.get(app_id).and_then(|a| a.users.get(user_id)) else {
            return 0;
        };
        for socket in sockets.values() {
            socket.close_signal().close(CLOSE_TERMINATED);
        }
        sockets.len()
    }

    /// Asks every node (this one included, through the bus) to run a control message.
    pub fn broadcast(&self, message: Control) -> bool {
        self.outbox.try_send(message).is_ok()
    }

    pub fn occupancy(&self, app_id: &str, channel: &str) -> Occupancy {
        let state = self.state.read();
        Occupancy {
            subscriptions: state.subscriptions(app_id, channel),
            users: state.members(app_id, channel).len(),
        }
    }

    pub fn members(&self, app_id: &str, channel: &str) -> Vec<Member> {
        self.state.read().members(app_id, channel)
    }

    /// Occupied channels of an app across the cluster whose name starts with `prefix`.
    pub fn occupied(&self, app_id: &str, prefix: &str) -> Vec<(String, Occupancy)> {
        let state = self.state.read();
        let mut names: HashSet<&str> = HashSet::new();
        if let Some(app) = state.apps.get(app_id) {
            names.extend(
                app.channels
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .map(|(n, _)| n.as_str()),
            );
        }
        for remote in state.remote.values() {
            if let Some(app) = remote.apps.get(app_id) {
                names.extend(
                    app.channels
                        .iter()
                        .filter(|(_, c)| c.subscriptions > 0)
                        .map(|(n, _)| n.as_str()),
                );
            }
        }
        let mut occupied: Vec<(String, Occupancy)> = names
            .into_iter()
            .filter(|name| name.starts_with(prefix))
            .map(|name| {
                let occupancy = Occupancy {
                    subscriptions: state.subscriptions(app_id, name),
                    users: state.members(app_id, name).len(),
                };
                (name.to_owned(), occupancy)
            })
            .collect();
        occupied.sort_by(|a, b| a.0.cmp(&b.0));
        occupied
    }

    /// The cached last event of a cache channel, if it has not expired.
    pub fn cached(&self, app_id: &str, channel: &str) -> Option<CachedEvent> {
        self.state
            .read()
            .apps
            .get(app_id)
            .and_then(|a| a.channels.get(channel))
            .and_then(|c| c.cached(Instant::now()))
    }

    /// Forgets the cached events that have expired, and the channels only they kept.
    pub fn sweep_cache(&self) {
        let now = Instant::now();
        let mut state = self.state.write();
        state.apps.retain(|_, app| {
            app.channels.retain(|_, channel| {
                if channel.cached.as_ref().is_some_and(|(_, at)| *at <= now) {
                    channel.cached = None;
                }
                !channel.is_unused()
            });
            !app.sockets.is_empty() || !app.channels.is_empty()
        });
    }

    /// Encodes the event's frame once and offers it to every local subscriber of its channel,
    /// except the excluded socket; remembers it for cache channels. Returns how many sockets it
    /// was queued for.
    ///
    /// A cache channel's event is remembered and sent under the write lock, so a subscription
    /// gets it either as its replay or from the fan-out, never both; other channels need only
    /// the read lock.
    pub fn fan_out(&self, envelope: &Envelope) -> usize {
        if Channel::parse(&envelope.channel).is_ok_and(|c| c.cache) {
            let mut state = self.state.write();
            let channel = state
                .apps
                .entry(envelope.app_id.clone())
                .or_default()
                .channels
                .entry(envelope.channel.clone())
                .or_default();
            let cached = CachedEvent {
                event: envelope.name.clone(),
                data: envelope.data.clone(),
                ttl: self.config.cache_ttl,
            };
            channel.cached = Some((cached, Instant::now() + self.config.cache_ttl));
            deliver(channel, envelope)
        } else {
            let state = self.state.read();
            state
                .apps
                .get(&envelope.app_id)
                .and_then(|app| app.channels.get(&envelope.channel))
                .map_or(0, |channel| deliver(channel, envelope))
        }
    }
    /// This node's local state, for the other nodes.
    pub fn snapshot(&self) -> NodeSnapshot {
        let state = self.state.read();
        let apps = state
            .apps
            .iter()
            .map(|(app_id, app)| AppSnapshot {
                app_id: app_id.clone(),
                connections: app.sockets.len(),
                channels: app
                    .channels
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .map(|(name, c)| {
                        let mut members: Vec<(String, Option<String>)> = Vec::new();
                        for member in c.subscribers.values().filter_map(|s| s.member.as_ref()) {
                            if !members.iter().any(|(id, _)| *id == member.user_id) {
                                members.push((member.user_id.clone(), member.user_info.clone()));
                            }
                        }
                        ChannelSnapshot {
                            name: name.clone(),
                            subscriptions: c.subscribers.len(),
                            members,
                        }
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
        let new = RemoteNode::from_snapshot(snapshot);
        let mut state = self.state.write();
        let old = state.remote.remove(&node);
        let empty = HashMap::new();
        let old_apps = old.as_ref().map_or(&empty, |o| &o.apps);
        notify_remote_changes(&state, node, old_apps, &new.apps);
        state.remote.insert(node, new);
        let count_channels: Vec<(String, String)> =
            changed_counts(old_apps, &state.remote[&node].apps);
        for (app_id, channel) in count_channels {
            state.notify_count(&app_id, &channel);
        }
    }

    /// Forgets a node (it said goodbye, or its snapshots stopped), notifying local sockets.
    pub fn forget_node(&self, node: u32) {
        let mut state = self.state.write();
        let Some(old) = state.remote.remove(&node) else {
            return;
        };
        notify_remote_changes(&state, node, &old.apps, &HashMap::new());
        for (app_id, channel) in changed_counts(&old.apps, &HashMap::new()) {
            state.notify_count(&app_id, &channel);
        }
        tracing::info!(node, "forgot gateway node");
    }

    /// Sends the subscription counts the throttle held back, once their window has passed.
    pub fn flush_counts(&self) {
        let mut state = self.state.write();
        let due: Vec<(String, String)> = state
            .apps
            .iter()
            .flat_map(|(app_id, app)| {
                app.channels
                    .iter()
                    .filter(|(_, c)| {
                        c.count_pending
                            && c.count_sent_at
                                .is_none_or(|at| at.elapsed() >= COUNT_THROTTLE)
                    })
                    .map(move |(name, _)| (app_id.clone(), name.clone()))
            })
            .collect();
        for (app_id, channel) in due {
            state.notify_count(&app_id, &channel);
        }
    }

    /// Nodes whose last snapshot is older than `timeout`.
    pub fn stale_nodes(&self, timeout: Duration) -> Vec<u32> {
        let now = Instant::now();
        self.state
            .read()
            .remote
            .iter()
            .filter(|(_, r)| now.duration_since(r.seen) > timeout)
            .map(|(node, _)| *node)
            .collect()
    }
}

/// Encodes the event's frame once and queues it for the channel's subscribers, except the
/// excluded socket; returns for how many.
fn deliver(channel: &ChannelState, envelope: &Envelope) -> usize {
    if channel.subscribers.is_empty() {
        return 0;
    }
    // Client events on presence channels carry the sender's user id.
    let user_id = match envelope.source {
        Source::Client => envelope.user_id.as_deref(),
        Source::Api | Source::Track => None,
    };
    let frame: Frame = frame::encode(
        &envelope.name,
        Some(&envelope.channel),
        &envelope.data,
        user_id,
    )
    .into();
    let excluded = envelope.socket_id.as_deref();
    let mut delivered = 0;
    for (socket_id, subscriber) in &channel.subscribers {
        if Some(socket_id.as_ref()) != excluded && subscriber.handle.send(frame.clone()) {
            delivered += 1;
        }
    }
    metrics::counter!("switchboard_deliveries_total").increment(delivered as u64);
    delivered
}

/// Channels whose remote subscription count differs between two views of a node.
fn changed_counts(
    old: &HashMap<String, RemoteApp>,
    new: &HashMap<String, RemoteApp>,
) -> Vec<(String, String)> {
    let mut changed = Vec::new();
    for (app_id, app) in old.iter().chain(new.iter()) {
        for name in app.channels.keys() {
            let count = |apps: &HashMap<String, RemoteApp>| {
                apps.get(app_id)
                    .and_then(|a| a.channels.get(name))
                    .map_or(0, |c| c.subscriptions)
            };
            let key = (app_id.clone(), name.clone());
            if count(old) != count(new) && !changed.contains(&key) {
                changed.push(key);
            }
        }
    }
    changed
}

/// Sends `member_added` / `member_removed` and watchlist events to local sockets for what a
/// remote node's new view changes, given the view of every other node and the local state.
fn notify_remote_changes(
    state: &State,
    node: u32,
    old: &HashMap<String, RemoteApp>,
    new: &HashMap<String, RemoteApp>,
) {
    let no_app = RemoteApp::default();
    let app_ids: HashSet<&String> = old.keys().chain(new.keys()).collect();
    for app_id in app_ids {
        let Some(local) = state.apps.get(app_id.as_str()) else {
            continue;
        };
        let before = old.get(app_id).unwrap_or(&no_app);
        let after = new.get(app_id).unwrap_or(&no_app);
        for (name, channel) in &local.channels {
            let no_channel = RemoteChannel::default();
            let was = before.channels.get(name).unwrap_or(&no_channel);
            let is = after.channels.get(name).unwrap_or(&no_channel);
            for (user_id, user_info) in &is.members {
                if !was.members.contains_key(user_id)
                    && !state.member_elsewhere(app_id, name, user_id, None, Some(node))
                {
                    let member = Member {
                        user_id: user_id.clone(),
                        user_info: user_info.clone(),
                    };
                    channel.send_all(&frame::encode_member_added(name, &member).into(), None);
                }
            }
            for user_id in was.members.keys() {
                if !is.members.contains_key(user_id)
                    && !state.member_elsewhere(app_id, name, user_id, None, Some(node))
                {
                    channel.send_all(&frame::encode_member_removed(name, user_id).into(), None);
                }
            }
        }
        if !local.watchers.is_empty() {
            let elsewhere = |u: &String| state.user_online(app_id, u, Some(node));
            let online: Vec<String> = after
                .users
                .iter()
                .filter(|u| !before.users.contains(*u) && !elsewhere(u))
                .cloned()
                .collect();
            let offline: Vec<String> = before
                .users
                .iter()
                .filter(|u| !after.users.contains(*u) && !elsewhere(u))
                .cloned()
                .collect();
            state.notify_watchers(app_id, &online, &offline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const APP: &str = "app";

    fn config() -> RegistryConfig {
        RegistryConfig {
            cache_ttl: Duration::from_secs(60),
            max_channels_per_connection: 100,
        }
    }

    fn registry() -> Registry {
        Registry::new(1, config()).0
    }

    fn options() -> AppOptions {
        AppOptions {
            subscription_count: false,
            max_presence_members: 100,
            max_connections: None,
        }
    }

    fn socket(registry: &Registry, id: &str) -> (SocketHandle, mpsc::Receiver<Frame>) {
        let (handle, rx) = SocketHandle::new(id, 64);
        registry.connect(APP, options(), &handle).unwrap();
        (handle, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<Frame>) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            frames.push(serde_json::from_str(&frame).unwrap());
        }
        frames
    }

    fn events(rx: &mut mpsc::Receiver<Frame>) -> Vec<String> {
        drain(rx)
            .iter()
            .map(|f| f["event"].as_str().unwrap().to_owned())
            .collect()
    }

    fn envelope(channel: &str, data: &str) -> Envelope {
        Envelope::new(APP, Source::Api, channel, "ev", data.to_owned())
    }

    fn member(id: &str) -> Option<Member> {
        Some(Member {
            user_id: id.into(),
            user_info: Some(format!(r#"{{"name":"{id}"}}"#)),
        })
    }

    fn data(frame: &Value) -> Value {
        serde_json::from_str(frame["data"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn delivers_to_subscribers_except_excluded() {
        let registry = registry();
        let (a, mut rx_a) = socket(&registry, "1.1");
        let (b, mut rx_b) = socket(&registry, "1.2");
        assert_eq!(registry.subscribe(APP, "news", &a, None), Ok(true));
        assert_eq!(registry.subscribe(APP, "news", &a, None), Ok(false));
        assert_eq!(registry.subscribe(APP, "news", &b, None), Ok(true));
        drain(&mut rx_a);
        drain(&mut rx_b);
        let mut ev = envelope("news", "{}");
        ev.socket_id = Some("1.1".into());
        assert_eq!(registry.fan_out(&ev), 1);
        assert!(rx_a.try_recv().is_err());
        assert_eq!(
            &*rx_b.try_recv().unwrap(),
            r#"{"event":"ev","channel":"news","data":"{}"}"#
        );
    }

    #[test]
    fn apps_and_channels_are_isolated() {
        let registry = registry();
        let (a, mut rx) = SocketHandle::new("1.1", 8);
        registry.connect("other-app", options(), &a).unwrap();
        registry.subscribe("other-app", "news", &a, None).unwrap();
        registry.subscribe(APP, "sports", &a, None).unwrap();
        drain(&mut rx);
        assert_eq!(registry.fan_out(&envelope("news", "x")), 0);
        assert!(rx.try_recv().is_err());
        assert_eq!(registry.occupied("other-app", "").len(), 1);
        assert_eq!(registry.occupied(APP, "").len(), 1);
        assert_eq!(registry.occupied("third", "").len(), 0);
    }

    #[test]
    fn unsubscribe_and_disconnect_clean_up() {
        let registry = registry();
        let (a, mut rx) = socket(&registry, "1.1");
        registry.subscribe(APP, "news", &a, None).unwrap();
        assert_eq!(registry.occupancy(APP, "news").subscriptions, 1);
        assert!(registry.unsubscribe(APP, "news", "1.1"));
        assert!(!registry.unsubscribe(APP, "news", "1.1"));
        assert_eq!(registry.occupancy(APP, "news").subscriptions, 0);
        drain(&mut rx);
        assert_eq!(registry.fan_out(&envelope("news", "x")), 0);
        registry.subscribe(APP, "news", &a, None).unwrap();
        assert_eq!(registry.connections(APP), 1);
        registry.disconnect(APP, "1.1", &["news".into()]);
        assert_eq!(registry.connections(APP), 0);
        assert!(registry.occupied(APP, "").is_empty());
        assert!(registry.state.read().apps.is_empty());
    }

    #[test]
    fn concurrent_handshakes_never_pass_the_quota() {
        const MAX: usize = 8;
        let registry = registry();
        let quota = AppOptions {
            max_connections: Some(MAX),
            ..options()
        };
        let start = std::sync::Barrier::new(3 * MAX);
        let admitted: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..3 * MAX)
                .map(|i| {
                    let (registry, start) = (&registry, &start);
                    scope.spawn(move || {
                        let id = format!("1.{i}");
                        let (socket, _rx) = SocketHandle::new(&id, 8);
                        start.wait();
                        registry.connect(APP, quota, &socket).map(|()| id)
                    })
                })
                .collect();
            threads
                .into_iter()
                .filter_map(|t| t.join().unwrap().ok())
                .collect()
        });
        assert_eq!(admitted.len(), MAX);
        assert_eq!(registry.connections(APP), MAX);
        let (late, _rx) = SocketHandle::new("1.99", 8);
        assert_eq!(
            registry.connect(APP, quota, &late),
            Err(ConnectError::OverQuota { max: MAX })
        );
        // Remote connections count too.
        registry.disconnect(APP, &admitted[0], &[]);
        let (b, _) = Registry::new(2, config());
        let (remote, _rx) = SocketHandle::new("2.1", 8);
        b.connect(APP, options(), &remote).unwrap();
        registry.apply_remote(b.snapshot());
        assert_eq!(
            registry.connect(APP, quota, &late),
            Err(ConnectError::OverQuota { max: MAX })
        );
    }

    #[test]
    fn channels_per_connection_are_limited() {
        let (registry, _) = Registry::new(
            1,
            RegistryConfig {
                max_channels_per_connection: 2,
                ..config()
            },
        );
        let (a, mut rx) = socket(&registry, "1.1");
        let (b, _rx_b) = socket(&registry, "1.2");
        assert_eq!(registry.subscribe(APP, "one", &a, None), Ok(true));
        assert_eq!(registry.subscribe(APP, "two", &a, None), Ok(true));
        assert_eq!(registry.subscribe(APP, "two", &a, None), Ok(false));
        assert_eq!(
            registry.subscribe(APP, "three", &a, None),
            Err(SubscribeError::TooManyChannels { max: 2 })
        );
        assert_eq!(registry.occupancy(APP, "three").subscriptions, 0);
        // The limit is per connection, and leaving a channel makes room.
        assert_eq!(registry.subscribe(APP, "three", &b, None), Ok(true));
        assert!(registry.unsubscribe(APP, "one", "1.1"));
        assert_eq!(registry.subscribe(APP, "three", &a, None), Ok(true));
        drain(&mut rx);
        assert_eq!(registry.fan_out(&envelope("two", "x")), 1);
    }

    #[test]
    fn full_queue_closes_only_the_slow_socket() {
        let registry = registry();
        let (slow, _slow_rx) = SocketHandle::new("1.1", 2);
        let (fast, mut fast_rx) = SocketHandle::new("1.2", 16);
        registry.connect(APP, options(), &slow).unwrap();
        registry.connect(APP, options(), &fast).unwrap();
        registry.subscribe(APP, "news", &slow, None).unwrap();
        registry.subscribe(APP, "news", &fast, None).unwrap();
        drain(&mut fast_rx);
        for i in 0..3 {
            registry.fan_out(&envelope("news", &i.to_string()));
            assert!(fast_rx.try_recv().is_ok());
        }
        assert!(slow.close_signal().is_closed());
        assert!(!fast.close_signal().is_closed());
    }

    #[test]
    fn close_channel_closes_only_its_subscribers() {
        let registry = registry();
        let (a, _rx_a) = socket(&registry, "1.1");
        let (b, _rx_b) = socket(&registry, "1.2");
        registry.subscribe(APP, "lagging", &a, None).unwrap();
        registry.subscribe(APP, "other", &b, None).unwrap();
        assert_eq!(
            registry.close_channel(APP, "lagging", CLOSE_SLOW_CONSUMER),
            1
        );
        assert!(a.close_signal().is_closed());
        assert!(!b.close_signal().is_closed());
        assert_eq!(
            registry.close_channel(APP, "nobody", CLOSE_SLOW_CONSUMER),
            0
        );
    }

    #[tokio::test]
    async fn close_signal_keeps_first_code() {
        let signal = CloseSignal::default();
        signal.close(CLOSE_SLOW_CONSUMER);
        signal.close(4200);
        assert_eq!(signal.closed().await, CLOSE_SLOW_CONSUMER);
    }

    #[test]
    fn events_keep_order_per_socket() {
        let registry = registry();
        let (a, mut rx) = socket(&registry, "1.1");
        registry.subscribe(APP, "news", &a, None).unwrap();
        drain(&mut rx);
        for i in 0..20 {
            registry.fan_out(&envelope("news", &i.to_string()));
        }
        let data: Vec<String> = drain(&mut rx)
            .iter()
            .map(|f| f["data"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(data, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn presence_join_and_leave_semantics() {
        let registry = registry();
        let ch = "presence-room";
        let (u1a, mut rx1a) = socket(&registry, "1.1");
        let (u1b, mut rx1b) = socket(&registry, "1.2");
        let (u2, mut rx2) = socket(&registry, "1.3");
        registry.subscribe(APP, ch, &u1a, member("u1")).unwrap();
        let succeeded = drain(&mut rx1a);
        assert_eq!(succeeded.len(), 1);
        assert_eq!(
            data(&succeeded[0]),
            serde_json::json!({"presence":{"ids":["u1"],"hash":{"u1":{"name":"u1"}},"count":1}})
        );
        registry.subscribe(APP, ch, &u2, member("u2")).unwrap();
        let joined = drain(&mut rx1a);
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0]["event"], "pusher_internal:member_added");
        assert_eq!(data(&joined[0])["user_id"], "u2");
        assert_eq!(events(&mut rx2), ["pusher_internal:subscription_succeeded"]);
        // The same user's second socket: nobody hears member_added; the list stays unique.
        registry.subscribe(APP, ch, &u1b, member("u1")).unwrap();
        assert!(drain(&mut rx1a).is_empty());
        assert!(drain(&mut rx2).is_empty());
        assert_eq!(data(&drain(&mut rx1b)[0])["presence"]["count"], 2);
        assert_eq!(
            registry.occupancy(APP, ch),
            Occupancy {
                subscriptions: 3,
                users: 2
            }
        );
        // First of u1's sockets leaves: u1 is still there.
        registry.unsubscribe(APP, ch, "1.1");
        assert!(drain(&mut rx2).is_empty());
        // Last one leaves: member_removed, to the others only.
        registry.disconnect(APP, "1.2", &[ch.into()]);
        let removed = drain(&mut rx2);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0]["event"], "pusher_internal:member_removed");
        assert_eq!(data(&removed[0])["user_id"], "u1");
        assert!(drain(&mut rx1b).is_empty());
    }

    #[test]
    fn presence_member_limit() {
        let registry = registry();
        let limited = AppOptions {
            max_presence_members: 2,
            ..options()
        };
        let mut sockets = Vec::new();
        for (i, user) in ["a", "b", "c", "a"].iter().enumerate() {
            let (s, rx) = SocketHandle::new(&format!("1.{i}"), 8);
            registry.connect(APP, limited, &s).unwrap();
            let result = registry.subscribe(APP, "presence-x", &s, member(user));
            sockets.push((s, rx, result));
        }
        assert_eq!(sockets[0].2, Ok(true));
        assert_eq!(sockets[1].2, Ok(true));
        assert_eq!(sockets[2].2, Err(SubscribeError::PresenceFull { max: 2 }));
        assert_eq!(
            sockets[3].2,
            Ok(true),
            "an existing member may add a socket"
        );
    }

    #[test]
    fn cache_channels_replay_the_last_event_or_say_miss() {
        let registry = registry();
        let (a, mut rx) = socket(&registry, "1.1");
        registry.subscribe(APP, "cache-prices", &a, None).unwrap();
        assert_eq!(
            events(&mut rx),
            [
                "pusher_internal:subscription_succeeded",
                "pusher:cache_miss"
            ]
        );
        registry.fan_out(&envelope("cache-prices", "1"));
        registry.fan_out(&envelope("cache-prices", "2"));
        drain(&mut rx);
        let (b, mut rx_b) = socket(&registry, "1.2");
        registry.subscribe(APP, "cache-prices", &b, None).unwrap();
        let frames = drain(&mut rx_b);
        assert_eq!(frames[0]["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(frames[1]["event"], "ev");
        assert_eq!(frames[1]["data"], "2");
        assert_eq!(registry.cached(APP, "cache-prices").unwrap().data, "2");
        assert!(registry.cached(APP, "cache-other").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_cache_entries_are_swept_even_without_subscribers() {
        let registry = registry();
        let (a, mut rx) = socket(&registry, "1.1");
        registry.subscribe(APP, "cache-kept", &a, None).unwrap();
        registry.fan_out(&envelope("cache-kept", "1"));
        registry.fan_out(&envelope("cache-alone", "2"));
        drain(&mut rx);
        tokio::time::advance(Duration::from_secs(59)).await;
        registry.sweep_cache();
        assert_eq!(
            registry.cached(APP, "cache-alone").unwrap().ttl,
            Duration::from_secs(1)
        );
        assert!(registry
            .occupied(APP, "")
            .iter()
            .all(|(n, _)| n != "cache-alone"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(registry.cached(APP, "cache-alone").is_none());
        registry.sweep_cache();
        {
            let state = registry.state.read();
            let channels = &state.apps[APP].channels;
            assert!(!channels.contains_key("cache-alone"));
            assert!(channels["cache-kept"].cached.is_none());
        }
        // The last socket leaves: nothing of the app is left.
        registry.disconnect(APP, "1.1", &["cache-kept".into()]);
        assert!(registry.state.read().apps.is_empty());
        // An event after the expiry of the previous one is cached afresh.
        registry.fan_out(&envelope("cache-alone", "3"));
        assert_eq!(registry.cached(APP, "cache-alone").unwrap().data, "3");
    }

    #[test]
    fn a_cache_replay_and_the_fan_out_never_deliver_one_event_twice() {
        const EVENTS: usize = 3000;
        const SOCKETS: usize = 300;
        let registry = registry();
        let sockets: Vec<_> = (0..SOCKETS)
            .map(|i| {
                let (handle, rx) = SocketHandle::new(&format!("1.{i}"), EVENTS + 8);
                registry.connect(APP, options(), &handle).unwrap();
                (handle, rx)
            })
            .collect();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                start.wait();
                for i in 0..EVENTS {
                    registry.fan_out(&envelope("cache-race", &i.to_string()));
                }
            });
            scope.spawn(|| {
                start.wait();
                for (handle, _) in &sockets {
                    registry.subscribe(APP, "cache-race", handle, None).unwrap();
                }
            });
        });
        for (handle, mut rx) in sockets {
            let seen: Vec<usize> = drain(&mut rx)
                .iter()
                .filter(|f| f["event"] == "ev")
                .map(|f| f["data"].as_str().unwrap().parse().unwrap())
                .collect();
            assert!(
                seen.windows(2).all(|w| w[0] + 1 == w[1]),
                "socket {} saw {:?}",
                handle.socket_id,
                &seen[..seen.len().min(5)]
            );
        }
    }

    #[test]
    fn subscription_count_when_enabled() {
        let registry = registry();
        let counting = AppOptions {
            subscription_count: true,
            ..options()
        };
        let (a, mut rx_a) = SocketHandle::new("1.1", 16);
        let (b, mut rx_b) = SocketHandle::new("1.2", 16);
        registry.connect(APP, counting, &a).unwrap();
        registry.connect(APP, counting, &b).unwrap();
        registry.subscribe(APP, "news", &a, None).unwrap();
        let frames = drain(&mut rx_a);
        assert_eq!(frames[1]["event"], "pusher_internal:subscription_count");
        assert_eq!(data(&frames[1])["subscription_count"], 1);
        registry.subscribe(APP, "news", &b, None).unwrap();
        assert_eq!(data(&drain(&mut rx_a)[0])["subscription_count"], 2);
        assert_eq!(data(&drain(&mut rx_b)[1])["subscription_count"], 2);
        registry.unsubscribe(APP, "news", "1.2");
        assert_eq!(data(&drain(&mut rx_a)[0])["subscription_count"], 1);
        // Not for presence channels, not for apps without the option.
        registry
            .subscribe(APP, "presence-x", &a, member("u"))
            .unwrap();
        assert_eq!(
            events(&mut rx_a),
            ["pusher_internal:subscription_succeeded"]
        );
        let (c, mut rx_c) = socket(&registry, "1.3");
        registry.subscribe("plain", "news", &c, None).unwrap();
        assert_eq!(
            events(&mut rx_c),
            ["pusher_internal:subscription_succeeded"]
        );
    }

    #[test]
    fn subscription_count_is_throttled_above_100_and_flushed_later() {
        let registry = registry();
        let counting = AppOptions {
            subscription_count: true,
            ..options()
        };
        let (watcher, mut rx) = SocketHandle::new("0.0", 512);
        registry.connect(APP, counting, &watcher).unwrap();
        registry.subscribe(APP, "big", &watcher, None).unwrap();
        let mut others = Vec::new();
        for i in 1..=101 {
            let (s, other_rx) = SocketHandle::new(&format!("1.{i}"), 512);
            registry.connect(APP, counting, &s).unwrap();
            registry.subscribe(APP, "big", &s, None).unwrap();
            others.push((s, other_rx));
        }
        let counts: Vec<u64> = drain(&mut rx)
            .iter()
            .filter(|f| f["event"] == "pusher_internal:subscription_count")
            .map(|f| data(f)["subscription_count"].as_u64().unwrap())
            .collect();
        // Every change up to 100 is sent; above 100 within 5 s of the last one is held back.
        assert_eq!(counts.first(), Some(&1));
        assert_eq!(counts.last(), Some(&100));
        registry.flush_counts();
        assert!(
            drain(&mut rx).is_empty(),
            "still inside the throttle window"
        );
        let state = registry.state.read();
        assert!(state.apps[APP].channels["big"].count_pending);
    }

    #[test]
    fn watchlists_hear_online_and_offline() {
        let registry = registry();
        let (watcher, mut rx) = socket(&registry, "1.1");
        let me = SignedInUser {
            id: "me".into(),
            watchlist: vec!["friend".into(), "other".into()],
        };
        registry.sign_in(APP, &watcher, &me);
        let initial = drain(&mut rx);
        assert_eq!(
            data(&initial[0]),
            serde_json::json!({"events":[{"name":"offline","user_ids":["friend","other"]}]})
        );
        let (friend, _rx_f) = socket(&registry, "1.2");
        let friend_user = SignedInUser {
            id: "friend".into(),
            watchlist: vec![],
        };
        registry.sign_in(APP, &friend, &friend_user);
        assert_eq!(
            data(&drain(&mut rx)[0]),
            serde_json::json!({"events":[{"name":"online","user_ids":["friend"]}]})
        );
        registry.disconnect(APP, "1.2", &[]);
        assert_eq!(
            data(&drain(&mut rx)[0]),
            serde_json::json!({"events":[{"name":"offline","user_ids":["friend"]}]})
        );
        assert_eq!(registry.terminate_local(APP, "me"), 1);
        assert!(watcher.close_signal().is_closed());
    }

    #[test]
    fn remote_nodes_join_presence_and_occupancy() {
        let a = registry();
        let (b, _) = Registry::new(2, config());
        let (local, mut rx) = socket(&a, "1.1");
        a.subscribe(APP, "presence-room", &local, member("u1"))
            .unwrap();
        drain(&mut rx);
        let (remote, _rx_remote) = SocketHandle::new("2.1", 8);
        b.connect(APP, options(), &remote).unwrap();
        b.subscribe(APP, "presence-room", &remote, member("u2"))
            .unwrap();
        assert!(b.take_dirty());
        a.apply_remote(b.snapshot());
        let added = drain(&mut rx);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0]["event"], "pusher_internal:member_added");
        assert_eq!(data(&added[0])["user_id"], "u2");
        assert_eq!(
            a.occupancy(APP, "presence-room"),
            Occupancy {
                subscriptions: 2,
                users: 2
            }
        );
        assert_eq!(a.connections(APP), 2);
        assert_eq!(a.occupied(APP, "presence-").len(), 1);
        // The same snapshot again changes nothing.
        a.apply_remote(b.snapshot());
        assert!(drain(&mut rx).is_empty());
        // A user present on both nodes does not leave when one node forgets it.
        let (second, _rx_second) = SocketHandle::new("2.2", 8);
        b.connect(APP, options(), &second).unwrap();
        b.subscribe(APP, "presence-room", &second, member("u1"))
            .unwrap();
        a.apply_remote(b.snapshot());
        assert!(drain(&mut rx).is_empty());
        a.forget_node(2);
        let removed = drain(&mut rx);
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(data(&removed[0])["user_id"], "u2");
        assert_eq!(a.occupancy(APP, "presence-room").users, 1);
        assert!(a.stale_nodes(Duration::ZERO).is_empty());
        a.apply_remote(b.snapshot());
        assert_eq!(a.stale_nodes(Duration::ZERO), vec![2]);
        // Our own snapshot is ignored.
        a.apply_remote(a.snapshot());
        assert_eq!(a.occupancy(APP, "presence-room").subscriptions, 3);
    }
}
