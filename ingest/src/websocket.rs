//! Pusher v7 WebSocket sessions (PROTOCOL.md §1).
//!
//! A session is two tasks: the reader (this module's [`run`]) parses client frames, keeps the
//! activity timer and applies them to the registry; the writer ([`writer`]) drains the socket's
//! bounded outbound queue into the socket and sends the close frame.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dispatcher::{AppOptions, ConnectError, Record, SocketHandle, SubscribeError};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::clock::DefaultClock;
use protocol::channel::DEBUG_CHANNEL;
use protocol::frame::{self, ClientMessage};
use protocol::presence::{Member, SignedInUser, SigninError};
use protocol::signature::{signin_string_to_sign, verify_client_auth};
use protocol::webhook::{EventType, WebhookEvent};
use protocol::{Channel, ChannelKind, SocketId};
use tokio::time::Instant;
use tracing::{debug, Instrument};
use warp::ws::{Message, WebSocket};

use crate::apps::App;
use crate::Gateway;

mod client_event;
mod rate;
mod track;
mod writer;

use rate::RateLimit;
use track::Track;
pub use track::{register_metrics as register_track_metrics, Origin, MAX_IN_FLIGHT};

/// Pusher close and error codes used by the WebSocket endpoint.
pub mod code {
    pub const APP_NOT_FOUND: u16 = 4001;
    pub const APP_DISABLED: u16 = 4003;
    pub const OVER_CONNECTION_QUOTA: u16 = 4004;
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub const NO_PROTOCOL: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4009;
    pub const SHUTTING_DOWN: u16 = 4200;
    pub const PONG_TIMEOUT: u16 = 4201;
    pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
    pub const WATCHLIST_LIMIT: u16 = 4302;
    /// The `status` of the `pusher:subscription_error` for a subscription over
    /// `gateway.max_channels_per_connection` (the connection stays open).
    pub const TOO_MANY_CHANNELS: u16 = 4303;
    pub const NORMAL: u16 = 1000;
}

/// Protocol versions served: pusher-js speaks 7; 5 and 6 differ only in ways we don't rely on.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Longest client event name, in characters.
const MAX_EVENT_NAME_LEN: usize = 200;

/// What the upgrade request said: the app key from the path, the `protocol` query parameter,
/// whether the path opted in to Switchboard's extensions (`/switchboard/app/{key}`), and where
/// the client is (its address and User-Agent, for analytics sent over the connection).
pub struct Handshake {
    pub key: String,
    pub protocol: Option<String>,
    pub event_ids: bool,
    pub origin: Origin,
}

fn check_handshake(
    gateway: &Gateway,
    handshake: &Handshake,
) -> Result<Arc<App>, (u16, &'static str)> {
    let app = gateway
        .apps
        .by_key(&handshake.key)
        .ok_or((code::APP_NOT_FOUND, "App key not found"))?;
    if !app.enabled {
        return Err((code::APP_DISABLED, "App is disabled"));
    }
    let protocol = handshake
        .protocol
        .as_deref()
        .ok_or((code::NO_PROTOCOL, "No protocol version given"))?;
    match protocol.parse::<u32>() {
        Ok(version) if PROTOCOLS.contains(&version) => {}
        _ => return Err((code::UNSUPPORTED_PROTOCOL, "Unsupported protocol version")),
    }
    Ok(app.clone())
}

/// Tells the client why it is refused, then closes.
async fn refuse(sink: &mut SplitSink<WebSocket, Message>, code: u16, message: &'static str) {
    let _ = sink
        .send(Message::text(frame::encode_error(message, Some(code))))
        .await;
    let _ = sink.send(Message::close_with(code, message)).await;
}

