//! The fan-out: an event's frame encoded once and offered to every local subscriber of its
//! channel without waiting (a full queue closes that socket with 4100), the last event of cache
//! channels remembered, and what happened told to the app's debug console. Connections that
//! opted in to event ids get a second encoding with the id, made only when the channel has one.

use protocol::{frame, Channel, Envelope, Source};
use tokio::time::Instant;

use super::local::ChannelState;
use super::state::State;
use super::{CachedEvent, Registry};
use crate::debug::{Audience, Record};
use crate::{Frame, SocketHandle};

impl Registry {
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
                .local
                .apps
                .entry(envelope.app_id.clone())
                .or_default()
                .channels
                .entry(envelope.channel.clone())
                .or_default();
            let cached = CachedEvent {
                id: envelope.id,
                event: envelope.name.clone(),
                data: envelope.data.clone(),
                ttl: self.config.cache_ttl,
            };
            channel.cached = Some((cached, Instant::now() + self.config.cache_ttl));
            let delivery = deliver(channel, envelope);
            debug_delivery(&state, envelope, delivery)
        } else {
            let state = self.state.read();
            let delivery = state
                .local
                .channel(&envelope.app_id, &envelope.channel)
                .map_or_else(Delivery::default, |channel| deliver(channel, envelope));
            debug_delivery(&state, envelope, delivery)
        }
    }
}

/// What one fan-out did: for how many sockets the frame was queued, and which it closed as
/// slow consumers.
#[derive(Default)]
struct Delivery {
    delivered: usize,
    slow: Vec<String>,
}

/// Tells the app's consoles about a fan-out; returns for how many sockets it was queued.
///
/// A console sees every event on its own node, so the event itself is recorded for the
/// consoles here only; consoles elsewhere learn how many sockets of this node got it.
fn debug_delivery(state: &State, envelope: &Envelope, delivery: Delivery) -> usize {
    let watchers = state.watchers(&envelope.app_id);
    let here = Audience {
        here: watchers.here,
        elsewhere: false,
    };
    state.debug_for(&envelope.app_id, here, || {
        Record::event(envelope, delivery.delivered)
    });
    if delivery.delivered > 0 {
        let elsewhere = Audience {
            here: false,
            elsewhere: watchers.elsewhere,
        };
        state.debug_for(&envelope.app_id, elsewhere, || Record::Delivered {
            id: envelope.id,
            delivered: delivery.delivered,
        });
    }
    for socket_id in delivery.slow {
        state.debug(&envelope.app_id, || Record::SlowConsumerClosed {
            socket_id,
            channel: envelope.channel.clone(),
        });
    }
    delivery.delivered
}

/// The event's frames, each encoded at most once, when the first subscriber that needs it
/// comes: the stock one, and the one with the event's id for connections that opted in.
struct Frames<'e> {
    envelope: &'e Envelope,
    stock: Option<Frame>,
    with_id: Option<Frame>,
}

impl<'e> Frames<'e> {
    fn new(envelope: &'e Envelope) -> Self {
        Frames {
            envelope,
            stock: None,
            with_id: None,
        }
    }

    fn for_socket(&mut self, handle: &SocketHandle) -> Frame {
        let envelope = self.envelope;
        // Client events on presence channels carry the sender's user id.
        let user_id = match envelope.source {
            Source::Client => envelope.user_id.as_deref(),
            Source::Api | Source::Track => None,
        };
        let (name, channel, data) = (&envelope.name, &envelope.channel, &envelope.data);
        let frame = if handle.event_ids() {
            self.with_id.get_or_insert_with(|| {
                frame::encode_with_id(name, channel, data, user_id, envelope.id).into()
            })
        } else {
            self.stock
                .get_or_insert_with(|| frame::encode(name, Some(channel), data, user_id).into())
        };
        frame.clone()
    }
}

/// Queues the event's frame for the channel's subscribers, except the excluded socket.
fn deliver(channel: &ChannelState, envelope: &Envelope) -> Delivery {
    let mut delivery = Delivery::default();
    let mut frames = Frames::new(envelope);
    let excluded = envelope.socket_id.as_deref();
    let now = Instant::now();
    for (socket_id, subscriber) in &channel.subscribers {
        if Some(socket_id.as_ref()) == excluded {
            continue;
        }
        let open = !subscriber.handle.close_signal().is_closed();
        if subscriber
            .handle
            .send_at(frames.for_socket(&subscriber.handle), now)
        {
            delivery.delivered += 1;
        } else if open && subscriber.handle.close_signal().is_closed() {
            delivery.slow.push(socket_id.to_string());
        }
    }
    metrics::counter!("switchboard_deliveries_total").increment(delivery.delivered as u64);
    delivery
}
