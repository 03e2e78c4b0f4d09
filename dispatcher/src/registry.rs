//! The channel registry: app → channel → local subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use protocol::{Envelope, Source};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::CLOSE_SLOW_CONSUMER;

/// One encoded server → client text frame, shared by every socket it goes to.
pub type Frame = Arc<str>;

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

    pub fn close_signal(&self) -> &CloseSignal {
        &self.close
    }
}

type Channels = HashMap<String, HashMap<Arc<str>, SocketHandle>>;

/// Local subscriptions of this node, per app and channel.
#[derive(Debug, Default)]
pub struct Registry {
    apps: RwLock<HashMap<String, Channels>>,
}

impl Registry {
    /// Adds a subscription; returns false if the socket was already subscribed (a no-op).
    pub fn subscribe(&self, app_id: &str, channel: &str, socket: &SocketHandle) -> bool {
        let mut apps = self.apps.write();
        let subscribers = apps
            .entry(app_id.to_owned())
            .or_default()
            .entry(channel.to_owned())
            .or_default();
        let added = subscribers
            .insert(socket.socket_id.clone(), socket.clone())
            .is_none();
        if added {
            metrics::gauge!("switchboard_subscriptions").increment(1.0);
        }
        added
    }

    /// Removes a subscription; returns whether there was one.
    pub fn unsubscribe(&self, app_id: &str, channel: &str, socket_id: &str) -> bool {
        let mut apps = self.apps.write();
        let Some(channels) = apps.get_mut(app_id) else {
            return false;
        };
        let Some(subscribers) = channels.get_mut(channel) else {
            return false;
        };
        let removed = subscribers.remove(socket_id).is_some();
        if subscribers.is_empty() {
            channels.remove(channel);
            if channels.is_empty() {
                apps.remove(app_id);
            }
        }
        if removed {
            metrics::gauge!("switchboard_subscriptions").decrement(1.0);
        }
        removed
    }

    /// Number of local subscribers of a channel.
    pub fn subscriber_count(&self, app_id: &str, channel: &str) -> usize {
        self.apps
            .read()
            .get(app_id)
            .and_then(|channels| channels.get(channel))
            .map_or(0, HashMap::len)
    }

    /// Encodes the event's frame once and offers it to every local subscriber of its channel,
    /// except the excluded socket. Returns how many sockets it was queued for.
    pub fn fan_out(&self, envelope: &Envelope) -> usize {
        let apps = self.apps.read();
        let Some(subscribers) = apps
            .get(&envelope.app_id)
            .and_then(|channels| channels.get(&envelope.channel))
        else {
            return 0;
        };
        // Client events on presence channels carry the sender's user id.
        let user_id = match envelope.source {
            Source::Client => envelope.user_id.as_deref(),
            Source::Api | Source::Track => None,
        };
        let frame: Frame = protocol::frame::encode(
            &envelope.name,
            Some(&envelope.channel),
            &envelope.data,
            user_id,
        )
        .into();
        let excluded = envelope.socket_id.as_deref();
        let mut delivered = 0;
        for (socket_id, socket) in subscribers {
            if Some(socket_id.as_ref()) != excluded && socket.send(frame.clone()) {
                delivered += 1;
            }
        }
        metrics::counter!("switchboard_deliveries_total").increment(delivered as u64);
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(channel: &str, data: &str) -> Envelope {
        Envelope::new("app", Source::Api, channel, "ev", data.to_owned())
    }

    #[test]
    fn delivers_to_subscribers_except_excluded() {
        let registry = Registry::default();
        let (a, mut rx_a) = SocketHandle::new("1.1", 8);
        let (b, mut rx_b) = SocketHandle::new("1.2", 8);
        assert!(registry.subscribe("app", "news", &a));
        assert!(
            !registry.subscribe("app", "news", &a),
            "re-subscribe is a no-op"
        );
        assert!(registry.subscribe("app", "news", &b));
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
        let registry = Registry::default();
        let (a, mut rx) = SocketHandle::new("1.1", 8);
        registry.subscribe("other-app", "news", &a);
        registry.subscribe("app", "sports", &a);
        assert_eq!(registry.fan_out(&envelope("news", "x")), 0);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn unsubscribe_stops_delivery_and_cleans_up() {
        let registry = Registry::default();
        let (a, mut rx) = SocketHandle::new("1.1", 8);
        registry.subscribe("app", "news", &a);
        assert_eq!(registry.subscriber_count("app", "news"), 1);
        assert!(registry.unsubscribe("app", "news", "1.1"));
        assert!(!registry.unsubscribe("app", "news", "1.1"));
        assert_eq!(registry.subscriber_count("app", "news"), 0);
        assert_eq!(registry.fan_out(&envelope("news", "x")), 0);
        assert!(rx.try_recv().is_err());
        assert!(registry.apps.read().is_empty());
    }

    #[test]
    fn full_queue_closes_only_the_slow_socket() {
        let registry = Registry::default();
        let (slow, _slow_rx) = SocketHandle::new("1.1", 2);
        let (fast, mut fast_rx) = SocketHandle::new("1.2", 16);
        registry.subscribe("app", "news", &slow);
        registry.subscribe("app", "news", &fast);
        for i in 0..3 {
            registry.fan_out(&envelope("news", &i.to_string()));
            assert!(fast_rx.try_recv().is_ok());
        }
        assert!(slow.close_signal().is_closed());
        assert!(!fast.close_signal().is_closed());
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
        let registry = Registry::default();
        let (a, mut rx) = SocketHandle::new("1.1", 64);
        registry.subscribe("app", "news", &a);
        for i in 0..20 {
            registry.fan_out(&envelope("news", &i.to_string()));
        }
        for i in 0..20 {
            let frame = rx.try_recv().unwrap();
            assert!(frame.contains(&format!("\"data\":\"{i}\"")), "{frame}");
        }
    }
}
