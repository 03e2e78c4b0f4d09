//! What the registry holds of a connection: the sending half of its bounded outbound queue and
//! the signal that closes it. Each queued frame carries the time it was queued, so the writer
//! can close a socket whose oldest unwritten frame is too old (4100) as well as one whose queue
//! is full.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
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

/// A frame in a connection's queue and when it was queued.
#[derive(Debug)]
pub struct Queued {
    pub frame: Frame,
    pub at: Instant,
}

/// The receiving half of a connection's outbound queue: what its writer takes, oldest first.
#[derive(Debug)]
pub struct Outbound(mpsc::Receiver<Queued>);

impl Outbound {
    /// The next frame; `None` once every handle is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Queued> {
        self.0.recv().await
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Queued> {
        self.0.try_recv().ok()
    }
}

/// A connection's id and the sending half of its bounded queue.
#[derive(Debug, Clone)]
pub struct SocketHandle {
    pub socket_id: Arc<str>,
    tx: mpsc::Sender<Queued>,
    close: Arc<CloseSignal>,
    /// Whether the connection opted in to Switchboard's extensions (`/switchboard/app/{key}`):
    /// its channel events carry their id.
    event_ids: bool,
}

impl SocketHandle {
    /// A handle and the receiving half of its outbound queue of `capacity` frames.
    pub fn new(socket_id: &str, capacity: usize) -> (SocketHandle, Outbound) {
        let (tx, rx) = mpsc::channel(capacity);
        let handle = SocketHandle {
            socket_id: socket_id.into(),
            tx,
            close: Arc::default(),
            event_ids: false,
        };
        (handle, Outbound(rx))
    }

    /// The same handle for a connection that opted in to event ids (set before it is shared).
    pub fn with_event_ids(self) -> SocketHandle {
        SocketHandle {
            event_ids: true,
            ..self
        }
    }

    /// Whether this connection's channel events carry their id.
    pub fn event_ids(&self) -> bool {
        self.event_ids
    }

    /// Queues a frame without waiting. A full queue closes the socket with 4100; returns whether
    /// the frame was queued.
    pub fn send(&self, frame: Frame) -> bool {
        self.send_at(frame, Instant::now())
    }

    /// [`SocketHandle::send`] with the time to stamp it with: a fan-out reads the clock once
    /// per event, not once per socket.
    pub fn send_at(&self, frame: Frame, at: Instant) -> bool {
        match self.tx.try_send(Queued { frame, at }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.close_slow("outbound queue full");
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Closes the connection as a slow consumer (4100), counted once per connection.
    pub fn close_slow(&self, why: &'static str) {
        if !self.close.is_closed() {
            metrics::counter!("switchboard_slow_consumers_closed_total").increment(1);
            tracing::warn!(socket_id = %self.socket_id, why, "closing slow consumer");
        }
        self.close.close(CLOSE_SLOW_CONSUMER);
    }

    pub(crate) fn send_text(&self, frame: String) {
        self.send(frame.into());
    }

    pub fn close_signal(&self) -> &CloseSignal {
        &self.close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_signal_keeps_first_code() {
        let signal = CloseSignal::default();
        signal.close(CLOSE_SLOW_CONSUMER);
        signal.close(4200);
        assert_eq!(signal.closed().await, CLOSE_SLOW_CONSUMER);
    }

    #[test]
    fn a_full_queue_closes_the_socket_with_4100() {
        let (handle, _rx) = SocketHandle::new("1.1", 1);
        assert!(handle.send("a".into()));
        assert!(!handle.send("b".into()));
        assert!(handle.close_signal().is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn queued_frames_carry_the_time_they_were_queued() {
        let (handle, mut rx) = SocketHandle::new("1.1", 4);
        let before = Instant::now();
        handle.send("a".into());
        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        handle.send("b".into());
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert_eq!((&*a.frame, a.at), ("a", before));
        assert_eq!(b.at - a.at, std::time::Duration::from_secs(3));
        assert!(handle.send_at("c".into(), before));
        assert_eq!(rx.try_recv().unwrap().at, before);
        assert!(rx.try_recv().is_none());
    }
}