/// Runs one WebSocket connection to its end.
pub async fn run(gateway: Arc<Gateway>, handshake: Handshake, socket: WebSocket) {
    let (mut sink, stream) = socket.split();
    let app = match check_handshake(&gateway, &handshake) {
        Ok(app) => app,
        Err((code, message)) => return refuse(&mut sink, code, message).await,
    };
    let socket_id = SocketId {
        node: gateway.node,
        seq: gateway.next_socket.fetch_add(1, Ordering::Relaxed),
    }
    .to_string();
    let span = tracing::info_span!("socket", socket_id, app_id = app.id);
    async move {
        let (handle, outbound) = SocketHandle::new(&socket_id, gateway.config.socket_queue_len);
        let handle = match handshake.event_ids {
            true => handle.with_event_ids(),
            false => handle,
        };
        let options = AppOptions {
            subscription_count: app.subscription_count,
            max_presence_members: app.limits.max_presence_members,
            max_connections: app.max_connections,
        };
        // The quota is checked and the connection counted in one step (the registry's lock).
        if let Err(error @ ConnectError::OverQuota { .. }) =
            gateway.registry.connect(&app.id, options, &handle)
        {
            debug!(%error, "connection refused");
            return refuse(
                &mut sink,
                code::OVER_CONNECTION_QUOTA,
                "Over connection quota",
            )
            .await;
        }
        metrics::gauge!("switchboard_connections").increment(1.0);
        gateway
            .registry
            .debug(&app.id, || Record::ConnectionOpened {
                socket_id: socket_id.clone(),
            });
        let writer = writer::write_loop(
            sink,
            outbound,
            handle.clone(),
            gateway.config.socket_max_lag,
        );
        let writer = tokio::spawn(writer.in_current_span());
        handle.send(
            frame::encode_connection_established(
                &socket_id,
                gateway.config.activity_timeout.as_secs(),
            )
            .into(),
        );
        let rate = RateLimit::new(app.limits.client_events_per_second, DefaultClock::default());
        let track = Track::new(&app, handshake.origin);
        let mut session = Session {
            gateway,
            app,
            handle,
            subscriptions: HashMap::new(),
            user: None,
            rate,
            track,
        };
        session.read_loop(stream).await;
        let channels: Vec<String> = session.subscriptions.drain().map(|(c, _)| c).collect();
        session
            .gateway
            .registry
            .disconnect(&session.app.id, &session.handle.socket_id, &channels);
        for channel in &channels {
            session.subscription_count_webhook(channel);
        }
        session.handle.close_signal().close(code::NORMAL);
        let closed_with = session.handle.close_signal().closed().await;
        session
            .gateway
            .registry
            .debug(&session.app.id, || Record::ConnectionClosed {
                socket_id: socket_id.clone(),
                code: closed_with,
            });
        let _ = writer.await;
        metrics::gauge!("switchboard_connections").decrement(1.0);
        debug!("socket closed");
    }
    .instrument(span)
    .await;
}

/// The shards a subscription to `channel` needs bound: its own; every one for the debug
/// console's channel (the console is shown every event of the cluster); none for a cache
/// channel (its events reach every node).
fn shards_for(app_id: &str, channel: &str) -> Vec<u16> {
    if channel == DEBUG_CHANNEL {
        return (0..bus::SHARDS).collect();
    }
    match bus::route_of(app_id, channel) {
        bus::EVERY_NODE => Vec::new(),
        shard => vec![shard],
    }
}

/// Why a subscription was refused: a `pusher:error` (bad request) or a channel-scoped
/// `pusher:subscription_error` (authorization or limits).
enum Refusal {
    Invalid(String),
    Subscription {
        kind: &'static str,
        error: String,
        status: u16,
    },
}

struct Session {
    gateway: Arc<Gateway>,
    app: Arc<App>,
    handle: SocketHandle,
    /// Subscribed channels, with this socket's presence user id where there is one.
    subscriptions: HashMap<String, Option<String>>,
    user: Option<SignedInUser>,
    /// The client-event limit.
    rate: RateLimit,
    track: Track,
}

impl Session {
    fn send(&self, frame: String) {
        self.handle.send(frame.into());
    }

