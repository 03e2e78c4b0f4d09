//! Pusher v7 WebSocket sessions (PROTOCOL.md §1).
//!
//! A session is two tasks: the reader (this module's [`run`]) parses client frames, keeps the
//! activity timer and applies them to the registry; the writer drains the socket's bounded
//! outbound queue into the socket and sends the close frame when the [`CloseSignal`] fires.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dispatcher::{Frame, SocketHandle};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::frame::{self, ClientMessage};
use protocol::signature::{channel_string_to_sign, verify_client_auth};
use protocol::{Channel, ChannelKind, SocketId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, Instrument};
use warp::ws::{Message, WebSocket};

use crate::apps::App;
use crate::Gateway;

/// Pusher close and error codes used by the WebSocket endpoint.
pub mod code {
    pub const APP_NOT_FOUND: u16 = 4001;
    pub const APP_DISABLED: u16 = 4003;
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub const NO_PROTOCOL: u16 = 4008;
    pub const SHUTTING_DOWN: u16 = 4200;
    pub const PONG_TIMEOUT: u16 = 4201;
    pub const NORMAL: u16 = 1000;
}

/// Protocol versions served: pusher-js speaks 7; 5 and 6 differ only in ways we don't rely on.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// How long one frame may take to write before the socket counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the upgrade request said: the app key from the path and the `protocol` query parameter.
pub struct Handshake {
    pub key: String,
    pub protocol: Option<String>,
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
        Ok(version) if PROTOCOLS.contains(&version) => Ok(app.clone()),
        _ => Err((code::UNSUPPORTED_PROTOCOL, "Unsupported protocol version")),
    }
}

/// Runs one WebSocket connection to its end.
pub async fn run(gateway: Arc<Gateway>, handshake: Handshake, socket: WebSocket) {
    let (mut sink, stream) = socket.split();
    let app = match check_handshake(&gateway, &handshake) {
        Ok(app) => app,
        Err((code, message)) => {
            let _ = sink
                .send(Message::text(frame::encode_error(message, Some(code))))
                .await;
            let _ = sink.send(Message::close_with(code, message)).await;
            return;
        }
    };
    let socket_id = SocketId {
        node: gateway.node,
        seq: gateway.next_socket.fetch_add(1, Ordering::Relaxed),
    }
    .to_string();
    let span = tracing::info_span!("socket", socket_id, app_id = app.id);
    async move {
        metrics::gauge!("switchboard_connections").increment(1.0);
        let (handle, outbound) = SocketHandle::new(&socket_id, gateway.config.socket_queue_len);
        let writer = tokio::spawn(write_loop(sink, outbound, handle.clone()).in_current_span());
        handle.send(
            frame::encode_connection_established(
                &socket_id,
                gateway.config.activity_timeout.as_secs(),
            )
            .into(),
        );
        let mut session = Session {
            gateway,
            app,
            handle,
            subscriptions: HashSet::new(),
        };
        session.read_loop(stream).await;
        session.leave_all();
        session.handle.close_signal().close(code::NORMAL);
        let _ = writer.await;
        metrics::gauge!("switchboard_connections").decrement(1.0);
        debug!("socket closed");
    }
    .instrument(span)
    .await;
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbound: mpsc::Receiver<Frame>,
    handle: SocketHandle,
) {
    loop {
        tokio::select! {
            biased;
            code = handle.close_signal().closed() => {
                let reason = close_reason(code);
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::close_with(code, reason))).await;
                break;
            }
            frame = outbound.recv() => {
                let Some(frame) = frame else { break };
                let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::text(frame.as_ref()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    handle.close_signal().close(code::NORMAL);
                    break;
                }
            }
        }
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        dispatcher::CLOSE_SLOW_CONSUMER => "Slow consumer: too many undelivered messages",
        code::SHUTTING_DOWN => "Server shutting down",
        code::PONG_TIMEOUT => "Pong reply not received",
        _ => "",
    }
}

struct Session {
    gateway: Arc<Gateway>,
    app: Arc<App>,
    handle: SocketHandle,
    subscriptions: HashSet<String>,
}

impl Session {
    fn send(&self, frame: String) {
        self.handle.send(frame.into());
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
                        self.on_text(text);
                    }
                }
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        match ClientMessage::parse(text) {
            Ok(ClientMessage::Ping) => self.send(frame::encode_pong()),
            Ok(ClientMessage::Pong | ClientMessage::Other { .. }) => {}
            Ok(ClientMessage::Subscribe { channel, auth, .. }) => {
                self.subscribe(channel, auth.as_deref())
            }
            Ok(ClientMessage::Unsubscribe { channel }) => {
                if self.subscriptions.remove(&channel) {
                    self.gateway.registry.unsubscribe(
                        &self.app.id,
                        &channel,
                        &self.handle.socket_id,
                    );
                }
            }
            Ok(ClientMessage::ClientEvent { .. }) => self.send(frame::encode_error(
                "Client events are not enabled for this app",
                None,
            )),
            Ok(ClientMessage::Signin { .. }) => {
                self.send(frame::encode_error("User sign-in is not enabled", None))
            }
            Err(error) => self.send(frame::encode_error(&error.to_string(), None)),
        }
    }

    fn subscribe(&mut self, name: String, auth: Option<&str>) {
        let channel = match Channel::parse(&name) {
            Ok(channel) => channel,
            Err(error) => {
                self.send(frame::encode_error(
                    &format!("Invalid channel name {name:?}: {error}"),
                    None,
                ));
                return;
            }
        };
        if let Err(message) = self.authorize(&channel, auth) {
            self.send(frame::encode_subscription_error(
                &name,
                "AuthError",
                message,
                401,
            ));
            return;
        }
        if self.subscriptions.contains(&name) {
            return;
        }
        // Queue the confirmation before registering, so no event of the channel overtakes it.
        self.send(frame::encode_subscription_succeeded(&name, "{}"));
        self.gateway
            .registry
            .subscribe(&self.app.id, &name, &self.handle);
        self.subscriptions.insert(name);
    }

    fn authorize(&self, channel: &Channel<'_>, auth: Option<&str>) -> Result<(), &'static str> {
        match channel.kind {
            ChannelKind::Public => Ok(()),
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                let signed = channel_string_to_sign(&self.handle.socket_id, channel.name, None);
                let auth = auth.ok_or("Missing auth for a private channel")?;
                if verify_client_auth(&self.app.key, &self.app.secret, &signed, auth) {
                    Ok(())
                } else {
                    Err("Invalid signature for this socket and channel")
                }
            }
            ChannelKind::Presence | ChannelKind::ServerToUser => {
                Err("Presence and server-to-user channels are not enabled")
            }
        }
    }

    fn leave_all(&mut self) {
        for channel in self.subscriptions.drain() {
            self.gateway
                .registry
                .unsubscribe(&self.app.id, &channel, &self.handle.socket_id);
        }
    }
}