    fn error(&self, message: &str, code: Option<u16>) {
        self.send(frame::encode_error(message, code));
    }

    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) {
        let config = self.gateway.config.clone();
        let shutdown = self.gateway.shutdown.clone();
        let mut last_seen = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        loop {
            let deadline = match ping_sent {
                Some(sent) => sent + config.pong_timeout,
                None => last_seen + config.activity_timeout,
            };
            tokio::select! {
                _ = self.handle.close_signal().closed() => break,
                _ = shutdown.cancelled() => {
                    self.handle.close_signal().close(code::SHUTTING_DOWN);
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if ping_sent.is_some() {
                        self.handle.close_signal().close(code::PONG_TIMEOUT);
                        break;
                    }
                    self.send(frame::encode_ping());
                    ping_sent = Some(Instant::now());
                }
                message = stream.next() => {
                    let Some(Ok(message)) = message else { break };
                    last_seen = Instant::now();
                    ping_sent = None;
                    if message.is_close() {
                        break;
                    }
                    if let Ok(text) = message.to_str() {
                        self.on_text(text).await;
                    }
                }
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        match ClientMessage::parse(text) {
            Ok(ClientMessage::Ping) => self.send(frame::encode_pong()),
            Ok(ClientMessage::Pong | ClientMessage::Other { .. }) => {}
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            }) => {
                self.subscribe(channel, auth.as_deref(), channel_data.as_deref())
                    .await
            }
            Ok(ClientMessage::Unsubscribe { channel }) => {
                if self.subscriptions.remove(&channel).is_some() {
                    self.gateway.registry.unsubscribe(
                        &self.app.id,
                        &channel,
                        &self.handle.socket_id,
                    );
                    self.subscription_count_webhook(&channel);
                }
            }
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(event, channel, data),
            Ok(ClientMessage::Signin { auth, user_data }) => self.sign_in(&auth, &user_data),
            Ok(ClientMessage::Track { body }) => {
                self.track
                    .take(&self.gateway, &self.app, &self.handle, body)
            }
            Err(error) => self.error(&error.to_string(), None),
        }
    }

    async fn subscribe(&mut self, name: String, auth: Option<&str>, channel_data: Option<&str>) {
        if self.subscriptions.contains_key(&name) {
            return;
        }
        let authorized = Channel::parse(&name)
            .map_err(|error| Refusal::Invalid(format!("Invalid channel name {name:?}: {error}")))
            .and_then(|channel| self.authorize(&channel, auth, channel_data));
        let bound = match authorized {
            // The live queue is bound to the channel's shard before the subscription succeeds,
            // so no event published after `subscription_succeeded` can miss this node.
            Ok(member) => (self.gateway.registry.interest())
                .ensure_each(shards_for(&self.app.id, &name))
                .await
                .map(|()| member)
                .map_err(|error| Refusal::Subscription {
                    kind: "Unavailable",
                    error: error.to_string(),
                    status: 503,
                }),
            Err(refusal) => Err(refusal),
        };
        let result = bound.and_then(|member| {
            let user_id = member.as_ref().map(|m| m.user_id.clone());
            self.gateway
                .registry
                .subscribe(&self.app.id, &name, &self.handle, member)
                .map(|_| user_id)
                .map_err(|error| match error {
                    SubscribeError::PresenceFull { max } => Refusal::Subscription {
                        kind: "LimitReached",
                        error: format!("Presence channel is full ({max} members)"),
                        status: 403,
                    },
                    SubscribeError::TooManyChannels { max } => Refusal::Subscription {
                        kind: "LimitReached",
                        error: format!("Too many channels on this connection: at most {max}"),
                        status: code::TOO_MANY_CHANNELS,
                    },
                })
        });
        match result {
            Ok(user_id) => {
                self.cache_miss_webhook(&name);
                self.subscription_count_webhook(&name);
                self.subscriptions.insert(name, user_id);
            }
            Err(Refusal::Invalid(message)) => self.error(&message, None),
            Err(Refusal::Subscription {
                kind,
                error,
                status,
            }) => self.send(frame::encode_subscription_error(
                &name, kind, &error, status,
            )),
        }
    }

    /// Emits `cache_miss` when a webhook wants it and the cache channel just subscribed to has
    /// no cached event. The registry answered the socket under its own lock a moment earlier, so
    /// an event cached (or expired) in between can make the two disagree for that subscription.
    fn cache_miss_webhook(&self, name: &str) {
        let webhooks = &self.gateway.webhooks;
        if !webhooks.wants(&self.app.id, EventType::CacheMiss, name)
            || !Channel::parse(name).is_ok_and(|c| c.cache)
            || self.gateway.registry.cached(&self.app.id, name).is_some()
        {
            return;
        }
        webhooks.emit(
            &self.app.id,
            WebhookEvent::CacheMiss {
                channel: name.to_owned(),
            },
        );
    }

    /// Emits `subscription_count` after this socket changed `channel`'s subscriptions, when the
    /// app counts subscriptions (`subscription_count = true`, Pusher's "subscription counting")
    /// and a webhook wants it. Presence channels count members instead and have none. The count
    /// is the cluster's as this node sees it.
    fn subscription_count_webhook(&self, channel: &str) {
        let webhooks = &self.gateway.webhooks;
        if !self.app.subscription_count
            || !webhooks.wants(&self.app.id, EventType::SubscriptionCount, channel)
            || Channel::parse(channel).is_ok_and(|c| c.kind == ChannelKind::Presence)
        {
            return;
        }
        let count = self
            .gateway
            .registry
            .occupancy(&self.app.id, channel)
            .subscriptions;
        webhooks.emit(
            &self.app.id,
            WebhookEvent::SubscriptionCount {
                channel: channel.to_owned(),
                subscription_count: count as u64,
            },
        );
    }

    /// Checks the subscription's signature; returns the presence member for presence channels.
    fn authorize(
        &self,
        channel: &Channel<'_>,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<Option<Member>, Refusal> {
        let signed_in = self.user.as_ref().map(|user| user.id.as_str());
        crate::channel_auth::authorize(
            &self.app,
            channel,
            &self.handle.socket_id,
            auth,
            channel_data,
            signed_in,
        )
        .map_err(|error| Refusal::Subscription {
            kind: "AuthError",
            error: error.to_string(),
            status: 401,
        })
    }

    fn sign_in(&mut self, auth: &str, user_data: &str) {
        let signed = signin_string_to_sign(&self.handle.socket_id, user_data);
        if !verify_client_auth(&self.app.key, &self.app.secret, &signed, auth) {
            self.error("Invalid signin signature", Some(code::UNAUTHORIZED));
            self.handle.close_signal().close(code::UNAUTHORIZED);
            return;
        }
        match SignedInUser::from_user_data(user_data) {
            Ok(user) => {
                self.send(frame::encode_signin_success(user_data));
                self.gateway
                    .registry
                    .sign_in(&self.app.id, &self.handle, &user);
                self.user = Some(user);
            }
            Err(error @ SigninError::WatchlistTooLong(_)) => {
                self.error(&error.to_string(), Some(code::WATCHLIST_LIMIT));
            }
            Err(error @ SigninError::Malformed) => {
                self.error(&error.to_string(), Some(code::UNAUTHORIZED));
                self.handle.close_signal().close(code::UNAUTHORIZED);
            }
        }
    }
}
